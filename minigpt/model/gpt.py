"""The reference model: a small decoder-only transformer in the Llama family, read top to bottom.

    token ids -> embed_tokens -> n_layers x Block -> norm -> lm_head -> logits
    Block:  x = x + Attention(RMSNorm(x));  x = x + MLP(RMSNorm(x))

RMSNorm, rotary position embeddings (RoPE), grouped-query attention through
`scaled_dot_product_attention`, a SwiGLU MLP and tied input/output embeddings. Parameter names are
those of Hugging Face's `modeling_llama.py`, so export is a rename, not a rewrite.

Variants are module choices made in __init__ from the config (forward has one path):
`qk_norm` adds per-head RMSNorms `q_norm`/`k_norm` on queries and keys before RoPE (Qwen3's layout),
`mlp="relu2"` swaps SwiGLU for down(relu(up(x))^2), `tie_word_embeddings=False` gives the head its own matrix,
`attention_bias` gives q/k/v biases (Qwen2), and `head_dim` may differ from d_model / n_heads (imported models).

One forward serves training (`targets`), evaluation and cached decoding (`cache`): a decode step is the
same code with T = 1 and the keys/values of earlier positions read from a `KVCache`.
Speed paths live elsewhere and are checked against this file: the C decode step
(`minigpt/infer/native_decode.py`, tests/test_native_decode.py), attention as plain matmuls for CPU bf16 training
(`model/matmul_attention.py`, behind `Attention.use_matmul`) and `torch.compile` of this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .chunked_loss import chunked_cross_entropy
from .matmul_attention import matmul_attention


class RMSNorm(nn.Module):
    """x / rms(x) * weight. Normalised in float32 (as HF Llama does), so logits match under autocast too."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_len, head_dim) in the 'rotate half' layout HF Llama uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i + D/2}) pair by its position's angle. x: (B, H, T, D); cos/sin: (T, D) or (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


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
        """Keep only batch rows `rows` (finished sequences leave a batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values after the filled positions; return all keys/values so far."""
        start, T = self.length, k.shape[2]
        self.keys[layer][:, :, start:start + T] = k
        self.values[layer][:, :, start:start + T] = v
        return self.keys[layer][:, :, :start + T], self.values[layer][:, :, :start + T]


class Attention(nn.Module):
    """Grouped-query self-attention: n_heads query heads share n_kv_heads key/value heads."""

    # Speed switch, set by the Trainer from TrainConfig.machine.attention (never saved): the same attention as
    # two batched matmuls (model/matmul_attention.py), faster than SDPA's CPU kernel under bf16 autocast.
    use_matmul: bool = False

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer  # index into the KV cache
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # attention_bias: q/k/v projections with biases (Qwen2's layout); o_proj never has one.
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        # QK-norm: RMSNorm over each head's dims of q and k (Qwen3); Identity keeps the Llama attention.
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else nn.Identity()
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # Causal without an explicit mask only when queries and keys line up (training, or an empty cache).
        is_causal = attn_mask is None and k.shape[2] == T and T > 1
        dropout_p = self.dropout if self.training else 0.0
        if self.use_matmul:
            y = matmul_attention(q, k, v, attn_mask, is_causal, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p,
                                               enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ReLU2MLP(nn.Module):
    """ReLU squared: down(relu(up(x))^2), no gate (So et al. 2021, "Primer"); the `mlp="relu2"` variant."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


MLPS: dict[str, type[nn.Module]] = {"swiglu": MLP, "relu2": ReLU2MLP}


class Block(nn.Module):
    """Pre-norm residual block: attention, then the MLP, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.mlp = MLPS[cfg.mlp](cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class GPT(nn.Module):
    # Memory switches, set by the Trainer from TrainConfig.machine; not part of the architecture, never saved.
    activation_checkpointing: bool = False  # recompute each Block in the backward (torch.utils.checkpoint)
    chunked_loss: bool = False  # training loss via model/chunked_loss.py (returns no logits)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
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
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)  # attention_bias: start as the bias-free layer

    def num_params(self, trainable_only: bool = False) -> int:
        """Unique parameters (the tied head is counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def rope(self, positions: torch.Tensor | None, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions start..start+T-1, or gathered per row for explicit (B, T) positions."""
        if positions is None:
            if start + T > self.rope_cos.shape[0]:
                raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
            return self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        # Per-row positions (left-padded batches, packed sequences): shape (B, 1, T, D).
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
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return (logits, loss); loss is None without targets, logits None when `chunked_loss` computed the loss.

        targets: (B, T) next-token ids, -100 where a position carries no loss (padding, prompts in SFT).
        attn_mask: bool (B, 1, T, S), True = may attend; S counts the cached keys plus these T.
        positions: (B, T) position ids, for left-padded batches and packed sequences.
        cache: keys/values of earlier positions; this call's are appended and `cache.length` advances.
        last_only: logits of the final position only (a prompt's prefill needs no others).
        """
        B, T = input_ids.shape
        cos, sin = self.rope(positions, cache.length if cache is not None else 0, T)
        x = self.drop(self.embed_tokens(input_ids))
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for block in self.layers:
            if recompute:  # keep only each block's input; its inside is recomputed in the backward
                x = checkpoint(block, x, cos, sin, attn_mask, None, use_reentrant=False)
            else:
                x = block(x, cos, sin, attn_mask, cache)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x[:, -1:] if last_only else x), None
        if self.chunked_loss and self.training and torch.is_grad_enabled():
            # the same loss without the B x T x vocab logits (model/chunked_loss.py); no logits are returned
            return None, chunked_cross_entropy(x, self.lm_head.weight, targets)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss
