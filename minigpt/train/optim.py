"""The optimizer and what rides along with it: parameter groups (weight decay on matrices only) and the EMA."""
from __future__ import annotations

from typing import Any

import torch

from . import checkpoint as ckpt
from ..config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: norms, biases (1-D tensors) are not decayed."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2 folded into the gradient), fused where the device allows."""
    opt = cfg.optim
    kwargs: dict[str, Any] = dict(lr=opt.learning_rate, betas=(opt.beta1, opt.beta2))
    if device.type in ("cuda", "cpu") and not cfg.machine.disable_speedups:
        kwargs["fused"] = True  # one kernel for all parameters instead of a loop over them
    cls = torch.optim.AdamW if opt.optimizer_type == "adamw" else torch.optim.Adam
    return cls(param_groups(model, opt.weight_decay), **kwargs)


class EMA:
    """Exponential moving average of the weights: shadow = decay*shadow + (1-decay)*param."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in ckpt.model_state(model).items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in ckpt.model_state_live(model).items():
            self.shadow[k].mul_(self.decay).add_(v.detach().float(), alpha=1 - self.decay)

    def copy_to(self, model: torch.nn.Module) -> None:
        ckpt.load_model_state(ckpt.unwrap(model), self.shadow, "EMA")
