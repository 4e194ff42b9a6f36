"""SFT examples: conversations rendered with the tokenizer's ChatML template, labels on assistant replies only.

Like the window sampler, ChatBatches is a deterministic function of (seed, position), so resume is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .datasets import IGNORE_INDEX

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
