"""Tests for minigpt.data.sources: built-in corpora and the file readers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from minigpt.data import sources as S
from minigpt.data.clean import run_cleaning

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_clean import GOOD, cleaned, config, jline, kept_texts, rejects, text_line, write_lines  # noqa: E402


def _items(it) -> list[tuple[int, str, object]]:
    return [(i.line, i.kind, i.value) for i in it]


# --------------------------------------------------------------------------- built-ins


def test_peoples_daily_first_lines():
    items = list(S.iter_lines(str(S.peoples_daily_path()), 1_000_000))
    assert len(items) == 19484
    assert items[0].line == 1 and items[0].kind == "text"
    assert S.strip_pos_tags(items[0].value) == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert S.strip_pos_tags(items[1].value) == "中共中央总书记、国家主席江泽民"


@pytest.mark.parametrize("line, expected", [
    ("19980101-01-001-001/m  迈向/v  充满/v  希望/n", "迈向充满希望"),
    ("[中央/n  人民/n  广播/vn  电台/n]nt  和/c  [中国/ns  国际/n  广播/vn  电台/n]nt", "中央人民广播电台和中国国际广播电台"),
    ("使用/v  Windows/nx  98/m  系统/n", "使用Windows 98系统"),
    ("１/m  ／/w  ２/m", "１／２"),
    ("", ""),
])
def test_strip_pos_tags(line, expected):
    assert S.strip_pos_tags(line) == expected


def test_review_files():
    paths = S.review_paths()
    assert [p.name for p in paths] == ["pos.txt", "neg.txt"]
    items = list(S.iter_lines(str(paths[1]), 1_000_000))
    assert len(items) == 18576
    assert items[1].value == "小熊宝宝我觉得孩子不喜欢，能换别的吗"


def test_chatterbot_records_keep_line_numbers():
    path = next(p for p in S.chatterbot_paths("chinese") if p.name == "ai.yml")
    items = list(S.iter_chatterbot(str(path)))
    assert items[0] == S.Item(4, 1, "chat", [{"role": "user", "content": "什么是ai"},
                                             {"role": "assistant", "content": "人工智能是工程和科学的分支,致力于构建具有思维的机器。"}],
                              items[0].excerpt)
    assert items[1].line == 6 and items[1].value[1]["content"] == "Python"
    assert all(i.kind == "chat" and i.value[-1]["role"] == "assistant" for i in items)


def test_chatterbot_trailing_user_turn_dropped():
    assert S.chatterbot_to_chat(["a", "b", "c"]) == [{"role": "user", "content": "a"},
                                                     {"role": "assistant", "content": "b"}]
    assert S.chatterbot_to_chat(["only a question"]) == []


def test_builtin_source_selection():
    default = S.builtin_sources()
    names = {s.name for s in default}
    assert names == {"peoples_daily", "reviews", "chatterbot_chinese"}
    assert [s.pos_tagged for s in default if s.name == "peoples_daily"] == [True]
    assert {s.name for s in S.builtin_sources(sft_language="english")} == {"peoples_daily", "reviews",
                                                                             "chatterbot_english"}
    full = {s.name for s in S.builtin_sources(use_full_data=True)}
    assert full == {"peoples_daily", "reviews", "chatterbot_chinese", "chatterbot_english",
                    "chatterbot_chinese_text", "chatterbot_english_text"}
    kinds = {s.name: s.kind for s in S.builtin_sources(use_full_data=True)}
    assert kinds["chatterbot_english"] == "chat" and kinds["chatterbot_english_text"] == "text"


# --------------------------------------------------------------------------- jsonl details


def test_jsonl_positions_resume_exactly(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", [text_line(g) for g in GOOD[:5]])
    items = list(S.iter_jsonl(str(f), 10_000))
    assert [i.line for i in items] == [1, 2, 3, 4, 5]
    rest = list(S.iter_jsonl(str(f), 10_000, start_pos=items[1].pos, start_line=items[1].line))
    assert [(i.line, i.value) for i in rest] == [(i.line, i.value) for i in items[2:]]


def test_parse_record_kinds():
    conv = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好!"}]
    assert S.parse_record({"text": "x"}) == ("text", "x")
    assert S.parse_record({"conversations": conv}) == ("chat", conv)
    assert S.parse_record({"text": "x", "conversations": conv}) == ("text", "x")  # text wins
    assert S.parse_record({"body": "x"}, text_key="body") == ("text", "x")
    assert S.parse_record(3) == ("reject", "not_an_object")


def test_text_column_applies_to_jsonl(tmp_path):
    f = write_lines(tmp_path / "a.jsonl", [jline({"body": GOOD[0]}), jline({"text": GOOD[1]})])
    stats = run_cleaning(config(f, text_column="body"), tmp_path / "out")
    assert kept_texts(tmp_path / "out") == [cleaned(GOOD[0])]
    assert [(r["line"], r["reason"]) for r in rejects(tmp_path / "out")] == [(2, "missing_text")]
    assert stats["kept"]["train"] + stats["kept"]["val"] == 1


# --------------------------------------------------------------------------- txt / csv / parquet


def test_txt_blocks(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(("第一段第一行，内容比较长一些。\n第一段第二行，还是第一段。\n\n\n"
                   "第二段只有一行，但是也足够长。\n\n").encode() + b"bad \xff line\n" + "同一段里的好行，但整段作废。\n\n"
                  .encode() + "最后一段没有换行结尾，也要读到。".encode())
    items = _items(S.iter_txt(str(f), 10_000))
    assert items == [
        (1, "text", "第一段第一行，内容比较长一些。\n第一段第二行，还是第一段。"),
        (5, "text", "第二段只有一行，但是也足够长。"),
        (7, "reject", "invalid_utf8"),
        (10, "text", "最后一段没有换行结尾，也要读到。"),
    ]


def test_txt_block_over_limit_is_rejected(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n".join(["这是一行很长的文字内容"] * 50) + "\n\n最后一段文字内容。\n", encoding="utf-8")
    items = _items(S.iter_txt(str(f), 300))
    assert items == [(1, "reject", "line_too_long"), (52, "text", "最后一段文字内容。")]


def test_csv_with_text_column(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(("id,content\n1,\"" + GOOD[0] + "\"\n2,\"多行\n的文本内容，也要完整读出来。\"\n3\n").encode()
                  + b"4,\xff\xfe\n" + ("5," + GOOD[1] + "\n").encode())
    items = _items(S.iter_csv(str(f), "content", 10_000))
    assert items == [
        (2, "text", GOOD[0]),
        (3, "text", "多行\n的文本内容，也要完整读出来。"),
        (5, "reject", "missing_text"),
        (6, "reject", "invalid_utf8"),
        (7, "text", GOOD[1]),
    ]
    stats = run_cleaning(config(f, text_column="content"), tmp_path / "out")
    assert stats["rejected"] == {"missing_text": 1, "invalid_utf8": 1}
    assert len(kept_texts(tmp_path / "out")) == 3


def test_csv_missing_column_is_a_clear_error(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.csv: no column 'text'.*\['id', 'body'\]"):
        run_cleaning(config(f), tmp_path / "out")


def test_parquet_with_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"doc": [GOOD[0], None, GOOD[1], GOOD[2]], "n": [1, 2, 3, 4]}), f, row_group_size=2)
    items = _items(S.iter_parquet(str(f), "doc"))
    assert items == [(1, "text", GOOD[0]), (2, "reject", "missing_text"), (3, "text", GOOD[1]), (4, "text", GOOD[2])]
    assert _items(S.iter_parquet(str(f), "doc", start_pos=2)) == items[2:]
    with pytest.raises(ValueError, match=r"no column 'text'.*\['doc', 'n'\]"):
        list(S.iter_parquet(str(f), "text"))
    items = _items(S.iter_parquet(str(f), "n"))
    assert items[0] == (1, "reject", "text_not_string")
    stats = run_cleaning(config(f, text_column="doc"), tmp_path / "out")
    assert stats["kept"]["train"] + stats["kept"]["val"] == 3 and stats["rejected"] == {"missing_text": 1}


def test_user_yml_is_read_as_chat(tmp_path):
    f = tmp_path / "chat.yml"
    f.write_text("categories:\n- x\nconversations:\n- - 你好\n  - 你好呀\n- - 在吗\n", encoding="utf-8")
    stats = run_cleaning(config(f), tmp_path / "out")
    assert stats["kept"]["sft"] + stats["kept"]["sft_val"] == 1
    assert [(r["line"], r["reason"]) for r in rejects(tmp_path / "out")] == [(6, "no_assistant_turn")]


def test_file_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        S.file_source(tmp_path / "missing.jsonl")
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        S.file_source(tmp_path / "d.jsonl")
    src = S.file_source(write_lines(tmp_path / "ok.JSONL", [text_line("x")]))
    assert src.fmt == "jsonl" and src.kind is None


def test_csv_nul_byte_is_rejected_with_its_line(tmp_path):
    f = tmp_path / "n.csv"
    f.write_bytes(b'text\n"hello\x00world here"\nok line here fine\n')
    assert _items(S.iter_csv(str(f), "text", 1000)) == [(2, "reject", "nul_byte"), (3, "text", "ok line here fine")]


def test_csv_malformed_rows_are_rejected_with_their_lines(tmp_path):
    f = tmp_path / "s.csv"
    f.write_bytes(b'text\n"a"b" stray quote\n' + GOOD[0].encode() + b"\n" + b"x" * 200_000 + b'\n"unterminated\n')
    items = _items(S.iter_csv(str(f), "text", 1000))
    assert [(line, kind, v if kind == "reject" else "") for line, kind, v in items] == [
        (2, "reject", "invalid_csv"), (3, "text", ""), (4, "reject", "line_too_long"), (5, "reject", "invalid_csv")]
    stats = run_cleaning(config(f, max_line_bytes=1000), tmp_path / "out")
    assert [(r["line"], r["reason"]) for r in rejects(tmp_path / "out")] == [
        (2, "invalid_csv"), (4, "line_too_long"), (5, "invalid_csv")]
    assert kept_texts(tmp_path / "out") == [cleaned(GOOD[0])]
    assert stats["rejected"] == {"invalid_csv": 2, "line_too_long": 1}
