"""Chinese text as Chinese, and your own data: one normalisation on every entry point, valid UTF-8 output,
partial inputs with their messages, reject details, near dedup of short edits, list parameters."""
from __future__ import annotations


import pytest
import torch

from conftest import tiny_gpt, tiny_tokenizer
from fixtures_clean import GOOD, config, jline, read_jsonl, rejects, text_line, write_lines
from minigpt.data import normalize as textnorm
from minigpt.data.clean import data_plan, run_cleaning

pytestmark = pytest.mark.usefixtures("one_thread")

CHAT = {"conversations": [{"role": "user", "content": "你好?"}, {"role": "assistant", "content": "你好,我是助手."}]}


# --------------------------------------------------------------------------- normalize itself


@pytest.mark.parametrize("raw, want", [
    ("ＡＢＣ１２３，测试！", "ABC123，测试！"),  # full-width letters/digits half-width, Chinese punctuation kept
    ("“你好”，《人民日报》（一）：好；是吗？～", "“你好”，《人民日报》（一）：好；是吗？～"),
    ("12月31日,中共中央总书记", "12月31日，中共中央总书记"),  # ASCII between Chinese characters
    ("先生们:", "先生们："), ("你好?", "你好？"), ("你好, 世界.", "你好，世界。"), ("他说:“走”,然后", "他说：“走”，然后"),
    ("版本3.5,价格(元)", "版本3.5,价格(元)"), ("Hello, world!", "Hello, world!"), ("中国(China)", "中国(China)"),
    ("好的……", "好的……"), ("①号ﬁle ㎏ ﾊﾝｶｸ", "1号file kg ハンカク"), ("cafe\u0301", "café"),
    ("测试\u200b文本\x07内容\ufeff\ufdd0", "测试文本内容"), ("　　开头", "  开头"),
])
def test_normalize_v2(raw, want):
    assert textnorm.normalize(raw) == want
    assert textnorm.normalize(want) == want  # idempotent
    assert textnorm.normalize([raw, want]) == [want, want]


def test_normalize_v1_is_the_old_nfkc():
    assert textnorm.normalize("12月31日，中共“好”……", version=1) == "12月31日,中共“好”......"
    with pytest.raises(ValueError, match="version 9 is unknown"):
        textnorm.normalize("x", version=9)
    with pytest.raises(TypeError, match="unknown step 'nfc'"):
        textnorm.normalize("x", nfc=False)


# --------------------------------------------------------------------------- every entry point calls it


@pytest.fixture
def counted(monkeypatch):
    calls: list[str] = []
    real = textnorm.normalize

    def counting(text, **kw):
        calls.append(text if isinstance(text, str) else f"<{len(text)} texts>")
        return real(text, **kw)

    monkeypatch.setattr(textnorm, "normalize", counting)
    return calls


@pytest.fixture(scope="module")
def gen():
    from minigpt.infer.generate import TextGenerator

    tok = tiny_tokenizer()
    return TextGenerator(tiny_gpt(tok.vocab_size, max_seq_len=64), tok)


def test_every_entry_point_normalises(counted, gen, tmp_path):
    from minigpt.data.chat_source import load_chat_source
    from minigpt.data.tokenizer import TokenizerConfig, build_tokenizer
    from minigpt.infer import chat as terminal
    from minigpt.infer.generate import ChatSession, GenerationConfig
    from minigpt.ui.widgets import GenerationPanel

    cfg = GenerationConfig(max_new_tokens=2, do_sample=False)
    f = write_lines(tmp_path / "in.jsonl", [text_line(g) for g in GOOD] + [jline(CHAT)])
    entry_points = {
        "cleaning": lambda: run_cleaning(config(f), tmp_path / "data"),
        "tokenizer training": lambda: build_tokenizer(tmp_path / "data", tmp_path / "tok",
                                                      TokenizerConfig(tokenizer_vocab_size=300, retrain_tokenizer=True)),
        "chat_source": lambda: load_chat_source(str(f), tmp_path),
        "generate": lambda: gen.generate("你好?", cfg),
        "batch_generate": lambda: gen.batch_generate(["你好?", "长江,"], cfg),
        "chat": lambda: gen.chat([{"role": "user", "content": "你好?"}], cfg),
        "ChatSession": lambda: ChatSession(gen, cfg).send("你好?"),
        "terminal chat": lambda: terminal.run(gen, cfg, read=_lines("你好?", "exit"), write=lambda s: None),
        "widget": lambda: _widget(GenerationPanel(gen, cfg, prompt="你好?")),
    }
    for name, call in entry_points.items():
        counted.clear()
        call()
        assert counted, f"{name} did not call minigpt.data.normalize.normalize"
    # the generator normalises what it encodes: a full-width comma typed as ASCII reaches the model as "，"
    assert gen.encode_prompt("你好,世界") == gen.tokenizer.encode("你好，世界")


def _lines(*typed: str):
    it = iter(typed)
    return lambda prompt: next(it)


