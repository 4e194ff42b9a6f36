"""Notebook 04's glue: a pretrained checkpoint + chat JSONL -> masked ChatML examples -> the same Trainer."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from .checkpoint import load_checkpoint
from .chat_data import ChatBatches, build_chat_example, pad_examples
from .params import Params
from .pretrain import _jsonable, train_config_from_params
from .trainer import Trainer

logger = logging.getLogger(__name__)


def read_conversations(path: str | Path) -> list[list[dict]]:
    """Conversations from a chat JSONL file (minimind format); malformed lines are reported and skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebooks/01_data_clean first (it writes the chat data)")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                conv = json.loads(line)["conversations"]
            except (ValueError, KeyError, TypeError) as e:
                logger.warning("%s:%d: skipped, expected {\"conversations\": [...]} (%s)", path, lineno, e)
                continue
            out.append(conv)
    return out


def build_examples(tokenizer, conversations: list[list[dict]], max_len: int) -> tuple[list, dict[str, int]]:
    """ChatML examples with assistant-only labels, and counts of what truncation did."""
    examples, counts = [], {"kept": 0, "truncated": 0, "dropped_too_long": 0}
    for conv in conversations:
        ex = build_chat_example(tokenizer, conv, max_len)
        if ex is None:
            counts["dropped_too_long"] += 1
            continue
        counts["kept"] += 1
        counts["truncated"] += int(ex.truncated)
        examples.append(ex)
    return examples, counts


def build_sft_trainer(P: Params, callbacks: Iterable[Any] = (), rank: int = 0, world_size: int = 1) -> tuple[Trainer, dict[str, Any]]:
    paths = P.paths
    ckpt_dir = Path(P.pretrained_checkpoint) if P.pretrained_checkpoint else paths["pretrain"] / "final_model"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} not found: run notebooks/03_pretrain first (or set pretrained_checkpoint)")
    model, tokenizer, model_cfg = load_checkpoint(ckpt_dir)
    cfg = train_config_from_params(P)
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    train_convs = read_conversations(paths["data"] / "sft.jsonl")
    val_path = paths["data"] / "sft_val.jsonl"
    val_convs = read_conversations(val_path) if val_path.is_file() else []
    train_ex, train_counts = build_examples(tokenizer, train_convs, seq_len)
    val_ex, _ = build_examples(tokenizer, val_convs, seq_len)
    if not val_ex:  # tiny corpora: hold out a few training conversations rather than evaluate on nothing
        val_ex, train_ex = train_ex[: max(1, len(train_ex) // 20)], train_ex[max(1, len(train_ex) // 20):]
    batches = ChatBatches(train_ex, cfg.batch_size, tokenizer.pad_id, seed=cfg.seed, rank=rank, world_size=world_size)
    eval_batches = [pad_examples(val_ex[i:i + cfg.batch_size], tokenizer.pad_id) for i in range(0, len(val_ex), cfg.batch_size)]
    output_dir = Path(cfg.output_dir) if cfg.output_dir else paths["sft"]
    trainer = Trainer(
        model, cfg, batches, eval_batches, output_dir,
        tokenizer=tokenizer, tokenizer_dir=ckpt_dir, callbacks=callbacks, kind="sft",
        extra_config=_jsonable(P), rank=rank, world_size=world_size,
    )
    info = {"checkpoint": str(ckpt_dir), "train_examples": len(train_ex), "val_examples": len(val_ex), **train_counts}
    return trainer, info
