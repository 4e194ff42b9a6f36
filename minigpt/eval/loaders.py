"""Benchmarks in the layouts they are published in, read from a folder the user downloaded (nothing is fetched).

- C-Eval: per-subject `val/<subject>_val.csv` and `dev/<subject>_dev.csv` with the header
  `id,question,A,B,C,D,answer` (dev adds `explanation`); `*_test.csv` has no answers and is skipped.
- CMMLU: per-subject `test/<subject>.csv` and `dev/<subject>.csv` with the header `,Question,A,B,C,D,Answer`
  (the first column is an unnamed row index).
- JSONL: one `{"question": str, "choices": [str, ...], "answer": int | "A".. | the choice's text}` a line.

The dev split gives the k-shot examples for its subject. A malformed file or row is a ValueError naming the
file, the row and what was expected.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..data.jsonl import INVALID_UTF8, iter_json_lines
from .scoring import LETTERS, MCItem

logger = logging.getLogger(__name__)

CSV_OPTIONS = ("A", "B", "C", "D")
_LAYOUTS = "C-Eval: id,question,A,B,C,D,answer; CMMLU: ,Question,A,B,C,D,Answer"


@dataclass
class Benchmark:
    """One subject (or one JSONL file): the items to score, the k-shot pool, and how they read best."""

    name: str
    items: list[MCItem]
    shots: list[MCItem] = field(default_factory=list)
    style: str = "letters"  # letters for exam CSVs, cloze for JSONL
    kind: str = "csv"


def _columns(header: list[str], path: Path) -> dict[str, int]:
    lower = [h.strip().lower() for h in header]
    need = ["question"] + [o.lower() for o in CSV_OPTIONS]
    missing = [n for n in need if n not in lower]
    if missing:
        raise ValueError(f"{path}: row 1 (header) {header}: missing column(s) {missing}; expected {_LAYOUTS}")
    if "answer" not in lower:
        raise ValueError(f"{path}: row 1 (header) has no 'answer' column: a test split without answers "
                         f"(C-Eval's *_test.csv) cannot be scored; use *_val.csv")
    cols = {n: lower.index(n) for n in need + ["answer"]}
    cols["id"] = lower.index("id") if "id" in lower else (0 if lower[0] == "" else -1)
    return cols


def read_mc_csv(path: str | Path) -> list[MCItem]:
    """Items of a C-Eval or CMMLU per-subject CSV (the header tells which columns hold what)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    items: list[MCItem] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty file; expected a header row ({_LAYOUTS})")
        cols = _columns(header, path)
        for row_no, row in enumerate(reader, 2):
            if not any(c.strip() for c in row):
                continue
            where = f"{path}: row {row_no} (line {reader.line_num})"
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} fields, expected {len(header)} as in the header {header}")
            answer = row[cols["answer"]].strip().upper()
            if answer not in CSV_OPTIONS:
                raise ValueError(f"{where}: answer {row[cols['answer']]!r}: expected one of {', '.join(CSV_OPTIONS)}")
            question = row[cols["question"]].strip()
            if not question:
                raise ValueError(f"{where}: empty question")
            choices = [row[cols[o.lower()]].strip() for o in CSV_OPTIONS]
            item_id = row[cols["id"]].strip() if cols["id"] >= 0 else str(row_no - 1)
            items.append(MCItem(question, choices, CSV_OPTIONS.index(answer), id=item_id, source=f"{path.name}:{row_no}"))
    if not items:
        raise ValueError(f"{path}: no question rows after the header")
    return items


