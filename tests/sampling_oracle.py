"""Reference sampling filters for tests only: temperature, top-k and top-p written plainly over the whole
vocabulary (every filtered token at -inf), as Hugging Face's TopK/TopP warpers define them. The library's
processors (minigpt/infer/sampling.py) take shortcuts, e.g. top-p on the k candidates only; the tests check
them against these."""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def reference_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the logits >= each row's k-th largest (ties kept), -inf elsewhere; k <= 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def reference_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep each row's smallest set of most likely tokens whose probability reaches p (at least one), by
    going through the tokens one at a time."""
    if p >= 1.0:
        return logits
    out = torch.full_like(logits, NEG_INF)
    probs = logits.softmax(dim=-1)
    for r in range(logits.shape[0]):
        mass = 0.0
        for t in torch.argsort(logits[r], descending=True, stable=True).tolist():
            if mass >= p:
                break
            out[r, t] = logits[r, t]
            mass += float(probs[r, t])
    return out


def reference_filters(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p, over the whole vocabulary."""
    if temperature not in (0, 1):
        logits = logits / temperature
    return reference_top_p(reference_top_k(logits, top_k), top_p)
