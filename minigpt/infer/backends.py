"""Which decode step a generator uses, and the weight copies it keeps for it.

- The model's own forward (`GPT.forward(cache=...)`) always prefills the prompts, and is the decode
  step on CUDA and MPS, in bf16/fp16, without a C compiler, when the model has forward hooks (the C
  step would skip them), and with decode_backend="model".
- Otherwise, on a float32 CPU model, the C step of native_decode.py is the decode step. It reads
  LoRA adapters' updates (`effective_weight`), so adapters need no fallback.

The C step mirrors model/gpt.py by hand. So that a change to the model can never silently decode with
stale math, a new C step is checked against the model's forward before use (one step after a short
prompt, `kernel_mismatch`), and a model with parameters the C step does not read is not given to it:
either way generation logs why and decodes with the model's forward (decode_backend="native" raises).

quantize="int8": the forward runs on `quantized_copy(model)`, whose projection and head weights carry
exactly the rounding of the C step's int8 weights, so the prompt, the C step and a forward step give
the same tokens. Copies are rebuilt when the model's weights change (`weights_signature`).
"""
from __future__ import annotations

import logging
import re

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..model.gpt import GPT
from .decode import model_step, prefill
from .native_decode import NativeDecoder, check_quantize, load_library, quantized_copy

logger = logging.getLogger(__name__)

DECODE_BACKENDS = ("auto", "native", "model")


def check_backend(name: str) -> str:
    """`name` when it is a backend; ValueError naming the choices otherwise."""
    if name not in DECODE_BACKENDS:
        raise ValueError(f"decode_backend={name!r}: expected one of {', '.join(DECODE_BACKENDS)}")
    return name


# Optimizer steps taken in this process, counted by a global post-step hook: torch's fused CPU AdamW updates
# parameters without moving their version counters, so a signature of versions alone would miss its updates.
_optimizer_steps = 0


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def weights_signature(model: GPT) -> tuple:
    """Changes when any parameter is replaced, changed in place (its version counter), or may have been changed
    by any torch optimizer's step: a holder of derived weight copies compares it to know they are stale. No pass
    over the weights (summing them cost ~15% of a tiny model's 64-token generation)."""
    return (_optimizer_steps, tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters()))


# The parameters the C step reads (LoRA adapters included, through their effective weight); any other
# parameter is something the model computes that the C step would skip. The q/k norms are read only
# when the config says qk_norm (a q_norm added to another model is something the step would skip).
KERNEL_PARAMETERS = re.compile(
    r"embed_tokens\.weight|norm\.weight|lm_head\.weight|layers\.\d+\.("
    r"input_layernorm|post_attention_layernorm|self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    r"\.(weight|lora_A|lora_B)")
QK_NORM_PARAMETERS = re.compile(r"layers\.\d+\.self_attn\.[qk]_norm\.weight")
# Largest |logit| difference accepted between the C step and the forward, relative to the logits' scale:
# float32 sums in another order differ by ~1e-6; a model change the C step lacks shows up far above this.
KERNEL_TOLERANCE = 1e-3


def unknown_parameters(model: GPT) -> list[str]:
    """Parameter names the C step does not read (a model variant it does not implement)."""
    qk = model.config.qk_norm
    return [n for n, _ in model.named_parameters()
            if not (KERNEL_PARAMETERS.fullmatch(n) or (qk and QK_NORM_PARAMETERS.fullmatch(n)))]


def missing_parameters(model: GPT) -> list[str]:
    """Parameter names the C step reads but the model lacks (modules that differ from what its config says)."""
    have = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
    cfg = model.config
    mlp = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj") if cfg.mlp == "swiglu" else ("mlp.up_proj", "mlp.down_proj")
    attn_norms = ("self_attn.q_norm", "self_attn.k_norm") if cfg.qk_norm else ()
    need = [f"layers.{i}.{m}" for i in range(cfg.n_layers)
            for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      *attn_norms, *mlp)]
    return [n for n in need if n not in have]


def kernel_mismatch(native: NativeDecoder, model: GPT) -> float:
    """Largest |logit difference| between one C step and one forward step after the same short prompt,
    divided by the logits' largest magnitude (at least 1)."""
    V = model.config.vocab_size
    prompt, nxt = [[5 % V, 17 % V, 3 % V]], [7 % V]
    with torch.inference_mode():
        _, cache, batch = prefill(model, prompt, 0, 1)
        c_logits = native.step(nxt, batch.positions, cache, batch.pads).clone()
        _, cache, batch = prefill(model, prompt, 0, 1)
        f_logits = model_step(model, nxt, cache, batch)
    return ((c_logits - f_logits).abs().max() / f_logits.abs().max().clamp(min=1.0)).item()


def _hooked(model: GPT) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class DecodeSteps:
    """The model a generator's forward runs on and its C decode step, both kept until the weights change."""

    def __init__(self, model: GPT, quantize: str | None = None, backend: str = "auto") -> None:
        self.model = model
        self.quantize = check_quantize(quantize)
        self.backend = check_backend(backend)
        self.native: NativeDecoder | None = None
        self._rounded: GPT | None = None
        self._signature: tuple | None = None

    def _refresh(self) -> None:
        signature = weights_signature(self.model)
        if signature != self._signature:
            self._signature, self._rounded, self.native = signature, None, None

    def forward_model(self) -> GPT:
        """The model whose forward prefills (and steps when the C step does not): rounded with int8."""
        self._refresh()
        if self.quantize is None:
            return self.model
        if self._rounded is None:
            self._rounded = quantized_copy(self.model, self.quantize).eval()
        return self._rounded

    def native_step(self) -> NativeDecoder | None:
        """The C decode step when it applies; None otherwise, or RuntimeError for decode_backend="native"."""
        self._refresh()
        if self.backend == "model":
            return None
        reason = self._native_unavailable()
        if reason is None and self.native is None:
            reason = self._build_checked()
        if reason is None:
            return self.native
        if self.backend == "native":
            raise RuntimeError(f"decode_backend='native' needs a float32 model on the CPU and a C compiler, "
                               f"without forward hooks ({reason}); use decode_backend='auto' to fall back to "
                               "the model's forward")
        return None

    def _build_checked(self) -> str | None:
        """Build the C step and keep it if it agrees with the forward; else the reason it does not."""
        native = NativeDecoder(self.model, self.quantize)
        gap = kernel_mismatch(native, self.forward_model())
        if gap > KERNEL_TOLERANCE:
            reason = (f"the C step disagrees with GPT.forward (relative logit gap {gap:.2g}): the model's code "
                      "changed and minigpt/infer/kernels/decode_step.c does not follow it")
            logger.warning("%s; decoding with the model's forward", reason)
            return reason
        self.native = native
        return None

    def _native_unavailable(self) -> str | None:
        w = self.model.embed_tokens.weight
        if w.device.type != "cpu" or w.dtype != torch.float32:
            return f"{w.dtype} on {w.device}"
        if _hooked(self.model):
            return "the model has forward hooks"
        unknown = unknown_parameters(self.model)
        if unknown:
            return f"the C step does not read {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}"
        missing = missing_parameters(self.model)
        if missing:
            return f"the model has no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (a variant the C step lacks)"
        cfg = self.model.config
        if cfg.head_dim * cfg.n_heads != cfg.d_model:  # imported models; the C step's buffers assume the equality
            return (f"head_dim={cfg.head_dim} differs from d_model / n_heads = {cfg.d_model}/{cfg.n_heads}, which the "
                    "C step assumes")
        if load_library() is None:
            return "the C step could not be built: see the warning above"
        return None
