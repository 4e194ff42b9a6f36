"""How much memory a training step needs, before the first step: an estimate, a refusal that says what fits,
and the two switches that shrink a step (activation checkpointing, the chunked LM-head loss).

The estimate counts what a step holds at its peak (the start of the backward):
- weights (fp32), their gradients (fp32), and under bf16/fp16 autocast the 16-bit copies autocast caches;
- optimizer state: Adam/AdamW two fp32 moments per parameter; Muon one momentum buffer per hidden matrix
  and AdamW moments for the rest;
- activations saved for the backward, per layer and token: about 10*d + 3*kv + 4*d_ff values (norm inputs
  and outputs, q/k/v, RoPE, attention output, o_proj input; the MLP's gate, up, activation and product),
  4 bytes each in fp32. Under autocast the residual stream and norms stay fp32 and the matmul inputs get
  16-bit copies, which was measured (saved-tensor hooks, tests/test_memory.py) to hold about 10% more than
  fp32, not half. SDPA's fused CPU/CUDA kernels keep no T x T matrix. With activation checkpointing only
  each block's input is kept, plus about three blocks' worth around the one being recomputed (measured);
- the LM head: the reference keeps the fp32 logits and their log-softmax (and makes a gradient of the same
  size), 3 x rows x vocab x 4 bytes; the chunked loss keeps the head's gradient (vocab x d) and the hidden
  states' gradient, plus one chunk's logits;
- a fixed runtime overhead (the torch libraries, the data, the allocator's slack).
"""
from __future__ import annotations

import logging
from typing import Any

import psutil
import torch

from ..config import ModelConfig
from ..model.chunked_loss import chunk_rows
from ..model.gpt import GPT, Attention
from ..model.matmul_attention import attention_extra_bytes, use_matmul_attention

logger = logging.getLogger(__name__)

GB = 1024 ** 3
RUNTIME_OVERHEAD = 400 * 1024 ** 2  # torch, python and the tokens in memory: measured idle RSS of a trainer process
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class InsufficientMemory(RuntimeError):
    """The estimated peak of a training step exceeds the memory available; the message says what would fit."""


def _act_values_per_token(cfg: ModelConfig) -> int:
    """Values saved for the backward per token and layer (see the module docstring)."""
    kv = cfg.n_kv_heads * cfg.head_dim
    mlp = 4 * cfg.d_ff if cfg.mlp == "swiglu" else 3 * cfg.d_ff
    return 10 * cfg.d_model + 3 * kv + mlp


def _muon_shapes(cfg: ModelConfig) -> dict[tuple[int, int], int]:
    """Hidden matrices by shape -> how many (Newton-Schulz works on one stack per shape)."""
    d, kv, f, L = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff, cfg.n_layers
    q = cfg.n_heads * cfg.head_dim
    shapes: dict[tuple[int, int], int] = {}
    mlp = [(f, d), (f, d), (d, f)] if cfg.mlp == "swiglu" else [(f, d), (d, f)]
    for shape in [(q, d), (kv, d), (kv, d), (d, q), *mlp]:
        shapes[shape] = shapes.get(shape, 0) + L
    return shapes


def estimate_train_memory(model_cfg: ModelConfig, batch: int, seq_len: int, dtype: torch.dtype = torch.float32,
                          optimizer: str = "adamw", activation_checkpointing: bool = False,
                          chunked_loss: bool = True, matmul_attention: bool = False) -> dict[str, int]:
    """Estimated peak bytes of one training step (micro-batch `batch` x `seq_len`), by part, and their "total"."""
    n = model_cfg.num_params()
    tokens = batch * seq_len
    emb = model_cfg.vocab_size * model_cfg.d_model
    out = {"weights": 4 * n, "grads": 4 * n}
    if dtype in SIXTEEN_BIT:
        out["weights"] += 2 * n  # autocast's cached 16-bit copies of the weights, held through the forward
    if optimizer == "muon":
        shapes = _muon_shapes(model_cfg)
        hidden = sum(r * c * k for (r, c), k in shapes.items())
        # momentum for the hidden matrices, AdamW's moments for the rest; Newton-Schulz's working copies exist
        # only inside optimizer.step(), when the activations are already freed, and are smaller than them
        out["optimizer"] = 4 * hidden + 8 * (n - hidden)
    else:
        out["optimizer"] = 8 * n
    per_layer = 4 * tokens * _act_values_per_token(model_cfg)
    if dtype in SIXTEEN_BIT:
        per_layer = per_layer * 11 // 10  # fp32 residual and norms plus 16-bit copies (measured, see docstring)
    layer_input = 4 * tokens * model_cfg.d_model
    if activation_checkpointing:
        # each block's input, plus about three blocks' worth while one is recomputed: its activations, their
        # gradients, and freed buffers the allocator keeps (medium at 8 x 1024 measured 4.8 GB peak RSS in fp32,
        # 4.6 GB in bf16, where one block's worth would predict 3.2 and 3.4)
        out["activations"] = model_cfg.n_layers * layer_input + 3 * per_layer
    else:
        # every layer's saved values, and one layer's gradients in flight during the backward
        out["activations"] = model_cfg.n_layers * per_layer + per_layer // 2
    if matmul_attention:  # the attention probabilities kept for the backward (model/matmul_attention.py)
        kept_layers = 3 if activation_checkpointing else model_cfg.n_layers
        out["activations"] += attention_extra_bytes(batch, model_cfg.n_heads, seq_len, kept_layers, dtype in SIXTEEN_BIT)
    if chunked_loss:
        rows = min(tokens, chunk_rows(model_cfg.vocab_size))
        out["lm_head"] = 4 * emb + 4 * tokens * model_cfg.d_model + 3 * 4 * rows * model_cfg.vocab_size
    else:
        out["lm_head"] = 3 * 4 * tokens * model_cfg.vocab_size
    out["runtime"] = RUNTIME_OVERHEAD
    out["total"] = sum(out.values())
    return out


