"""export.py: a transformers Llama folder whose logits and greedy generation match minigpt's."""
from __future__ import annotations

import json

import pytest
import torch

from minigpt import GPT, ModelConfig
from minigpt.train.checkpoint import save_checkpoint
from minigpt.infer.export import export_hf, main
from minigpt.infer.generate import GenerationConfig, TextGenerator
from conftest import tiny_gpt, tiny_tokenizer

transformers = pytest.importorskip("transformers")

LINES = ["长江、黄河是中国的两条大河。", "今天天气很好，我们去公园散步。", "你好，很高兴认识你。", "中国的首都是北京。",
         "人工智能正在改变世界。", "Hello, how are you today?", "我喜欢读书和写字。"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    tok = tiny_tokenizer(LINES, n=200, vocab_size=330)
    tok.save(tmp / "tok")
    model = tiny_gpt(tok.vocab_size, d_model=64, max_seq_len=64, rope_theta=5000.0, rms_norm_eps=1e-6)
    cfg = model.config
    with torch.no_grad():  # wider weights than init: peaked distributions, so greedy paths are not ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    ckpt = save_checkpoint(tmp / "ckpt", model, {"model": cfg.to_dict(), "tokenizer_sha256": tok.sha256},
                           tokenizer_dir=tmp / "tok")
    out = export_hf(ckpt, tmp / "hf")
    return model, tok, out


def test_folder_contents(exported):
    model, tok, out = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "generation_config.json"} <= names
    assert not [n for n in names if n.startswith(".")]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    assert cfg["num_key_value_heads"] == 2 and cfg["rope_parameters"]["rope_theta"] == 5000.0
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tc["chat_template"] and tc["model_max_length"] == 64
    from safetensors.torch import load_file
    keys = set(load_file(str(out / "model.safetensors")))
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys


def test_hf_logits_match(exported):
    model, tok, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied on load
    ids = torch.tensor([tok.encode("长江、黄河是中国的两条大河。人工智能")])
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_hf_tokenizer_matches(exported):
    model, tok, out = exported
    hft = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "今天天气很好，Hello!"
    assert hft.encode(text, add_special_tokens=False) == tok.encode(text)
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "介绍一下中国"}]
    rendered = hft.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert hft.encode(rendered, add_special_tokens=False) == tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert hft.eos_token_id == tok.eos_id and hft.pad_token_id == tok.pad_id


def test_hf_greedy_generation_matches(exported):
    model, tok, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    gen = TextGenerator(model, tok, valid_utf8=False)  # transformers' generate has no UTF-8 mask
    cfg = GenerationConfig(do_sample=False, max_new_tokens=30)
    for prompt in ["长江、", "你好，很高兴", "Hello"]:
        ids = tok.encode(prompt)
        ours = gen.generate_ids(ids, cfg)
        x = torch.tensor([ids])
        with torch.no_grad():
            theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=30)
        assert ours == theirs[0, len(ids):].tolist(), prompt


def test_cli_and_bad_checkpoint(exported, tmp_path, capsys):
    model, tok, out = exported
    ckpt = out.parent / "ckpt"
    assert main([str(ckpt), str(tmp_path / "hf2")]) == 0
    assert (tmp_path / "hf2" / "model.safetensors").is_file()
    assert main([str(tmp_path / "nope"), str(tmp_path / "hf3")]) == 1
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "hf3").exists()


def test_untied_head_is_exported(exported, tmp_path):
    from minigpt.infer.export import export_model

    _, tok, out = exported
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32,
                      tie_word_embeddings=False)
    model = GPT(cfg).eval()
    hf_dir = export_model(model, out, tmp_path / "untied")  # the exported folder holds the tokenizer files too
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("中国的首都是北京。")])
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() < 1e-4


def test_qk_norm_exports_as_qwen3_with_logit_parity(exported, tmp_path):
    from minigpt.infer.export import export_model

    _, tok, out = exported
    torch.manual_seed(2)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                      qk_norm=True, tie_word_embeddings=False, rms_norm_eps=1e-6)
    model = GPT(cfg).eval()
    with torch.no_grad():  # norm weights off 1, so a misplaced or missing q/k norm shows in the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.1))
    hf_dir = export_model(model, out, tmp_path / "qwen3")
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert config["tie_word_embeddings"] is False
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    assert hf.model.layers[1].self_attn.q_norm.weight.shape == (8,)
    ids = torch.tensor([tok.encode("中国的首都是北京。人工智能")])
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() < 1e-4


