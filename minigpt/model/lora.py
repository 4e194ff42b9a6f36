"""LoRA: low-rank adapters on chosen linear layers of a GPT (Hu et al., 2021).

``W x`` becomes ``W x + (alpha / rank) * B (A dropout(x))`` with ``A`` (rank x in) random, ``B``
(out x rank) zero, so an injected model starts out computing exactly what the base model did.
The base weights are frozen; only ``lora_A``/``lora_B`` train.

    inject_lora(model, rank=8, alpha=16, targets=["q_proj", "v_proj"])   # freezes the rest
    adapter_state(model)          # {"layers.0.self_attn.q_proj.lora_A": ..., ...}: what a step checkpoint saves
    merged_state(model)           # plain GPT weights with B@A folded in (the model itself is untouched)
    merge_lora(model)             # folds in place and puts plain nn.Linear back: export-ready

A ``LoRALinear`` keeps the base ``weight`` under its own name, so base keys in the state dict do
not change and a merged state loads into a plain ``GPT`` with ``load_checkpoint``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_FILE = "adapter.safetensors"


class LoRALinear(nn.Linear):
    """An nn.Linear whose (frozen) weight is shared with the layer it replaces, plus a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        if rank < 1:
            raise ValueError(f"lora_rank: expected an integer >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear / PEFT
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha:g}"


def _check_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    targets = list(targets)
    if not targets:
        raise ValueError(f"lora_targets: expected at least one of {', '.join(LORA_TARGETS)}")
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    bad = [t for t in targets if t not in present or t == "lm_head"]
    if bad:
        raise ValueError(f"lora_targets: {bad[0]!r} is not a linear layer of this model; expected names from {', '.join(LORA_TARGETS)}")
    return targets


def inject_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                targets: Iterable[str] = LORA_TARGETS) -> nn.Module:
    """Replace the named linear layers by LoRALinear (in place), freeze everything else; return the model."""
    targets = set(_check_targets(model, targets))
    for p in model.parameters():
        p.requires_grad_(False)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and isinstance(child, nn.Linear) and not isinstance(child, LoRALinear):
                setattr(parent, child_name, LoRALinear(child, rank, alpha, dropout))
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the adapter weights only (keys end in lora_A / lora_B)."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    expected = {k for k in model.state_dict() if k.endswith((".lora_A", ".lora_B"))}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: adapter does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         "were lora_rank / lora_targets changed?")
    with torch.no_grad():
        live = model.state_dict()
        for k, v in state.items():
            if live[k].shape != v.shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(live[k].shape)} (lora_rank changed?)")
            live[k].copy_(v)


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a plain model would have, with every adapter folded into its base weight (no mutation)."""
    mods = lora_modules(model)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith((".lora_A", ".lora_B")):
            continue
        owner = k.rsplit(".", 1)[0]
        if k.endswith(".weight") and owner in mods:
            v = (v.float() + mods[owner].delta_weight().to(v.device)).to(v.dtype)
        out[k] = v.detach().contiguous().cpu()
    return out


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put a plain nn.Linear back (in place); return the model."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  device=child.weight.device, dtype=child.weight.dtype)
                plain.weight = child.weight
                plain.weight.add_(child.delta_weight().to(child.weight.dtype))
                if child.bias is not None:
                    plain.bias = child.bias
                setattr(parent, child_name, plain)
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
