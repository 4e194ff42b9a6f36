"""Benchmark loaders on fixture files in the published layouts (tests/fixtures/eval), and malformed copies."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from minigpt.eval.loaders import load_benchmarks, read_mc_csv, read_mc_jsonl

FIX = Path(__file__).parent / "fixtures" / "eval"


def test_ceval_val_csv():
    items = read_mc_csv(FIX / "ceval" / "val" / "computer_network_val.csv")
    assert [i.answer for i in items] == [2, 1, 3]
    assert items[1].question == "下列关于TCP协议的说法，正确的是____"
    assert items[1].choices == ["面向无连接", "提供可靠的, 面向连接的服务", "不进行流量控制", "只用于局域网"]
    assert items[0].id == "0" and items[2].source == "computer_network_val.csv:4"


def test_ceval_dev_csv_with_explanation_column():
    items = read_mc_csv(FIX / "ceval" / "dev" / "computer_network_dev.csv")
    assert [(i.choices[i.answer]) for i in items] == ["32", "80"]


def test_cmmlu_csv_with_unnamed_index_column():
    items = read_mc_csv(FIX / "cmmlu" / "test" / "agronomy.csv")
    assert [i.choices[i.answer] for i in items] == ["土地", "大豆"]
    assert items[0].id == "0" and items[1].question == "下列作物中属于豆科的是"


def test_jsonl_answers_as_index_letter_or_text():
    items = read_mc_jsonl(FIX / "simple.jsonl")
    assert [i.answer for i in items] == [0, 2, 0]
    assert len(items[2].choices) == 3


def test_folder_finds_subjects_splits_and_shots():
    benches = {b.name: b for b in load_benchmarks(FIX)}
    assert sorted(benches) == ["agronomy", "computer_network", "simple"]
    cn, ag, simple = benches["computer_network"], benches["agronomy"], benches["simple"]
    assert (cn.kind, len(cn.items), len(cn.shots), cn.style) == ("ceval", 3, 2, "letters")  # val scored, dev = shots
    assert (ag.kind, len(ag.items), len(ag.shots)) == ("cmmlu", 2, 1)
    assert (simple.kind, simple.style, len(simple.items)) == ("jsonl", "cloze", 3)
    assert [len(b.items) for b in load_benchmarks(FIX, max_items=1)] == [1, 1, 1]


def _copy(tmp_path, rel, text):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("body,message", [
    ("id,question,A,B,C,D,answer\n0,q1,a,b,c,d,A\n1,q2,a,b,c,d,E\n", r"x_val\.csv: row 3 \(line 3\): answer 'E': expected one of A, B, C, D"),
    ("id,question,A,B,C,D,answer\n0,q1,a,b,c,A\n", r"x_val\.csv: row 2 \(line 2\): 6 fields, expected 7"),
    ("id,question,A,B,C,answer\n0,q1,a,b,c,A\n", r"x_val\.csv: row 1 \(header\).*missing column\(s\) \['d'\]"),
    ("id,question,A,B,C,D\n0,q1,a,b,c,d\n", r"x_val\.csv: row 1 \(header\) has no 'answer' column"),
    ("id,question,A,B,C,D,answer\n0,,a,b,c,d,A\n", r"x_val\.csv: row 2 \(line 2\): empty question"),
    ("", r"x_val\.csv: empty file"),
])
def test_malformed_csv_names_file_and_row(tmp_path, body, message):
    path = _copy(tmp_path, "x_val.csv", body)
    with pytest.raises(ValueError, match=message):
        read_mc_csv(path)


@pytest.mark.parametrize("line,message", [
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', r"line 2: answer 2: expected an index 0\.\.1"),
    ('{"question": "q", "choices": "ab", "answer": 0}', r"line 2: choices: expected a list"),
    ('{"question": "q", "answer": 0}', r"line 2: missing key\(s\) \['choices'\]"),
    ('{"question": "q", "choices": ["a", "b"], ', r"line 2: not valid JSON"),
    ('["q"]', r"line 2: expected an object"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, line, message):
    good = '{"question": "q", "choices": ["a", "b"], "answer": 0}\n'
    path = _copy(tmp_path, "b.jsonl", good + line + "\n")
    with pytest.raises(ValueError, match=r"b\.jsonl: " + message):
        read_mc_jsonl(path)


def test_missing_folder_and_test_only_ceval(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval_data: .*nowhere not found"):
        load_benchmarks(tmp_path / "nowhere")
    shutil.copytree(FIX / "ceval" / "test", tmp_path / "ceval" / "test")
    assert load_benchmarks(tmp_path / "ceval") == []  # C-Eval's test split has no answers: skipped, with a warning
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .csv or .jsonl"):
        load_benchmarks(tmp_path / "empty")