def _widget(panel) -> None:
    panel.on_generate()
    panel.mode.value = "chat"
    panel.prompt.value = "你好?"
    panel.on_generate()
    assert panel.session.history[0]["content"] == "你好？"


# --------------------------------------------------------------------------- valid UTF-8 only


def test_invalid_bytes_are_never_sampled(gen):
    from minigpt.infer.config import GenerationConfig
    from minigpt.infer.sampling import Sampler, utf8_table

    tok = gen.tokenizer
    byte_id = {tok.token_bytes(i): i for i in range(tok.vocab_size) if len(tok.token_bytes(i)) == 1}
    table = utf8_table(tok, tok.vocab_size + 5)  # ids past the tokenizer (a model's padded vocab) too
    never = [byte_id[bytes([b])] for b in (0xC0, 0xC1, *range(0xF5, 0x100))] + list(range(tok.vocab_size, tok.vocab_size + 5))
    sampler = Sampler(GenerationConfig(do_sample=False), [[5]], tok.vocab_size + 5, utf8=table)
    logits = torch.zeros(1, tok.vocab_size + 5)
    logits[0, never] = 100.0
    first = sampler(logits)[0]
    assert first not in never and first not in [byte_id[bytes([b])] for b in range(0x80, 0xC0)]  # no lone continuation
    # after a lead byte the row must continue the character: no ASCII, no special token, no new lead byte
    logits = torch.zeros(1, tok.vocab_size + 5)
    logits[0, byte_id[b"\xe4"]] = 100.0
    sampler = Sampler(GenerationConfig(do_sample=False), [[5]], tok.vocab_size + 5, utf8=table)
    assert sampler(logits) == [byte_id[b"\xe4"]]
    sampler.history.push([byte_id[b"\xe4"]])
    logits[0, [byte_id[b"A"], 2, byte_id[b"\xe4"]]] = 200.0
    nxt = sampler(logits)[0]
    assert 0x80 <= tok.token_bytes(nxt)[0] <= 0xBF


def test_generated_text_has_no_replacement_character():
    from minigpt.infer.generate import GenerationConfig, TextGenerator

    tok = tiny_tokenizer()
    model = tiny_gpt(tok.vocab_size, max_seq_len=256)
    with torch.no_grad():  # a random model that likes raw bytes, the invalid ones included
        model.embed_tokens.weight[4:260] += 0.5
    cfg = GenerationConfig(max_new_tokens=120, temperature=1.5, top_k=0, top_p=1.0, seed=3)
    prompts = ["你好", "长江", "Hello", "今天"]
    masked = TextGenerator(model, tok).batch_generate(prompts, cfg)
    raw = TextGenerator(model, tok, valid_utf8=False).batch_generate(prompts, cfg)
    assert any("\ufffd" in t for t in raw)  # without the mask this model writes broken bytes
    assert all("\ufffd" not in t for t in masked) and sum(map(len, masked)) > 200
    streamed = "".join(TextGenerator(model, tok).stream("你好", cfg))
    assert "\ufffd" not in streamed


# --------------------------------------------------------------------------- partial inputs


def test_pretraining_only_says_04_is_skipped(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [text_line(g) for g in GOOD])
    stats = run_cleaning(config(f), tmp_path / "out")
    plan = data_plan(stats)
    assert "No dialogues" in plan and "04 will be skipped" in plan and "chat_source" in plan
    assert stats["kept"]["val"] >= 1 and "Pretraining:" in plan


def test_chat_only_says_03_has_nothing(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [jline(CHAT), jline({"conversations": [
        {"role": "user", "content": "在吗"}, {"role": "assistant", "content": "在的，请讲"}]})])
    stats = run_cleaning(config(f), tmp_path / "out")
    plan = data_plan(stats)
    assert "No pretraining documents" in plan and "03 has nothing to pretrain on" in plan
    assert stats["kept"]["sft"] + stats["kept"]["sft_val"] == 2 and stats["kept"]["sft_val"] == 1


def test_two_documents_get_a_val_split_and_one_gets_a_message(tmp_path):
    f = write_lines(tmp_path / "two.jsonl", [text_line(GOOD[0]), text_line(GOOD[1])])
    stats = run_cleaning(config(f), tmp_path / "two")
    assert (stats["kept"]["train"], stats["kept"]["val"], stats["moved_to_val"]) == (1, 1, 1)
    assert len(read_jsonl(tmp_path / "two" / "val.jsonl")) == 1 and len(read_jsonl(tmp_path / "two" / "train.jsonl")) == 1
    g = write_lines(tmp_path / "one.jsonl", [text_line(GOOD[0])])
    plan = data_plan(run_cleaning(config(g), tmp_path / "one"))
    assert "Only 1 pretraining document: no val split" in plan and "two are enough" in plan
    no_val = run_cleaning(config(f, val_fraction=0.0), tmp_path / "noval")
    assert no_val["kept"]["val"] == 0 and "moved_to_val" not in no_val  # val_fraction=0 is respected


