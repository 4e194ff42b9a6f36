"""What a training step reports: FLOPs per token and throughput (MFU), per-layer gradient norms, one-line summaries,
and the validation loss."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from ..config import ModelConfig


def flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6*N (forward+backward matmuls) + 12*L*d*T for attention scores (PaLM appendix B)."""
    n = model_cfg.num_params() - model_cfg.vocab_size * model_cfg.d_model  # embeddings lookups are free...
    n += model_cfg.vocab_size * model_cfg.d_model  # ...but the tied LM head is a matmul, so it counts once
    return 6 * n + 12 * model_cfg.n_layers * model_cfg.d_model * seq_len


def layer_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """Gradient norm per block (`layers.i`) and for embeddings / final norm."""
    sums: dict[str, float] = {}
    for name, p in ckpt.unwrap(model).named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0] == "layers" else parts[0]
        sums[group] = sums.get(group, 0.0) + float(p.grad.detach().float().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sums.items()}


def format_metrics(rec: dict) -> str:
    """'step N | loss L | val V | bpc B | lr R | T tok/s | MFU M of the measured bf16 peak P GFLOP/s' from a metrics
    record (absent fields left out)."""
    parts = [f"step {rec.get('step', 0):>6}"]
    if rec.get("loss") is not None:
        parts.append(f"loss {rec['loss']:.4f}")
    if "val_loss" in rec:
        parts.append(f"val {rec['val_loss']:.4f}")
    if "val_bpc" in rec:
        parts.append(f"bpc {rec['val_bpc']:.3f}")
    if rec.get("lr") is not None:
        parts.append(f"lr {rec['lr']:.2e}")
    if rec.get("tokens_per_s"):
        trained = rec.get("trained_tokens_per_s")
        # SFT trains on fewer positions (assistant tokens) than it computes: both are shown
        shown = f" ({trained:.0f} trained)" if trained is not None and abs(trained - rec["tokens_per_s"]) > 0.5 else ""
        parts.append(f"{rec['tokens_per_s']:.0f} tok/s{shown}")
    if rec.get("mfu") is not None and rec.get("mfu_peak"):
        parts.append(f"MFU {rec['mfu']:.1%} of the measured {rec['mfu_peak']} peak {rec['peak_gflops']:,.0f} GFLOP/s")
    return " | ".join(parts)


def throughput(trained: int, computed: int, seconds: float, world_size: int, flops_per_token: float,
               peak_flops: float | None, peak_dtype: str | None) -> dict[str, Any]:
    """A log line's speed fields from the tokens of the steps since the last one (this rank's) and their seconds.

    tokens_per_s counts the positions computed (all of each row), trained_tokens_per_s those with a target (SFT's
    assistant tokens); MFU counts the computed ones against the measured peak of the run's dtype.
    """
    seconds = max(seconds, 1e-9)
    out: dict[str, Any] = {"tokens_per_s": computed / seconds * world_size,
                           "trained_tokens_per_s": trained / seconds * world_size}
    out["mfu"] = out["tokens_per_s"] * flops_per_token / (peak_flops * world_size) if peak_flops else None
    if peak_flops:
        out["mfu_peak"], out["peak_gflops"] = peak_dtype, peak_flops / 1e9
    return out


def eval_loss(model: torch.nn.Module, batches: list, device: torch.device, autocast: Callable,
              world_size: int = 1) -> float:
    """Validation loss per target token over `batches` (summed over DDP ranks); leaves the model in eval mode."""
    from .batches import unpack_batch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            x, y, extras = unpack_batch(batch, device)
            with autocast():
                _, loss = model(x, y, **extras)
            n = int((y != -100).sum())
            total += float(loss) * n
            count += n
    if world_size > 1:
        t = torch.tensor([total, count], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), float(t[1])
    return total / max(count, 1)