def _jsonl_answer(value, choices: list[str], where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: answer {value!r}: expected an index, a letter or one of the choices")
    if isinstance(value, int) and 0 <= value < len(choices):
        return value
    if isinstance(value, str):
        v = value.strip()
        if len(v) == 1 and v.upper() in LETTERS[:len(choices)]:
            return LETTERS.index(v.upper())
        if v in choices:
            return choices.index(v)
    raise ValueError(f"{where}: answer {value!r}: expected an index 0..{len(choices) - 1}, a letter "
                     f"{LETTERS[0]}..{LETTERS[len(choices) - 1]} or the text of one of the choices")


def read_mc_jsonl(path: str | Path) -> list[MCItem]:
    """Items of a JSONL file of {question, choices, answer} (chat items may add `messages`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    items = []
    for line in iter_json_lines(path):  # the package's JSONL reader (strict UTF-8, lines split on \n only)
        line_no = line.line
        where = f"{path}: line {line_no}"
        if not line.ok:
            what = "not UTF-8" if line.reason == INVALID_UTF8 else "not valid JSON"
            raise ValueError(f"{where}: {what} ({line.detail}); expected one {{question, choices, answer}} object a line")
        obj = line.value
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object {{question, choices, answer}}, got {type(obj).__name__}")
        missing = [k for k in ("question", "choices", "answer") if k not in obj]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; expected {{question, choices, answer}}")
        choices = obj["choices"]
        if (not isinstance(choices, list) or len(choices) < 2 or len(choices) > len(LETTERS)
                or not all(isinstance(c, str) and c for c in choices)):
            raise ValueError(f"{where}: choices: expected a list of 2..{len(LETTERS)} non-empty strings, got {choices!r}")
        if not isinstance(obj["question"], str):
            raise ValueError(f"{where}: question: expected a string, got {obj['question']!r}")
        messages = obj.get("messages") or []
        if not isinstance(messages, list):
            raise ValueError(f"{where}: messages: expected a list of {{role, content}}, got {messages!r}")
        items.append(MCItem(obj["question"], choices, _jsonl_answer(obj["answer"], choices, where),
                            id=str(obj.get("id", line_no)), source=f"{path.name}:{line_no}", messages=messages))
    if not items:
        raise ValueError(f"{path}: no items; expected one {{question, choices, answer}} object a line")
    return items


def _subject(path: Path) -> tuple[str, str]:
    """(subject, split) of a benchmark CSV: C-Eval names carry the split, CMMLU's folder does."""
    stem = path.stem
    for split in ("val", "dev", "test"):
        if stem.endswith(f"_{split}"):
            return stem[: -len(split) - 1], split
    parent = path.parent.name.lower()
    return stem, parent if parent in ("val", "dev", "test") else "test"


def load_benchmarks(path: str | Path, max_items: int = 0) -> list[Benchmark]:
    """Every benchmark under `path` (a folder searched recursively, or one .csv / .jsonl file)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"eval_data: {root} not found; expected a folder of C-Eval / CMMLU CSVs or JSONL files")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".csv", ".jsonl"))
    if not files:
        raise ValueError(f"eval_data: {root} holds no .csv or .jsonl files")
    out = [Benchmark(p.stem, read_mc_jsonl(p), style="cloze", kind="jsonl") for p in files if p.suffix == ".jsonl"]
    splits: dict[str, dict[str, Path]] = {}
    for p in (p for p in files if p.suffix == ".csv"):
        subject, split = _subject(p)
        splits.setdefault(subject, {})[split] = p
    for subject, by_split in sorted(splits.items()):
        target = by_split.get("val") or by_split.get("test") or by_split.get("dev")
        kind = "ceval" if target.stem.endswith(("_val", "_dev", "_test")) else "cmmlu"
        if target.stem.endswith("_test") and "val" not in by_split:
            logger.warning("%s: C-Eval's test split has no answers; skipped (use %s_val.csv)", target, subject)
            continue
        shots = read_mc_csv(by_split["dev"]) if "dev" in by_split and by_split["dev"] != target else []
        out.append(Benchmark(subject, read_mc_csv(target), shots, style="letters", kind=kind))
    for b in out:
        if max_items:
            b.items = b.items[:max_items]
    return out
