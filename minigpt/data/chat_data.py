"""SFT examples: conversations rendered with the tokenizer's ChatML template, labels on assistant replies only.

Like the window sampler, ChatBatches is a deterministic function of (seed, position), so resume is exact.

Batches are ``(x, y)`` or, with packing, ``(x, y, extras)`` where ``extras`` holds the model's keyword
arguments ``attn_mask`` (B, 1, T, T) bool, True = may attend, block-diagonal causal: a token sees only
earlier tokens of its own conversation) and ``positions`` (B, T) (RoPE positions restarting at 0 for
every conversation). A packed conversation therefore gets exactly the logits it would get alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .datasets import IGNORE_INDEX, IndexedBatches

if TYPE_CHECKING:
    from .tokenizer import MiniTokenizer


@dataclass
class ChatExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def build_chat_example(tokenizer: MiniTokenizer, messages: list[dict], max_len: int) -> ChatExample | None:
    """Render one conversation with the tokenizer's ChatML template; labels only on assistant replies.

    Labels are shifted later by the model's next-token loss: here label[i] is the target for input[i],
    i.e. ids shifted by one, with IGNORE_INDEX wherever the *predicted* token is not an assistant target.
    A conversation longer than max_len+1 tokens is cut at the last turn boundary that fits; if not even
    the first assistant reply fits, the conversation is dropped (None) rather than kept without labels.
    """
    segments = tokenizer.chat_segments(messages)
    ids: list[int] = []
    target: list[bool] = []
    boundaries = []  # token counts at the end of each assistant reply: legal cut points
    for seg_ids, is_target in segments:
        ids.extend(seg_ids)
        target.extend([is_target] * len(seg_ids))
        if is_target:
            boundaries.append(len(ids))
    truncated = False
    if len(ids) > max_len + 1:
        fitting = [b for b in boundaries if b <= max_len + 1]
        if not fitting:
            return None
        cut = fitting[-1]
        ids, target = ids[:cut], target[:cut]
        truncated = True
    if not any(target[1:]):
        return None
    x = ids[:-1]
    y = [tok if is_t else IGNORE_INDEX for tok, is_t in zip(ids[1:], target[1:])]
    return ChatExample(x, y, truncated)


class ChatBatches(IndexedBatches):
    """Shuffled, padded batches of chat examples; position-addressable like WindowSampler."""

    def __init__(self, examples: list[ChatExample], batch_size: int, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pack: bool = False, seq_len: int | None = None):
        if not examples:
            raise ValueError("no chat examples to train on (all conversations empty, or longer than max_seq_len)")
        if pack and not seq_len:
            raise ValueError("packing needs seq_len (the row length conversations are packed into)")
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pack = pack
        self.seq_len = seq_len or max(len(e.input_ids) for e in examples)
        self.position = 0
        self._rows_cache: dict[int, list[list[int]]] = {}  # epoch -> rows of example indices (epoch 0 + current)

    def _rows(self, epoch: int) -> list[list[int]]:
        """This epoch's rows: one example each, or (packing) consecutive examples of the shuffled order
        filled greedily up to seq_len tokens."""
        if epoch in self._rows_cache:
            return self._rows_cache[epoch]
        order = [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))]
        if not self.pack:
            rows = [[i] for i in order]
        else:
            rows, row, used = [], [], 0
            for i in order:
                n = len(self.examples[i].input_ids)
                if row and used + n > self.seq_len:
                    rows.append(row)
                    row, used = [], 0
                row.append(i)
                used += n
            if row:
                rows.append(row)
        self._rows_cache = {e: r for e, r in self._rows_cache.items() if e == 0}
        self._rows_cache[epoch] = rows
        return rows

    def batch_at(self, index: int) -> tuple:
        """Batch number ``index``: (x, y), or (x, y, extras) when packing; a pure function of the index."""
        per_epoch = max(1, len(self._rows(0)) // (self.batch_size * self.world_size))
        epoch, k = divmod(index, per_epoch)
        rows = self._rows(epoch)
        start = (k * self.world_size + self.rank) * self.batch_size
        picked = [[self.examples[i] for i in rows[(start + j) % len(rows)]] for j in range(self.batch_size)]
        if self.pack:
            return pack_examples(picked, self.pad_id)
        return pad_examples([r[0] for r in picked], self.pad_id)

    def state_dict(self) -> dict:
        return {"kind": "chat", "seed": self.seed, "position": self.position, "batch_size": self.batch_size, "pack": self.pack}


def pad_examples(examples: list[ChatExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        x[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        y[i, :len(e.labels)] = torch.tensor(e.labels)
    return x, y


def pack_examples(rows: list[list[ChatExample]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Several conversations per row: (x, y, {"attn_mask", "positions"}).

    attn_mask is block-diagonal causal (a token attends to earlier tokens of its own conversation only);
    positions restart at 0 for each conversation. Padding is a segment of its own (labels IGNORE_INDEX),
    so every query still has at least one key to attend to.
    """
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    B = len(rows)
    x = torch.full((B, width), pad_id, dtype=torch.long)
    y = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
    seg = torch.full((B, width), -1, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    for b, row in enumerate(rows):
        at = 0
        for s, e in enumerate(row):
            n = len(e.input_ids)
            x[b, at:at + n] = torch.tensor(e.input_ids)
            y[b, at:at + n] = torch.tensor(e.labels)
            seg[b, at:at + n] = s
            pos[b, at:at + n] = torch.arange(n)
            at += n
        pos[b, at:] = torch.arange(width - at)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    return x, y, {"attn_mask": mask.unsqueeze(1), "positions": pos}
