"""The decode loop: prefill the prompts once, then one new token per row a step.

Both the prefill and the decode step are the model's own forward over a `KVCache`
(`GPT.forward(cache=...)`); on a CPU the C step of native_decode.py may take the decode step instead
(same math, one call a step). Prompts of different lengths are left-padded: pad slots are masked out
and each row's positions count from its first real token, so a row decodes exactly as it would
alone. A row that finishes leaves the batch and the cache at once, so it costs nothing afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch

from ..model.gpt import GPT, KVCache
from .native_decode import NativeDecoder
from .sampling import Sampler


class _Row(Protocol):
    def push(self, tok: int) -> bool: ...


@dataclass
class Batch:
    """Row bookkeeping of a decoding batch, one entry per batch slot."""

    rows: list[int]  # the caller's row index
    positions: list[int]  # the position of the slot's next token
    pads: list[int]  # left-padding slots at the start of the slot's cache row, never attended to

    @classmethod
    def left_padded(cls, lens: Sequence[int]) -> "Batch":
        """Prompts of these lengths, right-aligned in one (B, max(lens)) block."""
        T = max(lens)
        return cls(list(range(len(lens))), list(lens), [T - n for n in lens])

    def keep(self, slots: Sequence[int], cache: KVCache) -> None:
        """Only `slots` stay (finished rows leave); the cache drops the same rows."""
        cache.select(torch.tensor(list(slots), device=cache.keys[0].device))
        self.rows = [self.rows[b] for b in slots]
        self.positions = [self.positions[b] for b in slots]
        self.pads = [self.pads[b] for b in slots]

    def advance(self) -> None:
        self.positions = [p + 1 for p in self.positions]


@contextmanager
def _eval_mode(model: GPT) -> Iterator[None]:
    """No dropout in generation, and the caller's train/eval mode back after each forward (so it is
    never changed across a streamed `yield`)."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _prefill_mask(lens: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """attn_mask (B, 1, T, T) and positions (B, T) of a left-padded block of prompts."""
    T = max(lens)
    valid = torch.zeros((len(lens), T), dtype=torch.bool, device=device)
    for r, n in enumerate(lens):
        valid[r, T - n:] = True
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    causal = torch.ones((T, T), dtype=torch.bool, device=device).tril()
    # The diagonal keeps pad queries from attending to nothing (a NaN softmax); their outputs are unused.
    mask = (causal & valid[:, None, None, :]) | torch.eye(T, dtype=torch.bool, device=device)
    return mask, positions


def prefill(model: GPT, prompts: Sequence[Sequence[int]], pad_id: int, budget: int
            ) -> tuple[torch.Tensor, KVCache, Batch]:
    """Run the prompts through `model` into a new cache with room for `budget` more tokens.

    Returns float32 logits (B, V) of each prompt's last token, the cache and the batch's rows.
    A prompt repeated in the batch (GRPO samples a group of replies to each) is run once and its keys, values and
    logits are copied to its rows: prefill is most of a rollout's cost (64 prompts x 8 samples: 8x less work)."""
    lens = [len(p) for p in prompts]
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(p), len(first)) for p in prompts]
    if len(first) < len(prompts):
        logits, cache, _ = prefill(model, list(first), pad_id, budget)
        rows = torch.tensor(index, device=logits.device)
        cache.select(rows)
        return logits[rows], cache, Batch.left_padded(lens)
    weight = model.embed_tokens.weight
    T = max(lens)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(list(p), dtype=torch.long)
    ids = ids.to(weight.device)
    cache = KVCache.empty(model.config, len(prompts), T + budget, weight.device, weight.dtype)
    mask, positions = _prefill_mask(lens, weight.device) if min(lens) != T else (None, None)
    with _eval_mode(model):
        logits, _ = model(ids, attn_mask=mask, positions=positions, cache=cache, last_only=True)
    return logits[:, -1].float(), cache, Batch.left_padded(lens)


