"""The frozen reference model's log-probs, computed once per pair and cached in the run folder.

DPO needs log ref(y|x) of both replies of every pair, and the reference never changes, so it is run once over
all pairs before training (under the same device and autocast dtype as training) and the numbers are stored.
The reference model is then not held in memory during training: the training process keeps only the policy
(and, for the KL metric, the reference's next-token distributions on a few held-out replies; dpo.py).

The cache is ``reference_logps.safetensors`` in the run's align folder, written atomically: tensors ``keys``
(N, 32) uint8 = the sha256 of each pair's tokens and labels (data.pair_key) and ``logps`` (N, 2) float32 =
(chosen, rejected) summed reply log-probs; metadata ``format`` and ``reference_sha256`` (the reference
checkpoint's model.safetensors). On load it is validated (format, checkpoint SHA, shapes, finite values); a
different reference or unreadable file is recomputed, and pairs missing from it are computed and added.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.datasets import IGNORE_INDEX
from .data import EncodedPair, pad_pairs

logger = logging.getLogger(__name__)

CACHE_FILE = "reference_logps.safetensors"
CACHE_FORMAT = "minigpt-dpo-reference/1"


def sequence_logps(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(rows,) sum over labelled positions of log p(y_t | x_<=t), in float32."""
    mask = y != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


@torch.no_grad()
def reply_logps(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device | str = "cpu",
                batch_size: int = 8, autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> torch.Tensor:
    """(N, 2) float32 (chosen, rejected) summed reply log-probs of `pairs` under `model` (eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        x, y, _ = pad_pairs(pairs[i:i + batch_size], pad_id)
        with (autocast or contextlib.nullcontext)():
            logits = model(x.to(device))[0]
        lp = sequence_logps(logits, y.to(device)).cpu()
        n = x.shape[0] // 2
        out.append(torch.stack([lp[:n], lp[n:]], dim=1))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


class CacheError(ValueError):
    """A cache file that cannot be used as it is (the message names the file and what is wrong)."""


def read_cache(path: Path, reference_sha256: str) -> dict[str, torch.Tensor]:
    """pair key -> (2,) log-probs from a validated cache file; CacheError naming the file otherwise."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys, logps = f.get_tensor("keys"), f.get_tensor("logps")
    except Exception as e:  # truncated, not safetensors, missing tensors
        raise CacheError(f"{path}: not a readable reference cache ({type(e).__name__}: {e})") from e
    if meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"{path}: format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
    if meta.get("reference_sha256") != reference_sha256:
        raise CacheError(f"{path}: computed with reference sha256 {str(meta.get('reference_sha256'))[:12]}, "
                         f"the reference is now {reference_sha256[:12]}")
    if keys.dtype != torch.uint8 or keys.ndim != 2 or keys.shape[1] != 32 or logps.shape != (keys.shape[0], 2):
        raise CacheError(f"{path}: keys {tuple(keys.shape)} {keys.dtype} / logps {tuple(logps.shape)}, "
                         "expected (N, 32) uint8 and (N, 2)")
    if not torch.isfinite(logps).all() or (logps > 1e-4).any():
        raise CacheError(f"{path}: log-probs must be finite and <= 0")
    return {bytes(k.tolist()).hex(): v for k, v in zip(keys, logps.float())}


def write_cache(path: Path, table: dict[str, torch.Tensor], reference_sha256: str) -> None:
    from safetensors.torch import save_file

    keys = torch.tensor([list(bytes.fromhex(k)) for k in table], dtype=torch.uint8).reshape(-1, 32)
    logps = torch.stack(list(table.values())) if table else torch.zeros(0, 2)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # one per writer (DDP ranks)
    os.close(fd)
    try:
        save_file({"keys": keys, "logps": logps.float().contiguous()}, tmp,
                  metadata={"format": CACHE_FORMAT, "reference_sha256": reference_sha256})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_reference_logps(path: str | Path, pairs: list[EncodedPair], reference_sha256: str,
                           load_reference: Callable[[], torch.nn.Module], pad_id: int, device: torch.device | str = "cpu",
                           batch_size: int = 8, autocast=None) -> tuple[torch.Tensor, dict[str, int]]:
    """(N, 2) reference log-probs of `pairs`, read from the cache at `path` where present; the rest computed
    with the model `load_reference()` returns (called only when something is missing) and added to the cache."""
    path = Path(path)
    table: dict[str, torch.Tensor] = {}
    if path.is_file():
        try:
            table = read_cache(path, reference_sha256)
        except CacheError as e:
            logger.warning("%s; recomputing the reference log-probs", e)
    missing = [p for p in pairs if p.key not in table]
    if missing:
        model = load_reference().to(device)
        fresh = reply_logps(model, missing, pad_id, device, batch_size, autocast)
        del model  # the reference is not kept: training reads the cache
        table.update({p.key: v for p, v in zip(missing, fresh)})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_cache(path, table, reference_sha256)
    logps = torch.stack([table[p.key] for p in pairs]) if pairs else torch.zeros(0, 2)
    return logps, {"pairs": len(pairs), "from_cache": len(pairs) - len(missing), "computed": len(missing)}


def reference_token_logprobs(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int,
                             device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """For the KL metric: per pair, the reference's log-softmax (n_reply_tokens, vocab) at its chosen reply."""
    out = []
    model.eval()
    with torch.no_grad():
        for p in pairs:
            x, y, _ = pad_pairs([p], pad_id)
            logits = model(x[:1].to(device))[0][0]
            mask = (y[0] != IGNORE_INDEX).to(device)
            out.append(F.log_softmax(logits.float()[mask], dim=-1).cpu())
    return out
