"""Every JSONL reader of the package against the lines of issue 31 (items 3, 4, 5): 100,000 nested brackets,
a 5,000-digit integer, invalid UTF-8, and a raw CR inside a line (legal JSON whitespace). Each bad line is
that line's error, with its own line number and a reason; good lines around it, and every later line
number, are unaffected; invalid UTF-8 is never turned into U+FFFD."""
from __future__ import annotations

import json
import logging
import re

import pytest

from minigpt.data.jsonl import INVALID_JSON, INVALID_UTF8, iter_json_lines, parse_line, read_json_file

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b'{"n": ' + b"7" * 5000 + b"}"


def _pair(k: int, sep: str = " ") -> bytes:
    obj = {"prompt": f"问题{k}", "chosen": f"好的回答{k}", "rejected": f"差的回答{k}"}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":" + sep)).encode()


def _cr_inside(line: bytes) -> bytes:
    """The same object with a raw CR after its first comma (whitespace between tokens)."""
    return line.replace(b",", b",\r", 1)


BAD_UTF8 = b'{"prompt": "\xe4\xb8", "chosen": "a", "rejected": "b"}'  # a cut 3-byte character


def _write(tmp_path, lines: list[bytes], name="f.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_parse_line_reasons():
    assert parse_line(DEEP) == (None, INVALID_JSON, "nested too deeply")
    v, reason, detail = parse_line(HUGE_INT)
    assert v is None and reason == INVALID_JSON and "4300 digits" in detail
    v, reason, detail = parse_line(BAD_UTF8)
    assert v is None and reason == INVALID_UTF8 and detail.startswith("byte 0xe4 at byte 13 ") and "not UTF-8" in detail
    assert parse_line(_cr_inside(_pair(1)))[0] == json.loads(_pair(1))
    assert parse_line(b'\xef\xbb\xbf{"a": 1}\r') == ({"a": 1}, None, "")  # BOM and CRLF


def test_iter_json_lines_numbers_every_line(tmp_path):
    sep = '{"text": "a\u2028b\x85c"}'.encode()  # U+2028 and U+0085 inside a string: str.splitlines splits there
    p = _write(tmp_path, [_pair(1), DEEP, HUGE_INT, b"", BAD_UTF8, _cr_inside(_pair(2)), sep, _pair(3)])
    got = [(x.line, x.reason) for x in iter_json_lines(p)]
    assert got == [(1, None), (2, INVALID_JSON), (3, INVALID_JSON), (5, INVALID_UTF8), (6, None), (7, None), (8, None)]
    values = [x.value for x in iter_json_lines(p) if x.ok]
    assert values[2] == {"text": "a\u2028b\x85c"} and values[3] == json.loads(_pair(3))


def test_read_pairs(tmp_path):
    from minigpt.align.pairs import PairReport, read_pairs

    p = _write(tmp_path, [_pair(1), DEEP, HUGE_INT, BAD_UTF8, _cr_inside(_pair(2)), _pair(3)], "dpo.jsonl")
    report = PairReport(str(p))
    pairs = read_pairs(p, report)
    assert [x.chosen for x in pairs] == ["好的回答1", "好的回答2", "好的回答3"]
    assert [(r["line"], r["reason"]) for r in report.rejects] == [(2, "invalid_json"), (3, "invalid_json"),
                                                                  (4, "invalid_utf8")]
    assert report.rejects[0]["detail"] == "nested too deeply" and "4300 digits" in report.rejects[1]["detail"]
    assert not any("\ufffd" in (x.chosen + "".join(c for _, c in x.prompt)) for x in pairs)
    assert report.lines == 6 and report.kept == 3


def _chat(k: int) -> bytes:
    return json.dumps({"conversations": [{"role": "user", "content": f"你好{k}"},
                                         {"role": "assistant", "content": f"你好，我是助手{k}"}]},
                      ensure_ascii=False).encode()


def test_chat_source_and_cleaning_reader(tmp_path):
    from minigpt.data.chat_source import ChatReport, read_chat_file
    from minigpt.data.sources import readers

    bad_chat = b'{"conversations": [{"role": "user", "content": "\xff"}]}'
    p = _write(tmp_path, [_chat(1), DEEP, HUGE_INT, bad_chat, _cr_inside(_chat(2)), _chat(3)], "chat.jsonl")
    report = ChatReport(str(p))
    convs = read_chat_file(p, report)
    assert [c[0]["content"] for c in convs] == ["你好1", "你好2", "你好3"]
    assert [(r["line"], r["reason"]) for r in report.examples] == [(2, "invalid_json"), (3, "invalid_json"),
                                                                   (4, "invalid_utf8")]
    items = list(readers.iter_jsonl(str(p), max_line_bytes=10_000_000))
    assert [(i.line, i.kind) for i in items] == [(1, "chat"), (2, "reject"), (3, "reject"), (4, "reject"),
                                                 (5, "chat"), (6, "chat")]
    assert items[1].value.detail == "nested too deeply" and "4300 digits" in items[2].value.detail


def test_eval_loaders_name_the_line(tmp_path):
    from minigpt.eval.cloze import _read_jsonl
    from minigpt.eval.loaders import read_mc_jsonl

    good = json.dumps({"question": "1+1?", "choices": ["1", "2"], "answer": 1}).encode()
    ok = read_mc_jsonl(_write(tmp_path, [good, _cr_inside(good), good], "cr.jsonl"))
    assert len(ok) == 3  # the CR does not split a line
    for bad, line, message in [(DEEP, 2, "not valid JSON (nested too deeply)"), (HUGE_INT, 2, "4300 digits"),
                               (BAD_UTF8, 2, "not UTF-8 (byte 0xe4 at byte 13")]:
        p = _write(tmp_path, [good, bad, good], "mc.jsonl")
        with pytest.raises(ValueError, match=rf"mc\.jsonl: line {line}: .*{re.escape(message)}"):
            read_mc_jsonl(p)
    p = _write(tmp_path, [b'{"text": "ok"}', _cr_inside(b'{"a": 1, "text": "two"}'), BAD_UTF8], "val.jsonl")
    with pytest.raises(ValueError, match=r"val\.jsonl: line 3: invalid_utf8"):
        _read_jsonl(p, "text")
    assert _read_jsonl(_write(tmp_path, [b'{"text": "ok"}', _cr_inside(b'{"a": 1, "text": "two"}')], "v2.jsonl"),
                       "text") == [(1, "ok"), (2, "two")]


def test_tokenizer_corpus_names_the_line(tmp_path):
    from minigpt.data.tokenizer.corpus import iter_jsonl

    p = _write(tmp_path, [b'{"text": "a"}', _cr_inside(b'{"x": 1, "text": "b"}'), DEEP])
    with pytest.raises(ValueError, match=r"f\.jsonl:3: invalid JSON \(nested too deeply\)"):
        list(iter_jsonl(p, "text"))
    p = _write(tmp_path, [b'{"text": "a"}', b'{"text": "\xc3"}'])
    with pytest.raises(ValueError, match=r"f\.jsonl:2: not valid UTF-8"):
        list(iter_jsonl(p, "text"))


def test_metrics_and_rejects_readers_skip_bad_lines(tmp_path, caplog):
    from minigpt.data.clean.report import example_rejects
    from minigpt.ui.plots import read_metrics

    m = _write(tmp_path, [b'{"step": 1, "loss": 2.0}', DEEP, HUGE_INT, b'{"step": 2,\r "loss": 1.5}'], "metrics.jsonl")
    with caplog.at_level(logging.WARNING):
        assert read_metrics(m) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert "metrics.jsonl:2: unreadable metrics line skipped (nested too deeply)" in caplog.text
    assert "metrics.jsonl:3:" in caplog.text
    out = tmp_path / "clean"
    out.mkdir()
    rec = {"reason": "too_short", "file": "a.txt", "line": 3, "excerpt": "x", "detail": ""}
    _write(out, [DEEP, json.dumps(rec).encode(), BAD_UTF8], "rejects.jsonl")
    table = example_rejects(out)
    assert list(table["reason"]) == ["too_short"] and list(table["line"]) == [3]


def test_sweep_results_file(tmp_path):
    from minigpt.experiment.report import load_results
    from minigpt.experiment.runner import read_results

    p = tmp_path / "results.json"
    p.write_bytes(DEEP)
    with pytest.raises(ValueError, match=r"results\.json: not valid JSON \(nested too deeply\); expected the sweep"):
        read_results(p)
    with pytest.raises(ValueError, match=r"results\.json: not valid JSON \(nested too deeply\)"):
        load_results(p)
    p.write_bytes(b'{"runs": ["\xff"]}')
    with pytest.raises(ValueError, match=r"results\.json: not UTF-8"):
        read_results(p)
    p.write_bytes(b'{"runs": [],\r\n "sweep": {}}')
    assert read_results(p) == {"runs": [], "sweep": {}} and read_json_file(p, "x") == {"runs": [], "sweep": {}}


def test_skills_reader_names_the_line(tmp_path):
    from minigpt.data import skills as S

    items = S.make_skills("val", 2, families=["add"])
    good = [json.dumps(it.to_json(), ensure_ascii=False).encode() for it in items]
    p = _write(tmp_path, [good[0], _cr_inside(good[1])], "skills.jsonl")
    assert S.read_skills_jsonl(p) == items  # the CR inside the second line does not split it
    for bad, message in [(DEEP, "skills.jsonl:2: not valid JSON (nested too deeply)"),
                         (HUGE_INT, "skills.jsonl:2: not valid JSON (Exceeds the limit (4300 digits)"),
                         (BAD_UTF8, "skills.jsonl:2: not UTF-8 (byte 0xe4 at byte 13")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            S.read_skills_jsonl(_write(tmp_path, [good[0], bad, good[1]], "skills.jsonl"))
