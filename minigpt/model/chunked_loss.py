"""The LM head's cross-entropy in chunks of rows: the training loss without the (batch x seq x vocab) logits.

The reference path (`GPT.forward`) computes `lm_head(x)` for every position, casts the logits to fp32 and
calls `F.cross_entropy`; autograd then keeps the fp32 logits, their log-softmax and, in the backward, a
gradient of the same size: at medium's 8 x 1024 x 6400 that is about 0.2 GB per copy. Here the rows are
processed a chunk at a time and each chunk's gradient is computed in the forward pass itself, since
d loss / d logits = (softmax(logits) - onehot(target)) / n_targets is known as soon as the loss is. Only the
gradients of the hidden states (rows x d_model) and of the head's matrix (vocab x d_model) are kept for the
backward, which scales them by the incoming gradient. The matmul work equals the reference's (one forward and
two gradient matmuls per row), so nothing is recomputed.

Under autocast the caller passes the hidden states and the matrix already cast to the autocast dtype; the
logits are computed in that dtype and the softmax in fp32, as the reference does. Parity with the reference in
fp32 (loss and gradients to 1e-5) is tests/test_memory.py's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Rows per chunk are chosen so a chunk's fp32 log-probabilities hold about this many elements (4 MB), which
# keeps the elementwise passes in cache (tiny, 2048 x 6400 logits, bf16: 49 ms forward and backward in chunks of
# 128-256 rows against 75-93 ms in one chunk); at least MIN_ROWS, so the head's matmuls stay efficient.
CHUNK_ELEMENTS = 1 << 20
MIN_ROWS = 64


def chunk_rows(vocab_size: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that rows x vocab_size is about `elements` (at least MIN_ROWS)."""
    return max(MIN_ROWS, elements // max(vocab_size, 1))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        needs = ctx.needs_input_grad
        ctx.weight_dtype = weight.dtype  # the head matrix's gradient is returned in its dtype
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum()
        # 0/0 = nan when no row carries a target, as F.cross_entropy's mean gives
        scale = 1.0 / n_valid.to(torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # fp16's range cannot hold (softmax - onehot) / n before a GradScaler's scale multiplies it (it underflows),
        # so under fp16 the stored gradients are fp32; bf16 has fp32's range and keeps its own dtype
        gdt = torch.float32 if hidden.dtype == torch.float16 else hidden.dtype
        ctx.hidden_dtype = hidden.dtype
        w_g = weight.to(gdt)
        grad_hidden = torch.empty(hidden.shape, dtype=gdt, device=hidden.device) if needs[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start:start + rows]
            t = targets[start:start + rows]
            keep = t != IGNORE_INDEX
            r = torch.arange(t.shape[0], device=t.device)[keep]
            # log-softmax in fp32 straight from the matmul's dtype (no separate fp32 copy of the logits)
            logp = torch.log_softmax(h @ weight.t(), dim=-1, dtype=torch.float32)
            logp_target = logp[r, t[keep]]
            total -= logp_target.sum()
            if grad_hidden is None and grad_weight is None:
                continue
            # d(sum of row losses)/d logits = softmax - onehot on rows with a target, 0 on ignored rows, written
            # once in the gradient dtype; the target entries (p - 1) from fp32, and the 1/n_targets scale applied
            # to the (rows x d) products below rather than to this (rows x vocab) matrix
            g = torch.exp(logp, out=torch.empty(logp.shape, dtype=gdt, device=logp.device))
            g[r, t[keep]] = (logp_target.exp() - 1.0).to(gdt)
            if r.shape[0] != t.shape[0]:
                g[~keep] = 0.0
            if grad_hidden is not None:
                grad_hidden[start:start + rows] = (g @ w_g).mul_(scale)
            if grad_weight is not None:
                grad_weight += (g.t() @ h.to(gdt)).float()
        if grad_weight is not None:
            grad_weight.mul_(scale)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden * grad_out.to(grad_hidden.dtype)).to(ctx.hidden_dtype) if grad_hidden is not None else None
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if grad_weight is not None else None
        return gh, gw, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          rows: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of `hidden @ weight.T` (the LM head) against `targets`, ignoring -100.

    hidden: (B, T, d) final-norm outputs; weight: (vocab, d) the head's matrix; targets: (B, T).
    Equals `F.cross_entropy(lm_head(hidden).float().view(-1, vocab), targets.view(-1), ignore_index=-100)`,
    and so do its gradients, but never holds more than `rows` rows of logits (default: chunk_rows(vocab)).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"chunked_cross_entropy: hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} "
                         "differ in their leading (batch, seq) dimensions")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # the dtype autocast would run the head's matmul in; the casts stay outside the Function, so autograd
        # returns the head's gradient to the fp32 parameter as autocast's own matmul would
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    rows = rows or chunk_rows(weight.shape[0])
    with torch.autocast(device_type, enabled=False):
        return _ChunkedCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), rows)

