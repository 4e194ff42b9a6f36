"""A small decoder-only transformer in the Llama family.

RMSNorm, rotary position embeddings (RoPE), a SwiGLU MLP, grouped-query attention with
`scaled_dot_product_attention`, tied input/output embeddings and a KV cache for decoding.
Parameter names mirror Hugging Face's `modeling_llama.py`, so export is a rename, not a rewrite.

Speed on a CPU (outside the matmuls a training step is memory-bound elementwise work): in eager fp32
each block projects q/k/v and gate/up with one matmul each (the weights are concatenated at forward
time, so the parameters, their shapes and state-dict names stay Llama's), folds each RMSNorm's weight
into the following projection's weight ((x*w) @ W.T == x @ (W*w).T, a weight-sized multiply instead of
activation-sized ones), and runs the norm, RoPE (q and k in one pass, v split off without copies in
backward) and SwiGLU as small autograd Functions with hand-written backwards. Under `torch.compile`,
in low precision, or when a projection is wrapped (LoRA) or hooked, the plain formulas run instead
(inductor fuses them). tests/test_model.py checks the two paths against each other.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig

logger = logging.getLogger(__name__)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _eager_fp32(*ts: torch.Tensor) -> bool:
    """Whether the hand-written autograd Functions below apply: eager mode, fp32 tensors."""
    return not _compiling() and all(t.dtype == torch.float32 for t in ts)


def _inv_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) over the last dim, keepdim; one pass over x."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()


class _RMSUnitFn(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps), no weight (the block folds it into the next matmul's weight).

    F.rms_norm on a CPU is a composite whose backward is ten multiplies and four sums; this is one
    reduction and one multiply forward, a dot and two passes backward.
    """

    @staticmethod
    def forward(ctx, x, eps):
        r = _inv_rms(x, eps)
        xhat = x * r
        ctx.save_for_backward(xhat, r)
        return xhat

    @staticmethod
    def backward(ctx, g):
        xhat, r = ctx.saved_tensors
        # d/dx = r * (g - xhat * mean(g * xhat))
        coef = torch.linalg.vecdot(g, xhat).unsqueeze_(-1).mul_(r).div_(-xhat.shape[-1])
        return torch.mul(g, r).addcmul_(xhat, coef), None


