"""A built-in benchmark on which a small model visibly learns: cloze items from the run's held-out split.

Text items (from `data/val.jsonl`): the first `prefix_chars` characters of a val document; its true
continuation (up to the end of that sentence, `min_chars`..`max_chars` characters); three distractors, the
continuations at the same offset of other val documents, chosen among those closest in length to the true one.
Chat items (from `data/sft_val.jsonl`): a held-out dialogue up to its last assistant turn; that reply, and
three replies closing other held-out dialogues, closest in length.

A model that has learnt nothing scores about 1/4; one that learnt the language's local structure picks the
continuation that fits the prefix. Items are deterministic given the seed and written once to
`runs/<run>/eval/cloze.jsonl` (and `cloze_chat.jsonl`), beside a `.meta.json` naming how they were made.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_write_json, atomic_write_text
from ..data.jsonl import iter_json_lines
from .loaders import read_mc_jsonl
from .scoring import MCItem

logger = logging.getLogger(__name__)

SENTENCE_END = "。！？!?；;"
N_CHOICES = 4
CANDIDATES = 8  # distractors are drawn from this many candidates closest in length


def _continuation(text: str, start: int, min_chars: int, max_chars: int) -> str:
    """text[start:end]: up to the first sentence end at least min_chars in, else max_chars."""
    window = text[start:start + max_chars]
    for i, ch in enumerate(window):
        if i + 1 >= min_chars and ch in SENTENCE_END:
            return window[:i + 1]
    return window


def _pick_distractors(true: str, pool: Sequence[str], rng: random.Random) -> list[str]:
    """Three distinct texts from `pool`, none equal to `true`, among the CANDIDATES closest to it in length."""
    unique = sorted({p for p in pool if p != true})
    rng.shuffle(unique)  # ties in length are broken by the seed, not by the text
    unique.sort(key=lambda p: abs(len(p) - len(true)))
    return rng.sample(unique[:CANDIDATES], N_CHOICES - 1)


def _item(question: str, true: str, distractors: list[str], rng: random.Random, item_id: str, source: str,
          messages: list[dict] | None = None) -> MCItem:
    choices = distractors + [true]
    rng.shuffle(choices)
    return MCItem(question, choices, choices.index(true), id=item_id, source=source, messages=messages or [])


def _read_jsonl(path: Path, key: str) -> list[tuple[int, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; notebook 01 writes it (the held-out split)")
    out = []
    for line in iter_json_lines(path):  # the package's JSONL reader (strict UTF-8, lines split on \n only)
        if not line.ok:
            raise ValueError(f"{path}: line {line.line}: {line.reason} ({line.detail}); expected a JSON object with {key!r}")
        if not isinstance(line.value, dict) or key not in line.value:
            raise ValueError(f"{path}: line {line.line}: expected a JSON object with {key!r}")
        out.append((line.line, line.value[key]))
    return out


def text_cloze(val_path: str | Path, n_items: int = 200, seed: int = 0, prefix_chars: int = 32,
               min_chars: int = 8, max_chars: int = 32) -> list[MCItem]:
    """Cloze items from a JSONL of {"text"} documents (see the module docstring)."""
    path = Path(val_path)
    docs = [(n, t.strip()) for n, t in _read_jsonl(path, "text") if isinstance(t, str)]
    docs = [(n, t) for n, t in docs if len(t) >= prefix_chars + min_chars]
    if len(docs) < N_CHOICES:
        raise ValueError(f"{path}: {len(docs)} documents of at least {prefix_chars + min_chars} characters; "
                         f"the cloze needs {N_CHOICES} (lower cloze_prefix_chars, or hold out more data)")
    rng = random.Random(seed)
    conts = [_continuation(t, prefix_chars, min_chars, max_chars) for _, t in docs]
    order = rng.sample(range(len(docs)), min(n_items, len(docs)))
    items = []
    for k in order:
        line, text = docs[k]
        pool = [c for j, c in enumerate(conts) if j != k]
        if len(set(pool) - {conts[k]}) < N_CHOICES - 1:
            continue
        items.append(_item(text[:prefix_chars], conts[k], _pick_distractors(conts[k], pool, rng), rng,
                           f"val-{line}", f"{path.name}:{line}"))
    return items


def chat_cloze(sft_val_path: str | Path, n_items: int = 200, seed: int = 0) -> list[MCItem]:
    """Cloze items from held-out dialogues: the reply that closes each one against other dialogues' replies."""
    path = Path(sft_val_path)
    dialogues = []
    for n, conv in _read_jsonl(path, "conversations"):
        last = max((i for i, m in enumerate(conv) if isinstance(m, dict) and m.get("role") == "assistant"), default=None)
        if last:
            dialogues.append((n, conv[:last], str(conv[last].get("content", "")).strip()))
    dialogues = [d for d in dialogues if d[2]]
    if len(dialogues) < N_CHOICES:
        raise ValueError(f"{path}: {len(dialogues)} dialogues with an assistant reply; the chat cloze needs {N_CHOICES}")
    rng = random.Random(seed)
    order = rng.sample(range(len(dialogues)), min(n_items, len(dialogues)))
    items = []
    for k in order:
        line, context, reply = dialogues[k]
        pool = [d[2] for j, d in enumerate(dialogues) if j != k]
        if len(set(pool) - {reply}) < N_CHOICES - 1:
            continue
        items.append(_item(context[-1]["content"], reply, _pick_distractors(reply, pool, rng), rng,
                           f"sft_val-{line}", f"{path.name}:{line}", messages=context))
    return items


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_items(items: Sequence[MCItem], path: str | Path, meta: dict[str, Any]) -> Path:
    """The items as JSONL {id, question, choices, answer[, messages]} (what read_mc_jsonl and lm-eval read)."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(i.to_json(), ensure_ascii=False) + "\n" for i in items))
    atomic_write_json(path.with_suffix(".meta.json"), meta)
    return path


def ensure_cloze(run_dir: str | Path, chat: bool = False, n_items: int = 200, seed: int = 0, prefix_chars: int = 32,
                 min_chars: int = 8, max_chars: int = 32) -> Path | None:
    """runs/<run>/eval/cloze.jsonl (or cloze_chat.jsonl), made once; remade only when its source or settings change.
    None when the run has no held-out split to make it from."""
    run_dir = Path(run_dir)
    source = run_dir / "data" / ("sft_val.jsonl" if chat else "val.jsonl")
    out = run_dir / "eval" / ("cloze_chat.jsonl" if chat else "cloze.jsonl")
    if not source.is_file():
        logger.info("%s: not found; no %s cloze for this run", source, "chat" if chat else "text")
        return None
    meta = {"source": source.name, "source_sha256": _sha256(source), "seed": seed, "n_items": n_items}
    if not chat:
        meta.update(prefix_chars=prefix_chars, min_chars=min_chars, max_chars=max_chars)
    meta_path = out.with_suffix(".meta.json")
    if out.is_file() and meta_path.is_file():
        if json.loads(meta_path.read_text(encoding="utf-8")) == meta:
            return out
        logger.warning("%s: made from another source or with other settings; writing it again", out)
    items = (chat_cloze(source, n_items, seed) if chat
             else text_cloze(source, n_items, seed, prefix_chars, min_chars, max_chars))
    logger.info("wrote %d cloze items to %s", len(items), out)
    return write_items(items, out, meta)


def load_cloze(path: str | Path) -> list[MCItem]:
    return read_mc_jsonl(path)