def model_step(model: GPT, tokens: Sequence[int], cache: KVCache, batch: Batch) -> torch.Tensor:
    """One new token per row through `GPT.forward`; float32 logits (B, V)."""
    dev = model.embed_tokens.weight.device
    ids = torch.tensor(list(tokens), dtype=torch.long, device=dev).unsqueeze(1)
    mask = positions = None
    if any(batch.pads):  # without padding every row's position is cache.length, the forward's default
        pads = torch.tensor(batch.pads, device=dev)
        mask = (torch.arange(cache.length + 1, device=dev) >= pads[:, None])[:, None, None, :]
        positions = torch.tensor(batch.positions, dtype=torch.long, device=dev).unsqueeze(1)
    with _eval_mode(model):
        logits, _ = model(ids, attn_mask=mask, positions=positions, cache=cache)
    return logits[:, -1].float()


def step(model: GPT, native: NativeDecoder | None, tokens: Sequence[int], cache: KVCache,
         batch: Batch) -> torch.Tensor:
    """Decode one token per row (the C step when given, else the model's forward); advances the batch.
    The C step's logits are a buffer its next call overwrites."""
    if native is not None:
        logits = native.step(list(tokens), batch.positions, cache, batch.pads)
    else:
        logits = model_step(model, tokens, cache, batch)
    batch.advance()
    return logits


def decode(model: GPT, native: NativeDecoder | None, prompts: Sequence[Sequence[int]], pad_id: int,
           budget: int, sampler: Sampler, rows: Sequence[_Row]) -> Iterator[int]:
    """Generate up to `budget` tokens a row, pushing each into `rows[r]` (whose `push` says whether
    the row is done). Yields the number of new tokens after every step, so callers can stream.

    inference_mode is entered per block, never across a `yield`: the caller's code between streamed
    pieces runs normally."""
    with torch.inference_mode():
        logits, cache, batch = prefill(model, prompts, pad_id, budget)
    for i in range(budget):
        with torch.inference_mode():
            toks = sampler(logits)
        keep = [b for b, (r, tok) in enumerate(zip(batch.rows, toks)) if not rows[r].push(tok)]
        yield len(toks)
        if not keep or i == budget - 1:
            return
        toks = [toks[b] for b in keep]
        with torch.inference_mode():
            if len(keep) < len(batch.rows):
                batch.keep(keep, cache)
                sampler.history.keep(keep)
            sampler.history.push(toks)
            logits = step(model, native, toks, cache, batch)


# --------------------------------------------------------------------------- joining a running batch


def realign(cache: KVCache, batch: Batch, length: int, capacity: int) -> KVCache:
    """A copy of `cache` in buffers of `capacity` slots whose filled slots end at `length`.

    Moving the rows right (length > cache.length) adds left padding to every row; moving them left
    drops leading slots that are padding in every row (never a real key). `batch.pads` follows; each
    row's positions are unchanged, so it decodes exactly as before. New slots are zeros: a masked slot
    must still hold a finite number (a softmax weight of 0 times NaN is NaN)."""
    shift = length - cache.length
    if shift < -min(batch.pads, default=0) or capacity < length:
        raise ValueError(f"cannot move a cache of {cache.length} filled slots (pads {batch.pads}) to end at "
                         f"{length} in {capacity} slots")
    src = max(0, -shift)
    n = cache.length - src

    def moved(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for t in buffers:
            new = t.new_zeros((t.shape[0], t.shape[1], capacity, t.shape[3]))
            new[:, :, length - n:length] = t[:, :, src:cache.length]
            out.append(new)
        return out

    batch.pads = [p + shift for p in batch.pads]
    return KVCache(moved(cache.keys), moved(cache.values), length)


def join(running: tuple[KVCache, Batch], joining: tuple[KVCache, Batch], spare: int
         ) -> tuple[KVCache, Batch]:
    """One batch of the rows of both: `joining`'s rows come after `running`'s.

    Both are realigned to end at the same slot (the longer of the two, after dropping padding common
    to all rows of each), in new buffers with room for `spare` more steps. A joined row decodes exactly
    as it would alone: its keys keep their values and positions, and its pad slots are masked."""
    (ca, ba), (cb, bb) = running, joining
    length = max(ca.length - min(ba.pads, default=0), cb.length - min(bb.pads, default=0))
    capacity = length + spare
    ca, cb = realign(ca, ba, length, capacity), realign(cb, bb, length, capacity)
    cache = KVCache([torch.cat(p) for p in zip(ca.keys, cb.keys)], [torch.cat(p) for p in zip(ca.values, cb.values)],
                    length)
    return cache, Batch(ba.rows + bb.rows, ba.positions + bb.positions, ba.pads + bb.pads)
