"""Helpers shared by test_clean.py and test_sources.py (tiny real inputs, real malformed bytes)."""

from __future__ import annotations

import json
from pathlib import Path

from minigpt.data.clean import STEPS, CleanConfig, Cleaner

# Distinct, ordinary sentences: each passes every filter and none is a near duplicate of another.
GOOD = [
    "今天天气很好，我们一起去公园散步，顺便买了一些新鲜的水果。",
    "这本书讲述了一个普通人在大城市里努力工作、追求梦想的故事。",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "北京的冬天很冷，但是屋子里有暖气，所以并不觉得难受。",
    "酒店的位置很方便，离地铁站只有五分钟的路程，服务也很周到。",
    "他每天早上六点起床跑步，坚持了整整三年，身体越来越健康。",
    "新华社记者报道，今年全国粮食产量再创新高，农民收入稳步增长。",
    "Machine learning models need clean data, careful evaluation and patience.",
    "这家餐厅的菜味道不错，价格也实惠，就是周末排队的人太多了。",
    "孩子们在操场上踢足球，老师站在一旁微笑着看着他们。",
    "我买的这台电脑运行速度很快，屏幕清晰，电池续航也让人满意。",
    "长江是中国最长的河流，流经十一个省份，最后注入东海。",
]

# A longer document and a copy with two characters changed (Jaccard of 5-gram shingles ~0.85).
LONG = ("春节是中国最重要的传统节日，人们在这一天贴春联、放鞭炮、吃饺子，全家人团聚在一起，"
        "共同迎接新一年的到来。各地的庙会热闹非凡，到处都是欢声笑语。")
LONG_NEAR = LONG.replace("放鞭炮", "放烟花")


def jline(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def text_line(text: str) -> bytes:
    return jline({"text": text})


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def config(*files: Path, **kw: object) -> CleanConfig:
    return CleanConfig(data_files=[str(f) for f in files], progress=False, **kw)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def kept_texts(out: Path) -> list[str]:
    return [r["text"] for r in read_jsonl(out / "train.jsonl") + read_jsonl(out / "val.jsonl")]


def rejects(out: Path) -> list[dict]:
    return read_jsonl(out / "rejects.jsonl")


def assert_accounted(stats: dict) -> None:
    """Every record read is kept, rejected or skipped over the cap; nothing else."""
    assert stats["records"] == sum(stats["kept"].values()) + stats["rejected_total"] + stats["over_cap"]
    assert stats["rejected_total"] == sum(stats["rejected"].values())


def cleaned(text: str, **kw: object) -> str:
    """What the default cleaning steps make of ``text`` (e.g. '，' -> ',')."""
    return Cleaner(CleanConfig(**kw), {k: 0 for k in STEPS}).normalize(text)