class _RMSNormFn(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * w (the final norm, whose weight is the tied head's input)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        r = _inv_rms(x, eps)
        xhat = x * r
        ctx.save_for_backward(xhat, r, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, g):
        xhat, r, weight = ctx.saved_tensors
        gw = (g * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        gx = None
        if ctx.needs_input_grad[0]:
            gxhat = g * weight
            coef = torch.linalg.vecdot(gxhat, xhat).unsqueeze_(-1).div_(-xhat.shape[-1])
            gx = torch.addcmul(gxhat, xhat, coef).mul_(r)
        return gx, gw, None


def rms_unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without its weight, computed in fp32 (as HF Llama does) and returned in x's dtype."""
    if _eager_fp32(x):
        return _RMSUnitFn.apply(x, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _eager_fp32(x, self.weight):
            return _RMSNormFn.apply(x, self.weight, self.eps)
        # Normalise in fp32 as HF Llama does, so exported logits match under autocast too.
        return self.weight * rms_unit(x, self.eps)


def _plain_linear(*mods: nn.Module) -> bool:
    """True when the modules are bare nn.Linear (no LoRA wrapper, no hooks): their weights may be fused."""
    return all(type(m) is nn.Linear and m.bias is None and not m._forward_hooks and not m._forward_pre_hooks
               for m in mods)


def _plain_norm(norm: nn.Module) -> bool:
    return type(norm) is RMSNorm and not norm._forward_hooks and not norm._forward_pre_hooks


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_len, head_dim) in the 'rotate half' layout HF Llama uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D) or (B, 1, T, D)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _rope_halves(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, sign: float, out: torch.Tensor) -> None:
    """out = [x1*c - sign*x2*s, x2*c + sign*x1*s]: apply_rope (sign 1) or its transpose (sign -1).

    c, s are the first halves of the cos/sin tables (the second halves repeat them).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, c, out=o1)
    o1.addcmul_(x2, s, value=-sign)
    torch.mul(x2, c, out=o2)
    o2.addcmul_(x1, s, value=sign)


class _QKVRopeFn(torch.autograd.Function):
    """Split a fused (B, T, H + 2*KV, D) projection into q, k, v with RoPE on q and k, in one buffer.

    Forward is one pass over qkv; backward writes the three gradients straight into one (B, T, H + 2*KV, D)
    buffer (autograd's slices would zero-fill, copy and add a full-size gradient per slice).
    """

    @staticmethod
    def forward(ctx, qkv, c, s, n_heads):
        H = n_heads
        KV = (qkv.shape[2] - H) // 2
        out = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
        _rope_halves(qkv[:, :, :H + KV], c, s, 1.0, out[:, :, :H + KV])
        out[:, :, H + KV:] = qkv[:, :, H + KV:]
        ctx.save_for_backward(c, s)
        ctx.heads = (H, KV)
        return out[:, :, :H], out[:, :, H:H + KV], out[:, :, H + KV:]

    @staticmethod
    def backward(ctx, gq, gk, gv):
        c, s = ctx.saved_tensors
        H, KV = ctx.heads
        ref = next(g for g in (gq, gk, gv) if g is not None)
        B, T, _, D = ref.shape
        g = torch.empty((B, T, H + 2 * KV, D), dtype=ref.dtype, device=ref.device)
        for part, lo, hi, rope in ((gq, 0, H, True), (gk, H, H + KV, True), (gv, H + KV, H + 2 * KV, False)):
            if part is None:
                g[:, :, lo:hi].zero_()
            elif rope:
                _rope_halves(part, c, s, -1.0, g[:, :, lo:hi])
            else:
                g[:, :, lo:hi] = part
        return g, None, None, None


def _qkv_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int):
    """(B, T, H + 2*KV, D) -> q (B, H, T, D), k, v (B, KV, T, D), RoPE applied to q and k."""
    cos = cos.transpose(-3, -2) if cos.dim() == 4 else cos.unsqueeze(-2)  # (B, T, 1, D) or (T, 1, D)
    sin = sin.transpose(-3, -2) if sin.dim() == 4 else sin.unsqueeze(-2)
    H, KV = n_heads, (qkv.shape[2] - n_heads) // 2
    if _eager_fp32(qkv, cos):
        half = qkv.shape[-1] // 2
        q, k, v = _QKVRopeFn.apply(qkv, cos[..., :half], sin[..., :half], H)
    else:
        q, k, v = qkv.split([H, KV, KV], dim=2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class _SwiGLUFn(torch.autograd.Function):
    """silu(gate) * up on a fused (..., 2*F) gate/up projection; backward fills one (..., 2*F) buffer."""

    @staticmethod
    def forward(ctx, gu):
        F_ = gu.shape[-1] // 2
        gate, up = gu[..., :F_], gu[..., F_:]
        sg = F.silu(gate)
        ctx.save_for_backward(gu, sg)
        return sg * up

    @staticmethod
    def backward(ctx, g):
        gu, sg = ctx.saved_tensors
        F_ = gu.shape[-1] // 2
        gate, up = gu[..., :F_], gu[..., F_:]
        out = torch.empty(gu.shape, dtype=g.dtype, device=g.device)
        torch.mul(g, sg, out=out[..., F_:])
        torch.ops.aten.silu_backward.grad_input(g * up, gate, grad_input=out[..., :F_])
        return out


def _swiglu(gu: torch.Tensor) -> torch.Tensor:
    if _eager_fp32(gu):
        return _SwiGLUFn.apply(gu)
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass
class KVCache:
    """Preallocated per-layer key/value buffers; `length` is how many positions are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype) -> "KVCache":
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        return cls(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (used when finished sequences leave a batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, attn_mask=None, cache: KVCache | None = None, layer: int = 0,
                norm_weight: torch.Tensor | None = None):
        """x: the normalised input; with norm_weight, x is normalised without its weight and the weight
        is folded into the projection (x * w) @ W.T == x @ (W * w).T, one weight-sized multiply."""
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        if _plain_linear(self.q_proj, self.k_proj, self.v_proj):
            # One matmul for q, k and v; the weights are concatenated here so the parameters keep their names.
            w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            if norm_weight is not None:
                w = w * norm_weight
            q, k, v = _qkv_rope(F.linear(x, w).view(B, T, H + 2 * KV, D), cos, sin, H)
        else:
            if norm_weight is not None:
                x = x * norm_weight
            q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
            k = self.k_proj(x).view(B, T, KV, D).transpose(1, 2)
            v = self.v_proj(x).view(B, T, KV, D).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start:start + T] = k
            cache.values[layer][:, :, start:start + T] = v
            k = cache.keys[layer][:, :, :start + T]
            v = cache.values[layer][:, :, :start + T]
        # Causal without an explicit mask only when queries and keys line up (training, or an empty cache).
        is_causal = attn_mask is None and k.shape[2] == T and T > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, norm_weight: torch.Tensor | None = None) -> torch.Tensor:
        """norm_weight: as in Attention.forward."""
        if _plain_linear(self.gate_proj, self.up_proj, self.down_proj):
            w = torch.cat([self.gate_proj.weight, self.up_proj.weight])
            if norm_weight is not None:
                w = w * norm_weight
            return F.linear(_swiglu(F.linear(x, w)), self.down_proj.weight)
        if norm_weight is not None:
            x = x * norm_weight
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, attn_mask=None, cache=None, layer=0):
        n1, n2 = self.input_layernorm, self.post_attention_layernorm
        if _plain_norm(n1) and _plain_norm(n2) and x.dtype == n1.weight.dtype == n2.weight.dtype == torch.float32:
            # The norms' weights are folded into the next projections (see Attention.forward).
            a = self.self_attn(rms_unit(x, n1.eps), cos, sin, attn_mask, cache, layer, norm_weight=n1.weight)
            x = x + (self.drop(a) if self.drop.p > 0 else a)
            m = self.mlp(rms_unit(x, n2.eps), norm_weight=n2.weight)
        else:
            a = self.self_attn(n1(x), cos, sin, attn_mask, cache, layer)
            x = x + (self.drop(a) if self.drop.p > 0 else a)
            m = self.mlp(n2(x))
        return x + (self.drop(m) if self.drop.p > 0 else m)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Not persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Scaled init of the residual projections (GPT-2): keeps the residual stream's variance flat with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, trainable_only: bool = False) -> int:
        """Unique parameters (the tied head is counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def _rope(self, positions: torch.Tensor | None, start: int, T: int, device):
        if positions is None:
            if start + T > self.rope_cos.shape[0]:
                raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
            return self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        # Per-row positions (left-padded batches, packed sequences): gather, shape (B, 1, T, D).
        return self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ):
        """Return (logits, loss).

        attn_mask: optional bool mask (B, 1, T, S) where True means "may attend"; S is the number of
        keys (cache length + T when a cache is used). positions: optional (B, T) position ids.
        targets: (B, T) with -100 for positions that carry no loss. last_only: compute logits for the
        final position only (generation prefill; saves a vocab-sized matmul per prompt token).
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        cos, sin = self._rope(positions, start, T, input_ids.device)
        x = self.embed_tokens(input_ids)
        if self.drop.p > 0:
            x = self.drop(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, cache, i)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if targets is None:
            logits = self.lm_head(x[:, -1:] if last_only else x)
            return logits, None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def memory_estimate(self, batch_size: int = 8, seq_len: int | None = None) -> dict[str, float]:
        return self.config.memory_estimate(batch_size, seq_len)
