"""What the Trainer reads batches from: the `BatchSource` protocol, and moving a batch to the device.

A batch is (x, y) or (x, y, extras): input ids, target ids (-100 = not trained on) and, for packed SFT
rows, model keyword arguments (attn_mask, positions). WindowSampler (pretraining windows) and
ChatBatches (SFT conversations) both meet the protocol; PrefetchBatches wraps either.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Union, runtime_checkable

import torch

from ..config import TrainConfig

Batch = Union[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]


@runtime_checkable
class BatchSource(Protocol):
    """A position-addressable, resumable stream of training batches.

    Batch i is a pure function of (seed, i), so `state_dict()` (which holds the position) is all that
    resume needs, and worker threads can prefetch batches by index without changing what is trained on.
    """

    seq_len: int  # the window length a batch's rows have (the longest, when it changes during the run)
    position: int  # the index of the batch `__next__` returns next

    def __next__(self) -> Batch: ...

    def batch_at(self, index: int) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class GrowingBatchSource(BatchSource, Protocol):
    """A BatchSource whose window length can follow the step (context growth): pretraining windows."""

    seq_len_at: Callable[[int], int] | None  # batch index -> window length; None = always seq_len


def check_batch_source(source: object) -> None:
    """Raise TypeError naming what `source` lacks to be a BatchSource."""
    if isinstance(source, BatchSource):
        return
    needed = ("seq_len", "position", "__next__", "batch_at", "state_dict", "load_state_dict")
    missing = [n for n in needed if not hasattr(source, n)]
    raise TypeError(f"train_batches: {type(source).__name__} is not a BatchSource (missing {', '.join(missing)}); "
                    "see minigpt.train.batches.BatchSource")


def unpack_batch(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(x, y) or (x, y, extras) -> tensors on `device`; extras (model keyword arguments) default to {}."""
    x, y = batch[0], batch[1]
    extras = batch[2] if len(batch) > 2 else {}
    return (x.to(device, non_blocking=True), y.to(device, non_blocking=True),
            {k: v.to(device, non_blocking=True) for k, v in extras.items()})


def grow_context(source: GrowingBatchSource, cfg: TrainConfig, model_max_len: int) -> None:
    """context_growth: the source's window length becomes a function of the optimizer step (doubling stages)."""
    from ..data.datasets import dynamic_seq_len

    s, accum = cfg.schedule, cfg.optim.accumulation_steps
    top = s.context_growth_to or source.seq_len
    if top > model_max_len:
        raise ValueError(f"context_growth_to (max_seq_length): {top} exceeds the model's max_seq_len={model_max_len}")
    if s.context_growth_from > top:
        raise ValueError(f"context_growth_from (min_seq_length): {s.context_growth_from} exceeds context_growth_to={top}")
    if cfg.optim.total_batch_size:
        raise ValueError("context_growth: use accumulation_steps, not total_batch_size (tokens per step change)")
    source.seq_len = top
    source.seq_len_at = lambda index: dynamic_seq_len(index // accum, s.max_steps, s.context_growth_from, top)


def accumulation_steps(cfg: TrainConfig, seq_len: int, world_size: int) -> int:
    """Micro-batches per optimizer step: accumulation_steps, or derived from total_batch_size (tokens per step)."""
    opt = cfg.optim
    if not opt.total_batch_size:
        return opt.accumulation_steps
    per_micro = opt.batch_size * seq_len * world_size
    if opt.total_batch_size % per_micro:
        raise ValueError(
            f"total_batch_size: {opt.total_batch_size} tokens is not a multiple of batch_size*seq_len*world_size={per_micro}")
    return opt.total_batch_size // per_micro
