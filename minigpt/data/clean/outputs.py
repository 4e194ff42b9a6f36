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
    """When the hash split left a val file empty but its train file has two or more records, move the last
    train record to val (appended first, then cut from train), so evaluation always has something.
    Counted in stats["moved_to_val"]."""
    if not stats.get("config", {}).get("val_fraction", 1.0):
        return  # val_fraction=0: no val split asked for
    for train, val, kind in _PAIRS:
        if stats["kept"][val] or stats["kept"][train] < 2 or not files[train].is_file():
            continue
        start, line = _last_line(files[train])
        with open(files[val], "ab") as f:
            f.write(line if line.endswith(b"\n") else line + b"\n")
        os.truncate(files[train], start)
        obj = json.loads(line)
        nchars = len(obj["text"]) if kind == "text" else sum(len(t["content"]) for t in obj["conversations"])
        stats["kept"][train] -= 1
        stats["kept"][val] += 1
        stats["chars"][train] -= nchars
        stats["chars"][val] += nchars
        stats["moved_to_val"] = stats.get("moved_to_val", 0) + 1
        logger.info("the hash split left %s empty: moved the last of %s's records there", val, train)


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
