"""The optimizer and what rides along with it: parameter groups (weight decay on matrices only) and the EMA.

Muon (optimizer_type="muon") follows Keller Jordan's write-up "Muon: An optimizer for hidden layers in neural
networks" (2024, kellerjordan.github.io/posts/muon): the momentum of a hidden 2-D weight matrix is replaced by
its nearest semi-orthogonal matrix, approximated with 5 steps of a quintic Newton-Schulz iteration with
coefficients (3.4445, -4.7750, 2.0315). The update is scaled by 0.2 * sqrt(max(rows, cols)) so that its RMS
matches AdamW's (Liu et al. 2025, "Muon is Scalable for LLM Training"): one learning rate and schedule serve
both halves. torch.optim.Muon exists but always iterates in bfloat16 and is a second optimizer object; this
is one optimizer, so the trainer, the loss scaler and checkpoints see one state.
"""
from __future__ import annotations

import math
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


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def muon_parameter_names(model: torch.nn.Module) -> list[str]:
    """The hidden 2-D weight matrices Muon updates: not the embedding, not the LM head (tied or not), not norms."""
    skip = {id(p) for name, p in model.named_parameters() if name.split(".")[-2] in ("embed_tokens", "lm_head")}
    return [n for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and id(p) not in skip]


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T: X <- a X + (b A + c A^2) X with A = X X^T, X0 = g / ||g||_F.

    ``g`` is one matrix or a stack of same-shaped matrices (..., rows, cols), each orthogonalised on its own.
    Iterates in `dtype`: by default bfloat16 on CUDA (fast there), float32 elsewhere; works on the wide
    orientation (rows <= cols).
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return (x.mT if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with use_muon=True, AdamW (decoupled weight decay) for the others, in one optimizer."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], momentum: float = 0.95,
                 eps: float = 1e-8, ns_dtype: torch.dtype | None = None) -> None:
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, use_muon=False, weight_decay=0.0))
        self.ns_dtype = ns_dtype  # Newton-Schulz precision; None = newton_schulz's default for the device

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)
        return loss

    def _muon(self, params: list[torch.Tensor], group: dict) -> None:
        """Nesterov momentum, orthogonalised: matrices of one shape go through Newton-Schulz together as one
        batch (a few large matrix products instead of many small ones; each matrix still on its own)."""
        by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in params:
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.lerp_(p.grad, 1 - group["momentum"])
            g = p.grad.lerp(buf, group["momentum"])  # Nesterov momentum
            by_shape.setdefault(tuple(g.shape), []).append((p, g))
        for shape, pairs in by_shape.items():
            updates = newton_schulz(torch.stack([g for _, g in pairs]), dtype=self.ns_dtype)
            scale = -group["lr"] * 0.2 * math.sqrt(max(shape))
            for (p, _), update in zip(pairs, updates):
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=scale)

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state, (beta1, beta2) = self.state[p], group["betas"]
        if not state:
            state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        t = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** t))


def muon_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Muon on the hidden matrices (decayed); AdamW on the embedding and head (decayed) and 1-D tensors (not)."""
    muon = set(muon_parameter_names(model))
    named = dict(model.named_parameters())  # tied weights appear once
    hidden = [p for n, p in named.items() if n in muon]
    rest = [p for n, p in named.items() if n not in muon and p.requires_grad]
    return [{"params": hidden, "weight_decay": weight_decay, "use_muon": True},
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]


def muon_ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 where matmuls are fast in it (CUDA, a CPU with AVX512-BF16/AMX), else fp32 (emulated bf16 is slow)."""
    from ..devices import cpu_has_native_bf16

    fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return torch.bfloat16 if fast else torch.float32


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2 folded into the gradient), fused where the device allows;
    or MuonAdamW."""
    opt = cfg.optim
    if opt.optimizer_type == "muon":
        return MuonAdamW(muon_groups(model, opt.weight_decay), lr=opt.learning_rate, betas=(opt.beta1, opt.beta2),
                         ns_dtype=muon_ns_dtype(device))
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