def available_bytes(device: torch.device) -> int:
    """Memory a step may still take: free device memory on CUDA, else the system's available RAM (CPU and MPS,
    whose memory is the system's)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def _gb(b: float) -> str:
    return f"{b / GB:.1f} GB"


def describe(est: dict[str, int]) -> str:
    """'12.3 GB (weights 0.4, grads 0.4, optimizer 0.8, activations 10.2, lm_head 0.2, runtime 0.4)'."""
    parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in est.items() if k != "total")
    return f"{_gb(est['total'])} ({parts})"


def what_fits(model_cfg: ModelConfig, batch: int, seq_len: int, accumulation: int, dtype: torch.dtype,
              optimizer: str, activation_checkpointing: bool, chunked_loss: bool, budget: int,
              matmul_attention: bool = False) -> list[str]:
    """Settings that keep the same tokens per optimizer step and fit in `budget` bytes (empty if none does)."""
    def est(b: int, ac: bool, cl: bool, mm: bool = matmul_attention) -> int:
        return estimate_train_memory(model_cfg, b, seq_len, dtype, optimizer, ac, cl, mm)["total"]

    out = []
    if matmul_attention and est(batch, activation_checkpointing, chunked_loss, False) <= budget:
        out.append(f"attention sdpa (about {_gb(est(batch, activation_checkpointing, chunked_loss, False))}, slower "
                   "on the CPU under bf16)")
    if not chunked_loss and est(batch, activation_checkpointing, True) <= budget:
        out.append(f"chunked_loss true (about {_gb(est(batch, activation_checkpointing, True))})")
    if not activation_checkpointing and est(batch, True, True) <= budget:
        out.append(f"activation_checkpointing true (about {_gb(est(batch, True, True))}, a third more compute)")
    b = batch
    while b > 1:
        b = (b + 1) // 2
        if est(b, activation_checkpointing, chunked_loss) <= budget:
            steps = accumulation * -(-batch // b)
            out.append(f"batch_size {b} with accumulation_steps {steps} (about "
                       f"{_gb(est(b, activation_checkpointing, chunked_loss))}, {b * steps} sequences a step)")
            break
    return out


def set_attention(model: torch.nn.Module, machine: Any, device: torch.device, dtype: torch.dtype, seq_len: int) -> bool:
    """Set every Attention's speed switch from `machine.attention` (TrainConfig.machine) for training in `dtype` on
    `device`; returns whether the matmul path is on. A reference model whose log-probabilities are compared with the
    trained one's (DPO's cache, RL's KL) is set the same way, so the two differ by training, not by rounding."""
    gpt = getattr(model, "module", model)
    matmul = use_matmul_attention(machine.attention, device, dtype if dtype in SIXTEEN_BIT else None, seq_len)
    for module in gpt.modules():
        if isinstance(module, Attention):
            module.use_matmul = matmul
    return matmul


def plan_memory(model: torch.nn.Module, machine: Any, batch: int, seq_len: int, accumulation: int,
                optimizer: str, device: torch.device, dtype: torch.dtype) -> dict[str, int] | None:
    """Set the memory switches on the model (a GPT, possibly wrapped) from `machine` (TrainConfig.machine), then
    estimate the step's peak and raise InsufficientMemory when it cannot fit, naming what would.

    Returns the estimate (bytes by part), or None for a model that is not a minigpt GPT.
    """
    gpt = getattr(model, "module", model)  # DDP / compile wrappers keep the GPT as .module
    if not isinstance(gpt, GPT):
        return None
    gpt.activation_checkpointing = bool(machine.activation_checkpointing)
    gpt.chunked_loss = bool(machine.chunked_loss)
    matmul = set_attention(gpt, machine, device, dtype, seq_len)
    est = estimate_train_memory(gpt.config, batch, seq_len, dtype, optimizer, gpt.activation_checkpointing,
                                gpt.chunked_loss, matmul)
    # the weights exist already (the model is built and on its device): the step needs the rest on top
    weights = 4 * gpt.config.num_params()
    avail = available_bytes(device)
    logger.info("memory: a %d x %d step needs about %s; %s available on %s", batch, seq_len, describe(est),
                _gb(avail + weights), device)
    if machine.check_memory and est["total"] - weights > avail:
        fits = what_fits(gpt.config, batch, seq_len, accumulation, dtype, optimizer, gpt.activation_checkpointing,
                         gpt.chunked_loss, avail + weights, matmul)
        advice = ("; what would fit: " + "; or ".join(fits)) if fits else \
            "; nothing at this sequence length fits: use a smaller model or a shorter seq_len"
        raise InsufficientMemory(
            f"batch_size {batch} x seq_len {seq_len}: a training step needs about {describe(est)}, but only "
            f"{_gb(avail + weights)} is available on {device} (weights included){advice}. "
            "check_memory false skips this check.")
    return est

