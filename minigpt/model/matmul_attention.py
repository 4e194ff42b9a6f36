"""Attention as two batched matmuls and a softmax: the CPU bf16 speed path beside `scaled_dot_product_attention`.

    scores = (q / sqrt(D)) @ k^T          one matmul per key/value head: the query heads that share it are
    p = softmax(masked scores)            stacked as rows (GQA without copying k and v)
    out = p @ v

Why: on the CPU, under bf16 autocast, PyTorch's fused (flash) attention kernel runs far below the machine's
bf16 matmul speed at the sequence lengths minigpt trains on; plain matmuls reach the bf16 tiles, and the softmax
accumulates in fp32. A whole training step, 2-core AVX512-BF16 CPU: tiny (8 x 256) ~10% faster, small (4 x 512)
~20% (`make bench` has the current figures). In fp32 the fused kernel is the faster one, and on GPUs it always is.

The price is memory: the (batch x heads x T x S) probabilities are kept for the backward (2 bytes an entry under
bf16). `attention_extra_bytes` is that cost; the trainer adds it to its
memory estimate and `auto` uses this path only up to `AUTO_MAX_SEQ_LEN`.

Parity with the reference (`model/gpt.py`'s SDPA call): outputs and gradients in fp32 to 1e-5, and bf16 training
loss curves over 50 steps to 1e-3, in tests/test_speed_paths.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import MachineConfig

AUTO_MAX_SEQ_LEN = 512  # beyond this the kept probabilities cost more memory than the speed is worth


def use_matmul_attention(impl: str, device: torch.device, autocast_dtype: torch.dtype | None, seq_len: int) -> bool:
    """Whether training runs attention through this module: `matmul` always, `sdpa` never, `auto` on the CPU under
    bf16 autocast for sequences up to AUTO_MAX_SEQ_LEN."""
    if impl not in MachineConfig.ATTENTION_IMPLS:
        raise ValueError(f"attention: expected one of {', '.join(MachineConfig.ATTENTION_IMPLS)}, got {impl!r}")
    if impl != "auto":
        return impl == "matmul"
    return device.type == "cpu" and autocast_dtype == torch.bfloat16 and seq_len <= AUTO_MAX_SEQ_LEN


def attention_extra_bytes(batch: int, n_heads: int, seq_len: int, n_layers: int, sixteen_bit: bool) -> int:
    """Bytes the kept probabilities take over all layers (in the matmul dtype: the softmax's output is what both
    backwards read)."""
    return batch * n_heads * seq_len * seq_len * n_layers * (2 if sixteen_bit else 4)


def _allowed(attn_mask: torch.Tensor | None, is_causal: bool, T: int, S: int, device: torch.device) -> torch.Tensor | None:
    """Where a query may attend, broadcastable to (B, KV, groups, T, S); None for full attention."""
    if attn_mask is not None:  # (B, 1, T, S) bool, True = may attend
        return attn_mask.unsqueeze(1)
    if is_causal:  # query i sees keys 0..i (queries and keys line up)
        return torch.ones(T, S, dtype=torch.bool, device=device).tril()
    return None


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                     is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa=True)` with matmuls.

    q: (B, H, T, D); k, v: (B, KV, S, D) with H a multiple of KV; attn_mask: bool (B, 1, T, S), True = may attend.
    Returns (B, H, T, D) in q's dtype.
    """
    B, H, T, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    groups = H // KV
    # query head h uses key/value head h // groups (SDPA's enable_gqa): a KV head's query heads become its rows
    scores = ((q * D ** -0.5).reshape(B, KV, groups * T, D) @ k.transpose(-1, -2)).view(B, KV, groups, T, S)
    allowed = _allowed(attn_mask, is_causal, T, S, q.device)
    if allowed is not None:  # in place: the matmul's backward needs q and k, not its output
        scores = scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    # the softmax accumulates in fp32 and writes the matmul dtype (the scores are bf16 under autocast, as in HF's
    # eager attention); the kept probabilities are then 2 bytes an entry (fp32 output + a bf16 copy: 5% slower on small)
    p = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    return (p.view(B, KV, groups * T, S) @ v).view(B, H, T, D)
