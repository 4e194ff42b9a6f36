"""Decode steps in C (kernels/decode_step.c next to this file), compiled on first use.

A decode step reads every weight once and does little arithmetic with it (two FLOPs a weight per
row); in eager PyTorch on a CPU the ~20 small ops a layer cost more in dispatch than in compute. The C
step does the whole forward for one new token of each row in one call, reads each weight once for
all rows, and can read int8 weights (a quarter of the bytes) with one float32 scale per output row.

The library is built by `minigpt.native.build_library` (the system C compiler, cached by source, flags
and machine). Without a compiler, `load_library()` returns None and generation decodes with the model's
forward; nothing else changes.
"""
from __future__ import annotations

import ctypes
import logging
import subprocess
from pathlib import Path
from typing import Sequence

import torch

from ..config import ModelConfig
from ..native import build_library
from ..model.gpt import GPT, KVCache

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "decode_step.c"
QUANTIZE_CHOICES = (None, "int8")

_LAYER_SLOTS = 14  # mirrors L_N in decode_step.c
_GLOBAL_SLOTS = 6  # mirrors G_N


class _Dims(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in
                ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "capacity",
                 "int8", "n_threads")] + [("rms_norm_eps", ctypes.c_float), ("qk_norm", ctypes.c_int32),
                                          ("relu2", ctypes.c_int32)]


_library: ctypes.CDLL | None = None
_load_failed = False


def load_library() -> ctypes.CDLL | None:
    """The compiled decode step, building it on first use; None (logged once) when it cannot be built."""
    global _library, _load_failed
    if _library is None and not _load_failed:
        try:
            lib = ctypes.CDLL(str(build_library(SOURCE)))
            lib.mg_decode_step.restype = ctypes.c_int
            lib.mg_decode_step.argtypes = [ctypes.POINTER(_Dims), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                           ctypes.c_void_p, ctypes.c_void_p]
            lib.mg_scratch_floats.restype = ctypes.c_int64
            lib.mg_scratch_floats.argtypes = [ctypes.POINTER(_Dims), ctypes.c_int64]
            _library = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _load_failed = True
            logger.warning("native decode step unavailable, decoding with the model's forward: %s", e)
    return _library


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w ~= q * scale[:, None], |q| <= 127."""
    scale = w.detach().float().abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weights int8 values and per-row scales stand for."""
    return q.float() * scale[:, None]


def quantized_copy(model: GPT, quantize: str | None = "int8") -> GPT:
    """A copy of `model` whose projection and head weights carry the rounding of `quantize` (stored
    back in the model's dtype): the native int8 step's weights, exactly, for the model's own forward,
    loss and evaluation. The embedding stays exact, as in the native step (the head is untied for
    that). A LoRA adapter's update is rounded into its layer's weight, as the native step reads it."""
    import copy

    out = copy.deepcopy(model)
    if check_quantize(quantize) is None:
        return out
    with torch.no_grad():
        for blk in out.layers:
            for lin in block_projections(blk):
                lin.weight.copy_(dequantize(*quantize_int8(effective_weight(lin))))
                if getattr(lin, "lora_B", None) is not None:
                    lin.lora_B.zero_()  # its update is in the rounded weight now
        head = out.lm_head.weight
        out.lm_head.weight = torch.nn.Parameter(dequantize(*quantize_int8(head)).to(head.dtype), head.requires_grad)
    return out


def check_quantize(quantize: str | None) -> str | None:
    """None or "int8" (other spellings of "no quantisation" map to None); ValueError otherwise."""
    if quantize in ("", "none", "None", "fp32", "float32"):
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r}: expected one of None, 'int8'")
    return quantize


def effective_weight(linear: torch.nn.Module) -> torch.Tensor:
    """The weight a linear layer applies: its own, plus a LoRA adapter's low-rank update if it has one
    (lora.LoRALinear), so generation during or after adapter training uses what the forward uses."""
    delta = getattr(linear, "delta_weight", None)
    w = linear.weight
    return w if delta is None else (w.float() + delta()).to(w.dtype)