def test_relu2_export_is_refused(exported, tmp_path):
    from minigpt.infer.export import export_model

    _, tok, out = exported
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, mlp="relu2")
    ckpt = save_checkpoint(tmp_path / "ckpt", GPT(cfg), {"model": cfg.to_dict(), "tokenizer_sha256": tok.sha256},
                           tokenizer_dir=out)
    with pytest.raises(ValueError, match="mlp='relu2': no transformers architecture has this MLP"):
        export_hf(ckpt, tmp_path / "hf")
    with pytest.raises(ValueError, match="mlp='relu2'"):
        export_model(GPT(cfg), out, tmp_path / "hf2")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf2").exists()


# ---- issue 31, item 1: an export never deletes what is not an export


@pytest.fixture
def run_folder(exported, tmp_path):
    """runs/X as the notebooks leave it: data, tokenizer, tokens and a pretrain checkpoint."""
    model, tok, out = exported
    run = tmp_path / "runs" / "X"
    for part, name, text in [("data", "train.jsonl", '{"text": "长江"}\n'), ("tokens", "meta.json", "{}"),
                             ("tokenizer", "notes.txt", "kept")]:
        (run / part).mkdir(parents=True)
        (run / part / name).write_text(text, encoding="utf-8")
    ckpt = save_checkpoint(run / "pretrain" / "final_model", model,
                           {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256},
                           tokenizer_dir=out.parent / "tok")
    return run, ckpt


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_export_refuses_what_it_would_destroy(run_folder, tmp_path, capsys, fmt):
    if fmt == "gguf":
        pytest.importorskip("gguf")
    run, ckpt = run_folder
    before = _snapshot(run)
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes", encoding="utf-8")
    user_before = _snapshot(user)
    cases = [(run, "is a run folder (it has data, tokenizer, tokens, pretrain/)"),
             (ckpt, "is a minigpt checkpoint"),
             (ckpt / "hf", "is a minigpt checkpoint"),
             (run / "pretrain", f"is {run / 'pretrain'}, a part of the run"),
             (ckpt.parent.parent.parent, "holds the checkpoint being exported"),
             (run / "data" / "hf", f"is inside {run / 'data'}, a part of the run"),
             (user, "not empty and not an export (no minigpt_export.json; it holds notes.txt, sub)")]
    for out, message in cases:
        assert main([str(ckpt), str(out), "--format", fmt]) == 1, out
        err = capsys.readouterr().err
        assert f"error: {out}: " in err and message in err, err
    assert _snapshot(run) == before and _snapshot(user) == user_before
    assert not (ckpt / "hf").exists() and not (run / "data" / "hf").exists()
    (tmp_path / "file").write_text("x")
    assert main([str(ckpt), str(tmp_path / "file"), "--format", fmt]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, other", [("hf", "gguf"), ("gguf", "hf")])
def test_export_replaces_only_its_own_kind(run_folder, capsys, fmt, other):
    """runs/X/<fmt> (a new folder beside the run's parts) is written, written again over itself, and refused
    to the other format; an empty folder is fine."""
    pytest.importorskip("gguf")
    run, ckpt = run_folder
    out = run / fmt
    assert main([str(ckpt), str(out), "--format", fmt]) == 0
    first = _snapshot(out)
    assert main([str(ckpt), str(out), "--format", fmt]) == 0  # a previous export of the same kind: replaced
    assert _snapshot(out) == first and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    assert main([str(ckpt), str(out), "--format", other]) == 1
    assert f"not empty and a {fmt} export" in capsys.readouterr().err
    assert _snapshot(out) == first
    empty = run / "empty"
    empty.mkdir()
    assert main([str(ckpt), str(empty), "--format", fmt]) == 0
    if fmt == "hf":
        assert json.loads((out / "minigpt_export.json").read_text())["format"] == "hf"
