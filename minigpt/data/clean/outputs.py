"""What a cleaning run hands to the next notebooks: a val split whenever there are two documents, and a
plain statement of what 02, 03 and 04 will do with the data (pretraining text only, dialogues only, both,
or too little)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

_PAIRS = (("train", "val", "text"), ("sft", "sft_val", "chat"))


def _last_line(path: Path) -> tuple[int, bytes]:
    """(offset where the file's last line starts, that line)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        back = min(size, 1 << 16)
        while True:
            f.seek(size - back)
            tail = f.read(back)
            cut = tail.rstrip(b"\n").rfind(b"\n")
            if cut >= 0 or back == size:
                start = size - back + cut + 1
                return start, tail[cut + 1:]
            back = min(size, back * 4)


def ensure_val_split(files: dict[str, Path], stats: dict) -> None:
    """When the hash split left one side of a pair empty and the other has two or more records, move the other's
    last record over (appended first, then cut from its file): evaluation always has something, and a few held-out
    dialogues never leave nothing to train on. Counted in stats["moved_to_val"] / stats["moved_to_train"]. A fraction
    of 0 (val_fraction, sft_val_fraction) asks for no split and is respected."""
    config = stats.get("config", {})
    for train, val, kind in _PAIRS:
        if not config.get("val_fraction" if kind == "text" else "sft_val_fraction", 1.0):
            continue
        for src, dst, counter in ((train, val, "moved_to_val"), (val, train, "moved_to_train")):
            if stats["kept"][dst] or stats["kept"][src] < 2 or not files[src].is_file():
                continue
            _move_last_record(files, stats, src, dst, kind)
            stats[counter] = stats.get(counter, 0) + 1
            logger.info("the hash split left %s empty: moved the last of %s's records there", dst, src)


def _move_last_record(files: dict[str, Path], stats: dict, src: str, dst: str, kind: str) -> None:
    start, line = _last_line(files[src])
    with open(files[dst], "ab") as f:
        f.write(line if line.endswith(b"\n") else line + b"\n")
    os.truncate(files[src], start)
    obj = json.loads(line)
    nchars = len(obj["text"]) if kind == "text" else sum(len(t["content"]) for t in obj["conversations"])
    stats["kept"][src] -= 1
    stats["kept"][dst] += 1
    stats["chars"][src] -= nchars
    stats["chars"][dst] += nchars


def data_plan(stats: dict) -> str:
    """What the next notebooks will do with this data, and what to do when something is missing."""
    k = stats["kept"]
    lines = []
    if k["train"] + k["val"] == 0:
        lines.append("No pretraining documents ({\"text\": ...} lines, .txt, csv, parquet): 02 trains the tokenizer "
                     "on the dialogues alone and 03 has nothing to pretrain on. Add documents to data_files, or "
                     "set data_files=[] for the built-in corpora.")
    elif k["val"] == 0:
        lines.append(f"Only {k['train']} pretraining document: no val split, so 03 cannot evaluate. Add documents "
                     "(two are enough for one in each split) or raise val_fraction.")
    else:
        lines.append(f"Pretraining: {k['train']} train and {k['val']} val documents for 02 and 03.")
    if k["sft"] + k["sft_val"] == 0:
        lines.append("No dialogues ({\"conversations\": [...]} lines): 04 will be skipped unless its chat_source "
                     "names them (chinese / english / both for the built-in dialogues, or a chat .jsonl file).")
    else:
        lines.append(f"Chat: {k['sft']} train and {k['sft_val']} val dialogues for 04 (chat_source='run').")
    return "\n".join(lines)