def block_projections(blk: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """A block's linear layers in the decode steps' order: q, k, v, o, then the MLP's gate (SwiGLU only),
    up and down."""
    a, m = blk.self_attn, blk.mlp
    gate = (m.gate_proj,) if hasattr(m, "gate_proj") else ()
    return a.q_proj, a.k_proj, a.v_proj, a.o_proj, *gate, m.up_proj, m.down_proj


def projection_weights(model: GPT) -> tuple[list[tuple[torch.Tensor | None, ...]], torch.Tensor]:
    """Per layer (input norm, qkv, o, post norm, gate_up, down, q norm, k norm) with q/k/v and gate/up
    (or up alone, relu2) concatenated in the order the C step expects, and the output head weight.
    The q/k norms are None without qk_norm."""
    layers = []
    with torch.no_grad():
        for blk in model.layers:
            q, k, v, o, *mlp_in, down = (effective_weight(lin) for lin in block_projections(blk))
            a = blk.self_attn
            qn, kn = (a.q_norm.weight, a.k_norm.weight) if model.config.qk_norm else (None, None)
            layers.append((blk.input_layernorm.weight, torch.cat([q, k, v]), o, blk.post_attention_layernorm.weight,
                           torch.cat(mlp_in), down, qn, kn))
        head = effective_weight(model.lm_head)
    return layers, head


class NativeDecoder:
    """Decode steps through the C library, on float32 or int8 copies of a CPU model's weights.

    `step(tokens, positions, cache, pads)` writes K/V into `cache` (a KVCache, e.g. filled by the
    model's prefill) at slot `cache.length` for every row, advances it, and returns float32 logits of
    shape (B, vocab). Row b's first pads[b] cache slots are left padding, never attended to.
    """

    def __init__(self, model: GPT, quantize: str | None = None, n_threads: int | None = None) -> None:
        """Float32 weights that need no concatenation (norms, o, down, embedding, an untied head) are
        read in place; q/k/v and gate/up are concatenated once; with int8 all projections are quantised."""
        lib = load_library()
        if lib is None:
            raise RuntimeError("the native decode step could not be built; see the warning above")
        self.lib = lib
        self.quantize = check_quantize(quantize)
        cfg: ModelConfig = model.config
        self.cfg = cfg
        q8 = self.quantize == "int8"
        layers, head = projection_weights(model)

        def pack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            w = w.detach().float().contiguous()
            return quantize_int8(w) if q8 else (w, None)

        self._keep: list[torch.Tensor] = []  # owns every buffer whose address the C side holds

        def ptr(t: torch.Tensor | None) -> int | None:
            if t is None:
                return None
            t = t.detach().float().contiguous() if t.dtype not in (torch.float32, torch.int8) else t.detach().contiguous()
            self._keep.append(t)
            return t.data_ptr()

        self._weight_ptrs: list[list[int | None]] = []
        for w_in, w_qkv, w_o, w_post, w_gu, w_down, w_qn, w_kn in layers:
            row: list[int | None] = [ptr(w_in)]
            for w in (w_qkv, w_o):
                row += [ptr(t) for t in pack(w)]
            row.append(ptr(w_post))
            for w in (w_gu, w_down):
                row += [ptr(t) for t in pack(w)]
            row += [ptr(w_qn), ptr(w_kn)]
            self._weight_ptrs.append(row)
        head_w, head_s = pack(head)
        self._globals = (ctypes.c_void_p * _GLOBAL_SLOTS)(
            ptr(model.embed_tokens.weight), ptr(model.norm.weight), ptr(head_w), ptr(head_s),
            ptr(model.rope_cos), ptr(model.rope_sin))
        self.n_threads = n_threads or torch.get_num_threads()
        self._layers = (ctypes.c_void_p * (_LAYER_SLOTS * cfg.n_layers))()
        self._bound: tuple | None = None
        self._dims: _Dims | None = None
        self._scratch: torch.Tensor | None = None
        self.weight_bytes = sum(t.numel() * t.element_size() for t in self._keep)

    def _bind_cache(self, cache: KVCache) -> None:
        # Identity of the buffer lists (held here, so their ids cannot be reused) and the capacity:
        # checked every step, so it must cost nothing; KVCache.select() makes new lists.
        bound = self._bound
        if bound is not None and bound[0] is cache.keys and bound[1] is cache.values and bound[2] == cache.capacity:
            return
        cfg = self.cfg
        B = cache.keys[0].shape[0]
        for t in cache.keys + cache.values:
            if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() or t.shape[0] != B:
                raise ValueError(f"native decode needs contiguous float32 CPU caches, got "
                                 f"{tuple(t.shape)} {t.dtype} on {t.device}")
        for i, row in enumerate(self._weight_ptrs):
            self._layers[i * _LAYER_SLOTS:(i + 1) * _LAYER_SLOTS] = row + [cache.keys[i].data_ptr(),
                                                                           cache.values[i].data_ptr()]
        cap = cache.capacity
        self._dims = _Dims(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
                           cfg.vocab_size, cap, int(self.quantize == "int8"), self.n_threads, cfg.rms_norm_eps,
                           int(cfg.qk_norm), int(cfg.mlp == "relu2"))
        self._dims_ref = ctypes.byref(self._dims)
        self._scratch = torch.empty(self.lib.mg_scratch_floats(self._dims_ref, B), dtype=torch.float32)
        self._logits = torch.empty((B, cfg.vocab_size), dtype=torch.float32)
        self._rows = [(ctypes.c_int64 * B)() for _ in range(3)]  # tokens, positions, pads
        self._batch = B
        self._bound = (cache.keys, cache.values, cap)
        self._scratch_ptr, self._logits_ptr = self._scratch.data_ptr(), self._logits.data_ptr()

    def step(self, tokens: Sequence[int] | int, positions: Sequence[int] | int, cache: KVCache,
             pads: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (B, vocab) for each row's token at its position. The tensor is a buffer the next step
        overwrites: use it (or clone it) before stepping again."""
        self._bind_cache(cache)
        B = self._batch
        tokens = [tokens] if isinstance(tokens, int) else tokens
        positions = [positions] * B if isinstance(positions, int) else positions
        pads = pads or [0] * B
        if not len(tokens) == len(positions) == len(pads) == B:
            raise ValueError(f"native decode step: {len(tokens)} tokens, {len(positions)} positions and "
                             f"{len(pads)} pads for a cache of {B} rows")
        if max(positions) >= self.cfg.max_seq_len:
            raise ValueError(f"position {max(positions)} is past max_seq_len={self.cfg.max_seq_len}")
        tok_a, pos_a, pad_a = self._rows
        tok_a[:], pos_a[:], pad_a[:] = tokens, positions, pads
        rc = self.lib.mg_decode_step(self._dims_ref, self._layers, self._globals, B, tok_a, pos_a, pad_a,
                                     cache.length, self._scratch_ptr, self._logits_ptr)
        if rc != 0:
            raise ValueError(f"native decode step refused tokens={list(tokens)} positions={list(positions)} "
                             f"pads={list(pads)} slot={cache.length} (vocab {self.cfg.vocab_size}, "
                             f"cache capacity {cache.capacity})")
        cache.length += 1
        return self._logits
