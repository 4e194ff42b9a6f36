"""Tests for minigpt.data.clean: every reject reason, cleaning steps, dedup, split, resume, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minigpt.bench.text import bench_clean, write_synthetic_jsonl
from minigpt.data import clean as C
from minigpt.data.clean import CleanConfig, pipeline, run_cleaning

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_clean import (  # noqa: E402
    GOOD, LONG, LONG_NEAR, assert_accounted, cleaned, config, jline, kept_texts, read_jsonl, rejects, text_line,
    write_lines,
)

# --------------------------------------------------------------------------- every reject reason

TOO_LONG_LINE = b'{"text": "' + "长".encode() * 200 + b'"}'  # 610 bytes > max_line_bytes=300 below

REJECT_CASES = [
    # (malformed line 2, expected reason, config overrides, line 1)
    (b'{"text": "\xff\xfe bad bytes"}', "invalid_utf8", {}, None),
    (b'{"text": "lone \\ud800 surrogate escape here"}', "invalid_utf8", {}, None),
    (b'{"text": "a\x00b"}', "nul_byte", {}, None),
    (b'{"text": "escaped \\u0000 nul in the text"}', "nul_byte", {}, None),
    (TOO_LONG_LINE, "line_too_long", {"max_line_bytes": 300}, None),
    (b"   \t ", "blank_line", {}, None),
    (b'{"text": "unterminated', "invalid_json", {}, None),
    (b'["a list", "not an object"]', "not_an_object", {}, None),
    (b'{"content": "no text key"}', "missing_text", {}, None),
    (b'{"text": 42}', "text_not_string", {}, None),
    (b'{"text": null}', "text_not_string", {}, None),
    (b'{"conversations": "hello"}', "bad_conversation", {}, None),
    (jline({"conversations": [{"role": "user"}]}), "bad_conversation", {}, None),
    (jline({"conversations": [{"role": "user", "content": "你好"}, {"role": "bot", "content": "嗨"}]}),
     "bad_role", {}, None),
    (jline({"conversations": [{"role": "user", "content": "你好"}, {"role": "user", "content": "在吗"},
                              {"role": "assistant", "content": "在"}]}), "bad_role_order", {}, None),
    (jline({"conversations": [{"role": "assistant", "content": "你好"}, {"role": "user", "content": "嗨"}]}),
     "bad_role_order", {}, None),
    (jline({"conversations": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]}),
     "no_assistant_turn", {}, None),
    (jline({"conversations": [{"role": "user", "content": "你好"},
                              {"role": "assistant", "content": "\u200b \t"}]}), "empty_after_clean", {}, None),
    (text_line("  \u200b\u200b  \t "), "empty_after_clean", {}, None),
    (text_line("你好啊"), "too_short", {}, None),
    (text_line("这是一个很长的句子" * 10), "too_long", {"max_chars": 60, "quality_filter": False}, None),
    (text_line("…… —— …… —— …… !? ……"), "low_letter_fraction", {}, None),
    (text_line("这本书很好看推荐大家购买#### $$$"), "high_symbol_fraction", {}, None),
    (text_line("This line is written in English only, sadly."), "low_cjk_fraction", {"min_cjk_fraction": 0.3},
     text_line(GOOD[0])),
    (text_line("这个东西太好了" + "啊" * 20), "repeated_char_run", {}, None),
    (text_line("第一行的内容在这里\n第一行的内容在这里\n第一行的内容在这里\n另外一行不一样"), "duplicate_lines", {}, None),
    (text_line("还成不错还成不错还成不错还成不错还成不错还成不错物有所值"), "duplicate_ngrams", {}, None),
    (text_line("  " + GOOD[0].upper() + " "), "exact_duplicate", {}, None),
    (text_line(LONG_NEAR), "near_duplicate", {}, text_line(LONG)),
]


@pytest.mark.parametrize("bad, reason, overrides, first", REJECT_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(REJECT_CASES)])
def test_every_reject_reason_has_its_line_number(tmp_path, bad, reason, overrides, first):
    f = write_lines(tmp_path / "in.jsonl", [first or text_line(GOOD[0]), bad, text_line(GOOD[1])])
    out = tmp_path / "out"
    stats = run_cleaning(config(f, **overrides), out)
    rej = rejects(out)
    assert [(r["file"], r["line"], r["reason"]) for r in rej] == [(str(f), 2, reason)]
    assert stats["rejected"] == {reason: 1}
    assert stats["kept"]["train"] + stats["kept"]["val"] == 2
    assert stats["sources"][str(f)]["rejected"] == {reason: 1}
    assert_accounted(stats)


def test_over_long_line_is_skipped_without_breaking_the_next_line(tmp_path):
    long = b'{"text": "' + b"x" * 5000 + b'"}'
    f = write_lines(tmp_path / "in.jsonl", [long, text_line(GOOD[0]), long, text_line(GOOD[1])])
    stats = run_cleaning(config(f, max_line_bytes=1000), tmp_path / "out")
    assert [(r["line"], r["reason"]) for r in rejects(tmp_path / "out")] == [(1, "line_too_long"), (3, "line_too_long")]
    assert sorted(kept_texts(tmp_path / "out")) == sorted(cleaned(g) for g in GOOD[:2])
    assert stats["rejected"] == {"line_too_long": 2}


def test_bom_is_stripped_and_the_line_read(tmp_path):
    bom = b"\xef\xbb\xbf"
    f = write_lines(tmp_path / "in.jsonl", [bom + text_line(GOOD[0]), text_line(GOOD[1]), bom + text_line(GOOD[2])])
    stats = run_cleaning(config(f), tmp_path / "out")
    assert stats["rejected"] == {}
    assert stats["steps"]["bom_stripped"] == 2
    assert sorted(kept_texts(tmp_path / "out")) == sorted(cleaned(g) for g in GOOD[:3])


def test_crlf_line_endings_are_read(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_bytes(text_line(GOOD[0]) + b"\r\n" + text_line(GOOD[1]) + b"\r\n")
    stats = run_cleaning(config(f), tmp_path / "out")
    assert stats["rejected"] == {} and stats["kept"]["train"] + stats["kept"]["val"] == 2


# --------------------------------------------------------------------------- errors that stop the run


def test_missing_file_stops_the_run(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run_cleaning(config(missing), tmp_path / "out")


def test_empty_file_stops_the_run(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jsonl.*empty"):
        run_cleaning(config(f), tmp_path / "out")


def test_entirely_invalid_file_stops_the_run(tmp_path):
    good = write_lines(tmp_path / "good.jsonl", [text_line(GOOD[0])])
    bad = write_lines(tmp_path / "bad.jsonl", [b"not json", b'{"text": "a\x00b"}', b"\xff\xfe"])
    with pytest.raises(ValueError, match=r"bad\.jsonl: none of its 3 records is valid") as e:
        run_cleaning(config(good, bad), tmp_path / "out")
    assert "invalid_json" in str(e.value) and "nul_byte" in str(e.value)


def test_txt_with_only_blank_lines_stops_the_run(tmp_path):
    f = tmp_path / "blank.txt"
    f.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"blank\.txt: no records"):
        run_cleaning(config(f), tmp_path / "out")


def test_unsupported_extension(tmp_path):
    f = tmp_path / "data.docx"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"data\.docx.*unsupported extension"):
        run_cleaning(config(f), tmp_path / "out")


@pytest.mark.parametrize("field, value", [("val_fraction", 1.5), ("sft_language", "french"), ("min_chars", -1),
                                          ("near_dedup_threshold", 1.0), ("max_chars", 0),
                                          ("data_files", "one.jsonl"), ("max_dup_ngram_fraction", 2.0)])
def test_config_validate_names_the_field(field, value):
    cfg = CleanConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"CleanConfig\.{field} = .*expected"):
        cfg.validate()


def test_config_fields_have_simple_types_and_defaults():
    import dataclasses

    for f in dataclasses.fields(CleanConfig):
        assert f.type in ("int", "float", "bool", "str", "list[str]"), f.name
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    CleanConfig().validate()


# --------------------------------------------------------------------------- cleaning steps


def _cleaner(**kw) -> C.Cleaner:
    return C.Cleaner(CleanConfig(**kw), {k: 0 for k in C.STEPS})


STEP_CASES = [
    # (flag / counter, input, output with the step on, output with it off)
    # Chinese punctuation stays full-width; letters, digits and other symbols become ASCII
    ("fullwidth_to_halfwidth", "ＡＢＣ１２３，测试！＃", "ABC123，测试！#", "ＡＢＣ１２３，测试！＃"),
    ("nfkc", "①号文件ﬁle", "1号文件file", "①号文件ﬁle"),
    ("strip_control", "测试\u200b文本\x07内容\ufeff", "测试文本内容", "测试\u200b文本\x07内容\ufeff"),
    ("cjk_punctuation", "12月31日,中共中央 你好? ok, 3.5", "12月31日，中共中央 你好？ ok, 3.5",
     "12月31日,中共中央 你好? ok, 3.5"),
    ("collapse_whitespace", "  测试  文本\t\t内容\n\n\n\n下一段 \n 末行 ", "测试 文本 内容\n\n下一段\n末行",
     "  测试  文本\t\t内容\n\n\n\n下一段 \n 末行 "),
    ("remove_urls", "请访问https://example.com/a?b=1了解www.abc.cn更多", "请访问了解更多",
     "请访问https://example.com/a?b=1了解www.abc.cn更多"),
    # block tags become line breaks (collapse_whitespace, off here, would then strip them)
    ("remove_html", "<p>这是<b>加粗</b>的文字&amp;内容</p>", "\n这是加粗的文字&内容\n", "<p>这是<b>加粗</b>的文字&amp;内容</p>"),
]


@pytest.mark.parametrize("step, text, on, off", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_each_cleaning_step_can_be_switched_off_and_is_counted(step, text, on, off):
    # every other step off, so each case shows exactly what one step does
    flags = {f: False for f in ("fullwidth_to_halfwidth", "nfkc", "strip_control", "cjk_punctuation",
                                "collapse_whitespace", "remove_urls", "remove_html")}
    c_on = _cleaner(**{**flags, step: True})
    assert c_on.normalize(text) == on
    assert c_on.steps[step] == 1
    assert c_on.normalize(on) == on and c_on.steps[step] == 1  # idempotent, not counted again
    c_off = _cleaner(**flags)
    assert c_off.normalize(text) == off
    assert sum(c_off.steps.values()) == 0


def test_pos_tags_are_stripped_only_for_tagged_sources():
    line = "19980101-01-001-002/m  中共中央/nt  总书记/n  、/w  [中央/n  人民/n  广播/vn  电台/n]nt  Windows/nx  98/m"
    c = _cleaner()
    assert c.normalize(line, pos_tagged=True) == "中共中央总书记、中央人民广播电台Windows 98"
    assert c.steps["strip_pos_tags"] == 1
    assert "/nt" in c.normalize(line, pos_tagged=False)
    assert "/nt" in _cleaner(strip_pos_tags=False).normalize(line, pos_tagged=True)


def test_switching_a_step_off_changes_the_run_output(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [text_line("访问https://example.com看看这家店，非常好吃的东西")])
    on = run_cleaning(config(f), tmp_path / "on")
    off = run_cleaning(config(f, remove_urls=False), tmp_path / "off")
    assert kept_texts(tmp_path / "on") == ["访问看看这家店，非常好吃的东西"]
    assert kept_texts(tmp_path / "off") == ["访问https://example.com看看这家店，非常好吃的东西"]
    assert on["steps"]["remove_urls"] == 1 and off["steps"]["remove_urls"] == 0


def test_quality_filter_off_keeps_junk(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [text_line("这本书很好看推荐大家购买#### $$$"), text_line(GOOD[0])])
    stats = run_cleaning(config(f, quality_filter=False), tmp_path / "out")
    assert stats["rejected"] == {} and len(kept_texts(tmp_path / "out")) == 2


def test_quality_values():
    c = _cleaner()
    assert c.quality(GOOD[0]) == ("", "")
    reason, detail = c.quality("这本书很好看推荐大家购买#### $$$")
    assert reason == "high_symbol_fraction" and detail == "symbol_fraction=0.37"  # 7 of 19 non-space chars
    assert c.quality("好" * 16 + "的") == ("", "")  # a run of exactly max_char_run is allowed
    assert c.quality("好" * 17 + "的")[0] == "repeated_char_run"
    # astral CJK characters (extension B) are letters
    assert _cleaner(min_cjk_fraction=0.9).quality("𠀀𠀁𠀂𠀃𠀄𠀅𠀆𠀇𠀈𠀉") == ("", "")


# --------------------------------------------------------------------------- dedup


def test_exact_dedup_on_normalised_text(tmp_path):
    lines = [text_line(GOOD[0]), text_line(GOOD[0]), text_line("  " + GOOD[2].upper()), text_line(GOOD[2]),
             text_line(GOOD[3])]
    f = write_lines(tmp_path / "in.jsonl", lines)
    stats = run_cleaning(config(f), tmp_path / "out")
    assert stats["exact_duplicates"] == 2
    assert [(r["line"], r["reason"]) for r in rejects(tmp_path / "out")] == [(2, "exact_duplicate"),
                                                                            (4, "exact_duplicate")]
    assert sorted(kept_texts(tmp_path / "out")) == sorted(cleaned(g) for g in [GOOD[0], GOOD[2].upper(), GOOD[3]])
    stats = run_cleaning(config(f, exact_dedup=False, near_dedup=False), tmp_path / "out2")
    assert stats["exact_duplicates"] == 0 and len(kept_texts(tmp_path / "out2")) == 5


def test_exact_dedup_across_files_and_batches(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [text_line(f"{GOOD[i % 12]} 编号{i}") for i in range(1500)])
    b = write_lines(tmp_path / "b.jsonl", [text_line(f"{GOOD[i % 12]} 编号{i}") for i in range(1000, 1600)])
    stats = run_cleaning(config(a, b, near_dedup=False), tmp_path / "out")
    assert stats["exact_duplicates"] == 500
    assert len(kept_texts(tmp_path / "out")) == 1600


def test_near_dedup(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [text_line(LONG), text_line(GOOD[0]), text_line(LONG_NEAR)])
    stats = run_cleaning(config(f), tmp_path / "out")
    assert stats["near_duplicates"] == 1
    assert [(r["line"], r["reason"]) for r in rejects(tmp_path / "out")] == [(3, "near_duplicate")]
    assert sorted(kept_texts(tmp_path / "out")) == sorted(cleaned(g) for g in [LONG, GOOD[0]])
    # off, or with a threshold above the pair's similarity (~0.84), both are kept
    assert run_cleaning(config(f, near_dedup=False), tmp_path / "off")["near_duplicates"] == 0
    assert run_cleaning(config(f, near_dedup_threshold=0.97), tmp_path / "strict")["near_duplicates"] == 0


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    base = "".join(chr(0x4E00 + int(x)) for x in rng.integers(0, 3000, size=400))
    other = base[:300] + "".join(chr(0x4E00 + int(x)) for x in rng.integers(0, 3000, size=100))
    unrelated = "".join(chr(0x4E00 + int(x)) for x in rng.integers(0, 3000, size=400))

    def jac(a, b, n=5):
        sa, sb = {a[i:i + n] for i in range(len(a) - n + 1)}, {b[i:i + n] for i in range(len(b) - n + 1)}
        return len(sa & sb) / len(sa | sb)

    lsh = C.MinHashLSH(128, 0.8, 5)
    sig = lsh.signatures([base, other, unrelated, "短"])
    assert sig.shape == (4, 128) and sig.dtype == np.uint32
    est = float((sig[0] == sig[1]).mean())
    assert abs(est - jac(base, other)) < 0.12  # true value ~0.59
    assert float((sig[0] == sig[2]).mean()) < 0.05
    assert np.array_equal(lsh.signatures([base])[0], sig[0])  # independent of the batch around it


def test_lsh_params_match_threshold():
    b, r = C.lsh_params(128, 0.8)
    assert b * r <= 128
    assert 0.7 < (1 / b) ** (1 / r) < 0.9  # the S-curve's midpoint sits near the threshold
    b2, r2 = C.lsh_params(128, 0.5)
    assert (1 / b2) ** (1 / r2) < (1 / b) ** (1 / r)


def test_hashset64_matches_python_set():
    rng = np.random.default_rng(1)
    hs = C.HashSet64(capacity=16)
    ref: set[int] = set()
    for _ in range(20):
        keys = rng.integers(1, 2**63, size=300, dtype=np.uint64)
        keys[:50] = rng.choice(np.array(sorted(ref) or [7], dtype=np.uint64), size=50)  # some repeats
        new = hs.add(keys)
        assert set(new.tolist()) == set(keys.tolist()) - ref
        ref |= set(keys.tolist())
    assert len(hs) == len(ref)
    probe = rng.integers(1, 2**63, size=1000, dtype=np.uint64)
    probe[:500] = np.array(sorted(ref), dtype=np.uint64)[:500]
    assert hs.contains(probe).tolist() == [int(k) in ref for k in probe]


# --------------------------------------------------------------------------- split


def _split_of(out: Path) -> dict[str, str]:
    return {**{r["text"]: "train" for r in read_jsonl(out / "train.jsonl")},
            **{r["text"]: "val" for r in read_jsonl(out / "val.jsonl")}}


def test_split_is_stable_when_files_are_appended(tmp_path):
    docs = [cleaned(f"{GOOD[i % 12]} 第{i}号文档") for i in range(600)]
    f = write_lines(tmp_path / "in.jsonl", [text_line(d) for d in docs[:400]])
    run_cleaning(config(f, val_fraction=0.25, near_dedup=False), tmp_path / "a")
    before = _split_of(tmp_path / "a")
    assert len(before) == 400
    assert 0.15 < sum(v == "val" for v in before.values()) / 400 < 0.35
    write_lines(f, [text_line(d) for d in docs])  # the same file with 200 more lines appended
    g = write_lines(tmp_path / "more.jsonl", [text_line(d) for d in reversed(docs[300:])])
    run_cleaning(config(g, f, val_fraction=0.25, near_dedup=False), tmp_path / "b")
    after = _split_of(tmp_path / "b")
    assert len(after) == 600
    assert all(after[t] == s for t, s in before.items())
    for t, s in after.items():  # the rule itself: a hash of the normalised text
        assert s == ("val" if C.is_val(C.text_hash(C.dedup_key(t)), 0.25) else "train")


def test_sft_records_are_split_into_sft_files(tmp_path):
    convs = [[{"role": "system", "content": "你是一个助手"}, {"role": "user", "content": f"问题{i}是什么?"},
              {"role": "assistant", "content": f"答案是{i}。"}, {"role": "user", "content": "谢谢"}]
             for i in range(200)]
    f = write_lines(tmp_path / "chat.jsonl", [jline({"conversations": c}) for c in convs] + [text_line(GOOD[0])])
    stats = run_cleaning(config(f, val_fraction=0.0, sft_val_fraction=0.2), tmp_path / "out")
    sft = read_jsonl(tmp_path / "out" / "sft.jsonl") + read_jsonl(tmp_path / "out" / "sft_val.jsonl")
    # dialogues follow sft_val_fraction, not the documents' val_fraction
    assert len(sft) == 200 and 10 < stats["kept"]["sft_val"] < 70
    assert stats["steps"]["trailing_user_turn_dropped"] == 200
    assert all([t["role"] for t in r["conversations"]] == ["system", "user", "assistant"] for r in sft)
    assert kept_texts(tmp_path / "out") == [cleaned(GOOD[0])]
    assert_accounted(stats)


# --------------------------------------------------------------------------- resume


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in C.OUTPUTS.values()}


def _comparable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("elapsed_s", "mb_per_s")}


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    f = tmp_path / "in.jsonl"
    write_synthetic_jsonl(f, 1.5, seed=3)
    with open(f, "ab") as fh:  # a few malformed lines so rejects are part of the comparison
        fh.write(b'{"text": "a\x00b"}\n\xff\xfe\n{"text": 5}\n')
    cfg = config(f, checkpoint_every=1000)
    full = run_cleaning(cfg, tmp_path / "full")

    calls = {"n": 0}
    real = pipeline._Run.process

    def crashing(self, batch, *prepared):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at 1024 records, mid-way through the next ones
            raise KeyboardInterrupt
        return real(self, batch, *prepared)

    monkeypatch.setattr(pipeline._Run, "process", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_cleaning(cfg, tmp_path / "resumed")
    monkeypatch.setattr(pipeline._Run, "process", real)
    state = json.loads((tmp_path / "resumed" / C.STATE_FILE).read_text())
    assert state["phase"] == "running" and state["line"] == 2048
    assert not (tmp_path / "resumed" / "train.jsonl").exists()
    # bytes written after the checkpoint (a crash mid-write) are cut off on resume
    with open(tmp_path / "resumed" / "train.jsonl.partial", "ab") as fh:
        fh.write(b'{"text": "half a li')
    resumed = run_cleaning(cfg, tmp_path / "resumed")
    assert _outputs(tmp_path / "resumed") == _outputs(tmp_path / "full")
    assert _comparable(resumed) == _comparable(full)
    assert full["rejected"]["nul_byte"] == 1 and full["exact_duplicates"] > 0 and full["near_duplicates"] > 0
    assert_accounted(full)
    # a finished run is not redone; resume=False redoes it
    again = run_cleaning(cfg, tmp_path / "resumed")
    assert again == json.loads((tmp_path / "resumed" / "stats.json").read_text())
    assert _comparable(run_cleaning(cfg, tmp_path / "resumed", resume=False)) == _comparable(full)


def test_changed_config_starts_afresh(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [text_line(g) for g in GOOD])
    run_cleaning(config(f), tmp_path / "out")
    stats = run_cleaning(config(f, min_chars=30), tmp_path / "out")
    assert stats["rejected"].get("too_short", 0) > 0
    assert len(kept_texts(tmp_path / "out")) == 12 - stats["rejected"]["too_short"]


# --------------------------------------------------------------------------- caps, formats, built-ins


def test_max_data_size_caps_documents(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [text_line(f"{GOOD[i % 12]} 编号{i}") for i in range(3000)])
    stats = run_cleaning(config(f, max_data_size=700, near_dedup=False), tmp_path / "out")
    assert stats["kept"]["train"] + stats["kept"]["val"] == 700
    assert stats["records"] < 3000  # stopped reading once the cap was reached
    assert_accounted(stats)


def test_builtin_default_build_small(tmp_path):
    stats = run_cleaning(CleanConfig(max_data_size=300, progress=False), tmp_path / "out")
    assert stats["kept"]["train"] + stats["kept"]["val"] == 300
    assert stats["kept"]["sft"] + stats["kept"]["sft_val"] == 300
    assert set(stats["sources"]) == {"peoples_daily", "chatterbot_chinese"}  # reviews never reached
    first = read_jsonl(tmp_path / "out" / "train.jsonl")[0]["text"]
    assert "/" not in first and "迈向充满希望的新世纪" in first
    sft = read_jsonl(tmp_path / "out" / "sft.jsonl")
    assert all(r["conversations"][-1]["role"] == "assistant" for r in sft)
    assert_accounted(stats)


@pytest.mark.slow
def test_builtin_default_build_full(tmp_path):
    import time

    t0 = time.perf_counter()
    stats = run_cleaning(CleanConfig(progress=False), tmp_path / "out")
    assert time.perf_counter() - t0 < 60
    assert set(stats["sources"]) == {"peoples_daily", "reviews", "chatterbot_chinese"}
    assert stats["sources"]["peoples_daily"]["records"] == 19484
    assert stats["sources"]["reviews"]["records"] == 16548 + 18576
    assert stats["kept"]["train"] > 30000 and stats["kept"]["sft"] > 400
    assert stats["exact_duplicates"] > 10000  # the review files repeat many lines
    assert_accounted(stats)


# --------------------------------------------------------------------------- display


def test_stats_table_examples_and_plots(tmp_path):
    lines = [text_line(g) for g in GOOD] + [b"not json"] * 3 + [text_line("短")] * 12 + [text_line(GOOD[0])]
    f = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    stats = run_cleaning(config(f), out)
    table = C.stats_table(stats)
    assert table.loc[str(f), "docs"] == 12 and table.loc[str(f), "invalid_json"] == 3
    assert table.loc["total", "too_short"] == 12 and table.loc["total", "exact_duplicate"] == 1
    ex = C.example_rejects(out, per_reason=10)
    assert ex.groupby("reason").size().to_dict() == {"invalid_json": 3, "too_short": 10, "exact_duplicate": 1}
    assert ex.iloc[0]["line"] == 13
    paths = C.plot_clean_stats(stats, out, show=False)
    assert sorted(p.name for p in paths) == ["lengths.png", "rejects.png", "sources.png"]
    assert all(p.parent == out / "plots" and p.stat().st_size > 1000 for p in paths)
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figures are closed


def test_outputs_are_utf8_not_escaped(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [text_line(GOOD[0])])
    run_cleaning(config(f, val_fraction=0.0), tmp_path / "out")
    raw = (tmp_path / "out" / "train.jsonl").read_bytes()
    assert cleaned(GOOD[0]).encode("utf-8") in raw and b"\\u" not in raw
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [".clean_state.json", "rejects.jsonl", "sft.jsonl", "sft_val.jsonl", "stats.json", "train.jsonl", "val.jsonl"])


def test_bench_clean_reports_throughput():
    r = bench_clean(n_mb=0.3)
    assert r["mb"] >= 0.3 and r["mb_per_s"] > 0 and r["mb_per_cpu_s"] > 0
    assert r["exact_duplicates"] > 0 and r["near_duplicates"] == 0
    r2 = bench_clean(n_mb=0.3, near_dedup=True)
    assert r2["near_duplicates"] > 0


# --------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_memory_stays_bounded_on_a_large_file(tmp_path):
    big = tmp_path / "big.jsonl"
    write_synthetic_jsonl(big, 200, seed=7)
    assert big.stat().st_size >= 200e6
    # Peak RSS of a fresh process, before and after cleaning 200 MB. VmHWM, not ru_maxrss: Linux carries
    # ru_maxrss across fork+exec, so a child of a large pytest process would report the parent's size.
    script = textwrap.dedent("""
        import sys
        from minigpt.data.clean import CleanConfig, run_cleaning
        from minigpt.devices import peak_rss_mb
        base = peak_rss_mb()
        stats = run_cleaning(CleanConfig(data_files=[sys.argv[1]], near_dedup=False, progress=False), sys.argv[2])
        print(int(base), int(peak_rss_mb()), stats["kept"]["train"])
    """)
    res = subprocess.run([sys.executable, "-c", script, str(big), str(tmp_path / "out")], capture_output=True,
                         text=True, cwd=Path(__file__).parent.parent, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    base, peak, kept = map(int, res.stdout.split())
    assert kept > 300_000
    assert peak < 500
    assert peak - base < 120  # 200 MB in, ~400k documents kept: only the dedup table grows


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    import signal
    import time

    f = tmp_path / "in.jsonl"
    write_synthetic_jsonl(f, 8, seed=5)
    cfg = config(f, checkpoint_every=1000)
    full = run_cleaning(cfg, tmp_path / "full")
    script = textwrap.dedent(f"""
        from minigpt.data.clean import CleanConfig, run_cleaning
        run_cleaning(CleanConfig(data_files=[{str(f)!r}], checkpoint_every=1000, progress=False), {str(tmp_path / 'killed')!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    state = tmp_path / "killed" / C.STATE_FILE
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it hard once it has checkpointed at least once
        if state.exists() and json.loads(state.read_text() or "{}").get("line", 0) > 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["phase"] == "running", "the run finished before it could be killed"
    resumed = run_cleaning(cfg, tmp_path / "killed")
    assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "full")
    assert _comparable(resumed) == _comparable(full)
