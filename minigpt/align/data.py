"""Pair batches for the Trainer: chosen and rejected rows sharing the prompt, labels on the final reply only.

A batch of B pairs is ``(x, y, extras)`` with 2B right-padded rows: rows 0..B-1 the chosen conversations,
rows B..2B-1 the rejected ones, in the same pair order. Both render through ``build_chat_example`` (the
tokenizer's ChatML template, as SFT); the labels keep only the final assistant reply and its ``<|im_end|>``:
earlier assistant turns belong to the shared prompt. ``extras["ref_logps"]`` (2B,) holds the reference
model's cached log-probs of the same rows (reference.py), so the reference model is not needed while training.

``PairBatches`` meets minigpt.train.batches.BatchSource: batch i is a pure function of (seed, i) (a shuffled
order per epoch from a generator seeded with (seed, epoch)), so exact resume only needs ``position``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..data.chat_data import ChatExample, build_chat_example, pad_examples
from ..data.datasets import IGNORE_INDEX, IndexedBatches
from .pairs import PreferencePair


@dataclass
class EncodedPair:
    """A pair as tokens: the chosen and rejected examples and the key its cached reference log-probs live under."""

    chosen: ChatExample
    rejected: ChatExample
    key: str  # sha256 of both sides' tokens and labels

    def __len__(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


def pair_key(chosen: ChatExample, rejected: ChatExample) -> str:
    h = hashlib.sha256()
    for ex in (chosen, rejected):
        h.update(np.asarray(ex.input_ids, dtype=np.int64).tobytes() + b"|" + np.asarray(ex.labels, dtype=np.int64).tobytes() + b"#")
    return h.hexdigest()


def _reply_only(tokenizer, pair: PreferencePair, side: str, max_len: int) -> ChatExample | None:
    ex = build_chat_example(tokenizer, pair.messages(side), max_len)
    if ex is None or ex.truncated:  # a cut would drop the final reply itself
        return None
    n_prompt = len(tokenizer.apply_chat_template(pair.prompt_messages(), add_generation_prompt=True))
    labels = [IGNORE_INDEX] * (n_prompt - 1) + ex.labels[n_prompt - 1:]
    return ChatExample(ex.input_ids, labels)


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_len: int) -> tuple[list[EncodedPair], list[PreferencePair], int]:
    """(encoded pairs, the pairs they came from, how many were dropped because a side is longer than max_len+1 tokens)."""
    out, kept, dropped = [], [], 0
    for p in pairs:
        c, r = _reply_only(tokenizer, p, "chosen", max_len), _reply_only(tokenizer, p, "rejected", max_len)
        if c is None or r is None:
            dropped += 1
            continue
        out.append(EncodedPair(c, r, pair_key(c, r)))
        kept.append(p)
    return out, kept, dropped


def pad_pairs(pairs: list[EncodedPair], pad_id: int, ref_logps: torch.Tensor | None = None) -> tuple:
    """(x, y, extras): chosen rows then rejected rows, right-padded; extras["ref_logps"] when given (2B,)."""
    x, y = pad_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    return (x, y, {} if ref_logps is None else {"ref_logps": ref_logps})


class PairBatches(IndexedBatches):
    """Shuffled batches of ``batch_size`` pairs (2*batch_size rows); rank r of world_size takes its own share."""

    def __init__(self, pairs: list[EncodedPair], ref_logps: torch.Tensor, batch_size: int, pad_id: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not pairs:
            raise ValueError("no preference pairs to train on (all invalid, or longer than the model's context)")
        if ref_logps.shape != (len(pairs), 2):
            raise ValueError(f"ref_logps: expected shape ({len(pairs)}, 2), got {tuple(ref_logps.shape)}")
        self.pairs, self.ref_logps = pairs, ref_logps
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.rank, self.world_size = rank, world_size
        self.seq_len = max(len(p) for p in pairs)
        self.position = 0

    def batch_at(self, index: int) -> tuple:
        per_epoch = max(1, len(self.pairs) // (self.batch_size * self.world_size))
        epoch, k = divmod(index, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        start = (k * self.world_size + self.rank) * self.batch_size
        picked = [int(order[(start + j) % len(order)]) for j in range(self.batch_size)]
        ref = torch.cat([self.ref_logps[picked, 0], self.ref_logps[picked, 1]])
        return pad_pairs([self.pairs[i] for i in picked], self.pad_id, ref)

    def state_dict(self) -> dict:
        return {"kind": "pairs", "seed": self.seed, "position": self.position, "batch_size": self.batch_size}


def eval_batches(pairs: list[EncodedPair], ref_logps: torch.Tensor, batch_size: int, pad_id: int) -> list[tuple]:
    """Held-out pairs in order, batch_size pairs a batch, each with its reference log-probs."""
    out = []
    for i in range(0, len(pairs), batch_size):
        ref = ref_logps[i:i + batch_size]
        out.append(pad_pairs(pairs[i:i + batch_size], pad_id, torch.cat([ref[:, 0], ref[:, 1]])))
    return out
