"""Which decode step a generator uses, and the weight copies it keeps for it.

- The model's own forward (`GPT.forward(cache=...)`) always prefills the prompts, and is the decode
  step on CUDA and MPS, in bf16/fp16, without a C compiler, when the model has forward hooks (the C
  step would skip them), and with decode_backend="model".
- Otherwise, on a float32 CPU model, the C step of native_decode.py is the decode step. It reads
  LoRA adapters' updates (`effective_weight`), so adapters need no fallback.

quantize="int8": the forward runs on `quantized_copy(model)`, whose projection and head weights carry
exactly the rounding of the C step's int8 weights, so the prompt, the C step and a forward step give
the same tokens. Copies are rebuilt when the model's weights change (`weights_signature`).
"""
from __future__ import annotations

import torch

from ..model.gpt import GPT
from .native_decode import NativeDecoder, check_quantize, load_library, quantized_copy

DECODE_BACKENDS = ("auto", "native", "model")
_ALIASES = {"torch": "model"}  # the PyTorch step's former name, still accepted from saved parameters


def check_backend(name: str) -> str:
    """The canonical backend name; ValueError naming the choices otherwise."""
    canonical = _ALIASES.get(name, name)
    if canonical not in DECODE_BACKENDS:
        raise ValueError(f"decode_backend={name!r}: expected one of {', '.join(DECODE_BACKENDS)} "
                         "('torch' is accepted as model)")
    return canonical


def weights_signature(model: GPT) -> tuple:
    """Changes when any parameter is replaced or changed in place (its version counter moves), e.g. by
    more training: a holder of derived weight copies compares it to know they are stale."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


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
        if reason is None:
            if self.native is None:
                self.native = NativeDecoder(self.model, self.quantize)
            return self.native
        if self.backend == "native":
            raise RuntimeError(f"decode_backend='native' needs a float32 model on the CPU and a C compiler, "
                               f"without forward hooks ({reason}); use decode_backend='auto' to fall back to "
                               "the model's forward")
        return None

    def _native_unavailable(self) -> str | None:
        w = self.model.embed_tokens.weight
        if w.device.type != "cpu" or w.dtype != torch.float32:
            return f"{w.dtype} on {w.device}"
        if _hooked(self.model):
            return "the model has forward hooks"
        if load_library() is None:
            return "the C step could not be built: see the warning above"
        return None
