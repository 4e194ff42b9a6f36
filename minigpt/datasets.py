"""Batches for training: random windows over a token memmap (pretrain) and masked chat examples (SFT).

Both samplers are deterministic functions of (seed, position), so their state is two integers and
resume continues the exact stream of batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class WindowSampler:
    """Random (x, y) windows of `seq_len` tokens from a flat token array (seed 004's get_batch).

    Batch i is drawn from a generator seeded with (seed, i, rank): any batch can be recomputed from its
    index alone, so saving `position` is enough to resume, and each DDP rank reads its own windows.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(tokens) <= seq_len + 1:
            raise ValueError(f"token file holds {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}; use more data or a shorter seq_len")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = 0

    def batch_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index, self.rank])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        buf = np.stack([np.asarray(self.tokens[s:s + self.seq_len + 1], dtype=np.int64) for s in starts])
        t = torch.from_numpy(buf)
        return t[:, :-1], t[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"kind": "windows", "seed": self.seed, "position": self.position, "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.position = int(state["position"])


def sequential_windows(tokens: np.ndarray, batch_size: int, seq_len: int, num_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evenly spaced, fixed windows for evaluation: the same batches every eval, so curves are comparable."""
    n = len(tokens) - seq_len - 1
    if n <= 0:
        raise ValueError(f"validation tokens ({len(tokens)}) are fewer than seq_len+1={seq_len + 1}")
    total = batch_size * num_batches
    starts = np.linspace(0, n, num=total, dtype=np.int64) if total > 1 else np.array([0])
    out = []
    for b in range(num_batches):
        chunk = starts[b * batch_size:(b + 1) * batch_size]
        if len(chunk) == 0:
            break
        buf = torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in chunk]))
        out.append((buf[:, :-1], buf[:, 1:]))
    return out


@dataclass
class ChatExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def build_chat_example(tokenizer, messages: list[dict], max_len: int) -> ChatExample | None:
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


class ChatBatches:
    """Shuffled, padded batches of chat examples; position-addressable like WindowSampler."""

    def __init__(self, examples: list[ChatExample], batch_size: int, pad_id: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not examples:
            raise ValueError("no chat examples to train on (all conversations empty, or longer than max_seq_len)")
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = 0

    def batch_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_epoch = max(1, len(self.examples) // (self.batch_size * self.world_size))
        epoch, k = divmod(index, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
        start = (k * self.world_size + self.rank) * self.batch_size
        picked = [self.examples[int(order[(start + j) % len(order)])] for j in range(self.batch_size)]
        return pad_examples(picked, self.pad_id)

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"kind": "chat", "seed": self.seed, "position": self.position, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.position = int(state["position"])


def pad_examples(examples: list[ChatExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        x[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        y[i, :len(e.labels)] = torch.tensor(e.labels)
    return x, y
