"""Model and training configuration: dataclasses, presets and their validation.

Field names are snake_case and follow Hugging Face's Llama names (`n_kv_heads`, `rope_theta`, `rms_norm_eps`)
so users recognise them. TrainConfig is composed of one small dataclass per concern (optim, schedule,
evaluation, checkpoints, logging, machine, guard), read grouped: `cfg.optim.learning_rate`.

The package: this module (ModelConfig and the presets), `train` (TrainConfig and its groups), `files` (strict
YAML and run names); everything is importable from `minigpt.config`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .files import check_run_name, load_yaml_strict
from .train import (DEVICE_PATTERN, GUARD_RESUME_MARGIN, TRAIN_GROUPS, CheckpointConfig, EvalConfig, GuardConfig,
                    LoggingConfig, MachineConfig, OptimConfig, ScheduleConfig, TrainConfig, Check, check_config,
                    non_finite_fields)

__all__ = ["PRESETS", "MLP_HIDDEN", "ModelConfig", "TrainConfig", "OptimConfig", "ScheduleConfig",
           "EvalConfig", "CheckpointConfig", "LoggingConfig", "MachineConfig", "GuardConfig", "TRAIN_GROUPS",
           "GUARD_RESUME_MARGIN", "DEVICE_PATTERN", "Check", "check_config", "non_finite_fields", "load_yaml_strict", "check_run_name"]

# Shapes of the presets. `small` is MiniMind2-small's shape (d512, 8 layers, 8 heads, 2 KV heads).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256),
    "small": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=512),
    "medium": dict(d_model=768, n_layers=16, n_heads=12, n_kv_heads=4, max_seq_len=1024),
}



def _swiglu_hidden(d_model: int) -> int:
    # 8/3 * d keeps the SwiGLU MLP's parameter count equal to a 4*d GELU MLP; round up to 64 for fast matmuls.
    return 64 * math.ceil(d_model * 8 / 3 / 64)


# relu2: 4*d (rounded up to 64); two matrices of 4*d hold about SwiGLU's parameters (three of 8/3*d): equal sizes.
MLP_HIDDEN = {"swiglu": _swiglu_hidden, "relu2": lambda d_model: 64 * math.ceil(d_model * 4 / 64)}


@dataclass
class ModelConfig:
    vocab_size: int = 6400
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 0  # 0 = derived from d_model (swiglu: 8/3*d, relu2: 4*d, rounded up to 64)
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_word_embeddings: bool = True  # False: the LM head has its own matrix
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before RoPE (Qwen3's q_norm/k_norm)
    mlp: str = "swiglu"  # swiglu: down(silu(gate(x)) * up(x)) | relu2: down(relu(up(x))^2)
    attention_bias: bool = False  # biases on q/k/v projections (Qwen2's layout; imported models only)
    head_dim: int = 0  # 0 = d_model / n_heads; imported Qwen3 / Llama models may set another width per head

    MLPS: ClassVar[tuple[str, ...]] = ("swiglu", "relu2")

    def __post_init__(self) -> None:
        if not self.d_ff:  # an unknown mlp is reported by the checks
            self.d_ff = MLP_HIDDEN.get(self.mlp, _swiglu_hidden)(self.d_model)
        if not self.head_dim and isinstance(self.n_heads, int) and self.n_heads > 0:  # derived; a bad n_heads is reported by the checks
            self.head_dim = self.d_model // self.n_heads
        check_config(self)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        # head_dim is left out when it is the derived d_model / n_heads (it follows d_model when read back).
        return {k: v for k, v in dataclasses.asdict(self).items()
                if not (k == "head_dim" and v == self.d_model // self.n_heads)}

    def checks(self) -> list[Check]:
        def positive(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        sizes = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len", "head_dim")
        out: list[Check] = [(positive(getattr(self, k)), k, f"a positive integer, got {getattr(self, k)!r}") for k in sizes]
        if not all(ok for ok, _, _ in out):
            return out  # the shape relations below need positive integers
        return out + [
            (not (self.d_model % self.n_heads and self.head_dim == self.d_model // self.n_heads), "d_model",
             f"a multiple of n_heads={self.n_heads} (or set head_dim), got {self.d_model}"),
            (self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
             f"a divisor of n_heads={self.n_heads}, got {self.n_kv_heads}"),
            (self.head_dim % 2 == 0, "head_dim", f"an even number (RoPE rotates pairs), got {self.head_dim}"),
            (0.0 <= self.dropout < 1.0, "dropout", f"a value in [0, 1), got {self.dropout}"),
            (self.rope_theta > 0, "rope_theta", f"a positive number, got {self.rope_theta}"),
            (self.mlp in self.MLPS, "mlp", f"one of {self.MLPS}, got {self.mlp!r}"),
        ]

    def validate(self) -> None:
        """Check again after fields were changed in place (construction checks already)."""
        check_config(self)

    def num_params(self) -> int:
        """Parameter count from the shapes alone (tied embeddings counted once)."""
        d, q, kv = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attn = d * q * 2 + d * kv * 2 + ((q + 2 * kv) if self.attention_bias else 0)
        mlp = (3 if self.mlp == "swiglu" else 2) * d * self.d_ff
        per_layer = attn + mlp + 2 * d + (2 * self.head_dim if self.qk_norm else 0)
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head
