"""Pretraining batches: random windows over a token memmap, and fixed windows for evaluation.

The sampler is a deterministic function of (seed, position), so its state is two integers and
resume continues the exact stream of batches an uninterrupted run would have seen.
(Chat examples for SFT live in chat_data.py.)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


IGNORE_INDEX = -100
EOS_ID = 0  # <|endoftext|>, written after each document in the token file


def document_starts(tokens: np.ndarray) -> np.ndarray:
    """Sorted offsets where a document begins: 0 and every position right after an <|endoftext|>."""
    after_eos = np.flatnonzero(np.asarray(tokens[:-1]) == EOS_ID) + 1
    return np.concatenate([[0], after_eos]).astype(np.int64) if tokens[0] != EOS_ID else after_eos.astype(np.int64)


class IndexedBatches:
    """A batch source addressed by index: batch i is `batch_at(i)`, a pure function of (seed, i), and `position` is
    the next index, so iterating, prefetching and resuming need nothing else. Subclasses set `seed`, `position`
    and write `batch_at` and `state_dict`."""

    seed: int
    position: int

    def batch_at(self, index: int) -> Any:
        raise NotImplementedError

    def __iter__(self) -> "IndexedBatches":
        return self

    def __next__(self) -> Any:
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.position = int(state["position"])


class WindowSampler(IndexedBatches):
    """Random (x, y) windows of `seq_len` tokens from a flat token array.

    Batch i is drawn from a generator seeded with (seed, i): it picks the global batch's
    batch_size * world_size window starts and rank r takes the r-th share. Any batch can be recomputed from
    its index alone, so saving `position` is enough to resume; each DDP rank reads its own windows; and
    N ranks of batch_size B see exactly the windows one process with batch_size N*B sees.
    With doc_aligned, each window starts at a document's first token (drawn among the document starts that
    leave room for a full window), still a function of (seed, index) alone.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 seq_len_at: Callable[[int], int] | None = None, doc_aligned: bool = False):
        """seq_len_at: optional function batch index -> window length (dynamic_seq_length); a pure function of
        the index, so prefetching and resume stay exact."""
        if len(tokens) <= seq_len + 1:
            raise ValueError(f"token file holds {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}; use more data or a shorter seq_len")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = 0
        self.seq_len_at = seq_len_at
        self.doc_starts = document_starts(tokens) if doc_aligned else None
        if doc_aligned and self._start_choices(seq_len) == 0:
            raise ValueError(f"doc_aligned_batches: no document start (a token after <|endoftext|> id {EOS_ID}) leaves "
                             f"room for a window of seq_len+1={seq_len + 1} tokens in {len(tokens)} tokens; "
                             "turn doc_aligned_batches off or use a shorter seq_len")

    def _start_choices(self, seq_len: int) -> int:
        """How many window starts there are for this window length (the first n document starts when aligned)."""
        last = len(self.tokens) - seq_len - 1  # exclusive bound of a start, as in the unaligned draw
        return last if self.doc_starts is None else int(np.searchsorted(self.doc_starts, last))

    def batch_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq_len = self.seq_len_at(index) if self.seq_len_at else self.seq_len
        rng = np.random.default_rng([self.seed, index])
        starts = rng.integers(0, self._start_choices(seq_len), size=self.batch_size * self.world_size)
        if self.doc_starts is not None:
            starts = self.doc_starts[starts]
        starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        buf = np.stack([np.asarray(self.tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])
        t = torch.from_numpy(buf)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict:
        return {"kind": "windows", "seed": self.seed, "position": self.position, "batch_size": self.batch_size, "seq_len": self.seq_len}


class PrefetchBatches:
    """Prefetch the next `depth` batches of a position-addressable source (`batch_at(i)`) in worker threads.

    Batches are a pure function of (seed, index), so prefetching by index changes nothing about what is
    trained on: state_dict() is the source's, with `position` = the next batch the trainer will receive,
    and resume is exact with or without workers. (numpy slicing of the memmap releases the GIL; threads
    also keep the memmap shared and work under Jupyter, where functions can't be pickled to processes.)
    """

    def __init__(self, source: Any, workers: int = 1, depth: int | None = None) -> None:
        self.source = source
        self.workers = max(1, int(workers))
        self.depth = depth or 2 * self.workers
        self._pool = None
        self._pending: dict[int, object] = {}
        self.position = int(getattr(source, "position", 0))

    def __getattr__(self, name):  # seq_len, batch_size, rank... come from the source
        if name.startswith("_") or name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def __iter__(self):
        return self

    def _fill(self) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="minigpt-prefetch")
        for i in range(self.position, self.position + self.depth):
            if i not in self._pending:
                self._pending[i] = self._pool.submit(self.source.batch_at, i)

    def __next__(self):
        self._fill()
        fut = self._pending.pop(self.position)
        self.position += 1
        self.source.position = self.position
        return fut.result()

    def state_dict(self) -> dict:
        self.source.position = self.position
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)
        self._drop_pending()
        self.position = int(self.source.position)

    def _drop_pending(self) -> None:
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    def close(self) -> None:
        self._drop_pending()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


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


def dynamic_seq_len(step: int, max_steps: int, min_len: int, max_len: int) -> int:
    """Context length for optimizer step `step` when it grows during training.

    Doubling stages from min_len up to max_len, each an equal share of max_steps: short windows are cheap
    while the model learns local statistics, and each stage's fixed length keeps compiled graphs reusable.
    """
    lengths = [min_len]
    while lengths[-1] * 2 < max_len:
        lengths.append(lengths[-1] * 2)
    if lengths[-1] != max_len:
        lengths.append(max_len)
    stage = min(len(lengths) - 1, step * len(lengths) // max(1, max_steps))
    return lengths[stage]