def test_no_chat_data_message_names_the_file_and_chat_source(tmp_path):
    from minigpt.data.chat_source import load_chat_source, no_chat_message

    (tmp_path / "sft.jsonl").write_text("", encoding="utf-8")
    train, val, report = load_chat_source("run", tmp_path)
    assert train == [] and val == []
    msg = no_chat_message(report)
    assert str(tmp_path / "sft.jsonl") in msg and "chat_source" in msg and "0 conversations used" in msg
    with pytest.raises(FileNotFoundError, match="01_data_clean first.*chat_source"):
        load_chat_source("run", tmp_path / "missing")


# --------------------------------------------------------------------------- every line accounted, with details


def test_chat_source_accounts_for_every_line(tmp_path):
    from minigpt.data.chat_source import load_chat_source

    lines = [jline(CHAT), b'{"conversations": [{"role": "user"}]}', b"not json", jline({"text": "一段文字"}),
             jline({"conversations": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}),
             jline(CHAT), b"", jline({"conversations": [{"role": "assistant", "content": "嗨"}]})]
    f = write_lines(tmp_path / "chat.jsonl", lines)
    train, val, report = load_chat_source(str(f), tmp_path)
    assert report.lines == 8 and report.kept == 1 and len(train) + len(val) == 1
    assert report.kept + sum(report.rejected.values()) == report.lines
    assert (train + val)[0] == [{"role": "user", "content": "你好？"}, {"role": "assistant", "content": "你好，我是助手。"}]
    got = {(r["line"], r["reason"]): r["detail"] for r in report.examples}
    assert got[(2, "bad_conversation")] == "turn 1: 'content' is missing; expected a string"
    assert got[(3, "invalid_json")].startswith("Expecting value at column 1")
    assert "pretraining document" in got[(4, "not_a_conversation")]
    assert "turn 2: role 'bot'" in got[(5, "bad_role")]
    assert len(report.examples) == 5 and report.rejected == {
        "bad_conversation": 1, "invalid_json": 1, "not_a_conversation": 1, "bad_role": 1, "exact_duplicate": 1,
        "blank_line": 1, "bad_role_order": 1}


def test_cleaning_reject_details(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [
        text_line(GOOD[0]), jline({"conversations": "hello"}), text_line(GOOD[1]), text_line(" " + GOOD[0].upper()),
        jline({"conversations": [{"role": "user", "content": "你好"}, {"role": "user", "content": "在吗"}]})])
    run_cleaning(config(f), tmp_path / "out")
    by_line = {r["line"]: r for r in rejects(tmp_path / "out")}
    assert by_line[2]["reason"] == "bad_conversation"
    assert by_line[2]["detail"] == "'conversations' is a string; expected a list of {'role', 'content'} objects"
    assert by_line[4]["reason"] == "exact_duplicate" and by_line[4]["detail"] == f"same text (after cleaning) as {f}:1"
    assert by_line[5]["reason"] == "bad_role_order" and by_line[5]["detail"].startswith("turn 2 is 'user' where 'assistant'")


# --------------------------------------------------------------------------- near dedup of short documents


SHORT = "这家店的菜味道很好，服务也热情周到，下次我们还会再来这里吃饭。"  # 31 characters
SHORT_EDIT = SHORT.replace("很好", "真好")  # one character: 5-gram Jaccard 0.69, 2-gram 0.88


def test_near_dedup_catches_a_small_edit_of_a_short_document(tmp_path):
    from minigpt.data.clean.dedup import shingle_size

    assert shingle_size(len(SHORT), 5) == 2 and shingle_size(200, 5) == 5
    f = write_lines(tmp_path / "in.jsonl", [text_line(SHORT), text_line(GOOD[0]), text_line(SHORT_EDIT),
                                             text_line(GOOD[8])])
    stats = run_cleaning(config(f), tmp_path / "out")
    rej = rejects(tmp_path / "out")
    assert [(r["line"], r["reason"]) for r in rej] == [(3, "near_duplicate")]
    assert f"{f}:1" in rej[0]["detail"] and stats["near_duplicates"] == 1
    assert run_cleaning(config(f, near_dedup=False), tmp_path / "off")["near_duplicates"] == 0


# --------------------------------------------------------------------------- a JSON list on the command line


def test_data_files_accepts_a_json_list(tmp_path):
    from minigpt.params import coerce, load_params

    assert coerce("data_files", '["a.jsonl", "b.jsonl"]', list[str], "-p") == ["a.jsonl", "b.jsonl"]
    assert coerce("data_files", "a.jsonl,b.jsonl", list[str], "-p") == ["a.jsonl", "b.jsonl"]
    P = load_params("clean", {}, data_files='["x.jsonl", "y.txt"]', run_dir=str(tmp_path / "run"))
    assert list(P.data_files) == ["x.jsonl", "y.txt"]
