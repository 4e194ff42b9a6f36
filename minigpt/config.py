"""Model and training configuration: dataclasses, presets and their validation.

Field names follow the seeds' flags in snake_case and Hugging Face's Llama names
(`n_kv_heads`, `rope_theta`, `rms_norm_eps`) so users recognise them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Shapes of the presets. `small` is MiniMind2-small's shape (d512, 8 layers, 8 heads, 2 KV heads).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256),
    "small": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, max_seq_len=512),
    "medium": dict(d_model=768, n_layers=16, n_heads=12, n_kv_heads=4, max_seq_len=1024),
}


def _swiglu_hidden(d_model: int) -> int:
    # 8/3 * d keeps the SwiGLU MLP's parameter count equal to a 4*d GELU MLP; round up to 64 for fast matmuls.
    return 64 * math.ceil(d_model * 8 / 3 / 64)


@dataclass
class ModelConfig:
    vocab_size: int = 6400
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 0  # 0 = derived from d_model (SwiGLU 8/3 rule)
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if not self.d_ff:
            self.d_ff = _swiglu_hidden(self.d_model)
        self.validate()

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
        return dataclasses.asdict(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model: {self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"d_model/n_heads must be even for RoPE, got head_dim={self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a value in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta: expected a positive number, got {self.rope_theta}")

    def num_params(self) -> int:
        """Parameter count from the shapes alone (tied embeddings counted once)."""
        d, kv = self.d_model, self.n_kv_heads * self.head_dim
        attn = d * d * 2 + d * kv * 2
        mlp = 3 * d * self.d_ff
        per_layer = attn + mlp + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head

    def memory_estimate(self, batch_size: int = 8, seq_len: int | None = None, bytes_per_param: int = 4) -> dict[str, float]:
        """Rough training-memory estimate in MB: weights, grads, AdamW's two moments and activations.

        Activations: about 34*T*d bytes per token per layer in 16-bit (Korthikanti et al. 2022, without the
        5*h*T^2 attention-matrix term, which SDPA's flash kernels never store); doubled for fp32, the CPU case.
        """
        seq_len = seq_len or self.max_seq_len
        n = self.num_params()
        weights = n * bytes_per_param
        grads = n * bytes_per_param
        adam = 2 * n * 4
        act_per_layer = batch_size * seq_len * 34 * self.d_model * 2
        logits = batch_size * seq_len * self.vocab_size * 4 * 3
        act = self.n_layers * act_per_layer + logits
        mb = 1024 * 1024
        return {
            "params": n,
            "weights_mb": weights / mb,
            "grads_mb": grads / mb,
            "optimizer_mb": adam / mb,
            "activations_mb": act / mb,
            "total_mb": (weights + grads + adam + act) / mb,
        }


@dataclass
class TrainConfig:
    """Everything the Trainer needs. Names follow the seeds (snake_case)."""

    # optimisation
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    max_steps: int = 200
    epochs: int = 0  # >0: max_steps derived from the token count of one epoch
    batch_size: int = 16
    accumulation_steps: int = 1
    total_batch_size: int = 0  # tokens per optimizer step; >0 derives accumulation_steps (seed 003)
    grad_clip: float = 1.0
    max_grad_norm: float | None = None  # alias of grad_clip (seed 004)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    optimizer_type: str = "adamw"
    lr_scheduler: str = "cosine"
    lr_restarts: int = 1
    warmup_steps: int = 20
    decay_lr: bool = True
    seq_len: int = 0  # 0 = model max_seq_len
    dynamic_seq_length: bool = False  # grow the context during training (seed 003)
    min_seq_length: int = 64
    max_seq_length: int = 0  # 0 = seq_len (or the model's max_seq_len)
    save_config: bool = True  # write run_config.json (the merged parameters) next to the checkpoints
    log_gradients: bool = False  # per-layer gradient norms in metrics.jsonl at each log_interval
    # evaluation
    eval_interval: int = 50
    num_eval_batches: int = 10
    use_ema: bool = False
    ema_decay: float = 0.999
    early_stopping: bool = False
    patience: int = 5
    # logging and saving
    log_interval: int = 10
    sample_interval: int = 100  # steps between greedy samples from sample_prompts (0 = never)
    sample_prompts: list[str] = field(default_factory=lambda: ["你好，"])
    save_steps: int = 100
    keep_last_n_checkpoints: int = 3
    permanent_checkpoints: list[int] = field(default_factory=list)
    output_dir: str = ""  # "" = <run_dir>/pretrain (or sft)
    plot_loss: bool = True
    seed: int = 1337
    resume_from: str = ""
    auto_resume: bool = False
    # machine
    device: str = "auto"
    dtype: str = "auto"
    enable_compile: bool = False
    compile_mode: str = "auto"  # auto: max-autotune on CUDA, reduce-overhead on MPS, default on CPU (seed 000)
    num_threads: int = 0  # 0 = physical cores
    dataloader_workers: int = 0
    disable_optimizations: bool = False
    progress_bar: bool = True  # a tqdm bar in the console / notebook (metrics lines are printed as well)
    max_faults: int = 5  # non-finite losses/gradients in a row before the run stops (and saves the last good state)
    # resource guard (seed 001): pause between steps while usage is above a limit; 0 = no limit
    # 0 (or 100) = no limit, the default: CPU training itself fills the cores, so a CPU limit is a deliberate
    # duty cycle (seed 001 suggests max_cpu=70, max_memory=70 on a laptop that must stay usable).
    max_cpu: float = 0.0  # % of all cores, system-wide
    max_memory: float = 0.0  # % of RAM, system-wide
    max_gpu_memory: float = 0.0  # % of the GPU's memory (CUDA only)
    disable_monitoring: bool = False
    guard_interval: float = 2.0  # seconds between resource readings
    # optional loggers
    use_wandb: bool = False
    wandb_project: str = "minigpt"
    wandb_run_name: str = ""
    use_tensorboard: bool = False

    SCHEDULERS = ("cosine", "linear", "polynomial", "constant", "cosine_with_restarts")
    OPTIMIZERS = ("adamw", "adam")
    DTYPES = ("auto", "float32", "float16", "bfloat16")

    def __post_init__(self) -> None:
        if self.max_grad_norm is not None:
            self.grad_clip = float(self.max_grad_norm)

    def validate(self) -> None:
        """Stop bad values before any compute, naming the key."""
        checks = [
            (self.learning_rate > 0, "learning_rate", f"a positive number, got {self.learning_rate}"),
            (self.min_lr >= 0, "min_lr", f"a non-negative number, got {self.min_lr}"),
            (self.max_steps > 0 or self.epochs > 0, "max_steps", f"a positive integer (or epochs > 0), got {self.max_steps}"),
            (self.batch_size > 0, "batch_size", f"a positive integer, got {self.batch_size}"),
            (self.accumulation_steps > 0, "accumulation_steps", f"a positive integer, got {self.accumulation_steps}"),
            (self.total_batch_size >= 0, "total_batch_size", f"0 or a positive token count, got {self.total_batch_size}"),
            (self.warmup_steps >= 0, "warmup_steps", f"a non-negative integer, got {self.warmup_steps}"),
            (self.epochs > 0 or self.warmup_steps <= self.max_steps, "warmup_steps",
             f"at most max_steps={self.max_steps}, got {self.warmup_steps}"),
            (self.save_steps > 0, "save_steps", f"a positive integer, got {self.save_steps}"),
            (self.eval_interval > 0, "eval_interval", f"a positive integer, got {self.eval_interval}"),
            (self.log_interval > 0, "log_interval", f"a positive integer, got {self.log_interval}"),
            (self.num_eval_batches > 0, "num_eval_batches", f"a positive integer, got {self.num_eval_batches}"),
            (self.lr_scheduler in self.SCHEDULERS, "lr_scheduler", f"one of {self.SCHEDULERS}, got {self.lr_scheduler!r}"),
            (self.optimizer_type in self.OPTIMIZERS, "optimizer_type", f"one of {self.OPTIMIZERS}, got {self.optimizer_type!r}"),
            (self.dtype in self.DTYPES, "dtype", f"one of {self.DTYPES}, got {self.dtype!r}"),
            (self.grad_clip >= 0, "grad_clip", f"a non-negative number (0 = off), got {self.grad_clip}"),
            (0.0 < self.ema_decay < 1.0, "ema_decay", f"a value in (0, 1), got {self.ema_decay}"),
            (self.patience > 0, "patience", f"a positive integer, got {self.patience}"),
            (self.lr_restarts > 0, "lr_restarts", f"a positive integer, got {self.lr_restarts}"),
            (self.keep_last_n_checkpoints > 0, "keep_last_n_checkpoints", f"a positive integer, got {self.keep_last_n_checkpoints}"),
            (self.num_threads >= 0, "num_threads", f"0 (auto) or a positive integer, got {self.num_threads}"),
            (self.dataloader_workers >= 0, "dataloader_workers", f"a non-negative integer, got {self.dataloader_workers}"),
            (self.compile_mode in ("default", "reduce-overhead", "max-autotune", "auto"), "compile_mode",
             f"one of default / reduce-overhead / max-autotune / auto, got {self.compile_mode!r}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1/beta2", f"values in [0, 1), got {self.beta1}, {self.beta2}"),
            (self.weight_decay >= 0, "weight_decay", f"a non-negative number, got {self.weight_decay}"),
            (self.max_faults > 0, "max_faults", f"a positive integer, got {self.max_faults}"),
            (0 <= self.max_cpu <= 100, "max_cpu", f"a percentage in [0, 100] (0 = no limit), got {self.max_cpu}"),
            (0 <= self.max_memory <= 100, "max_memory", f"a percentage in [0, 100] (0 = no limit), got {self.max_memory}"),
            (0 <= self.max_gpu_memory <= 100, "max_gpu_memory", f"a percentage in [0, 100] (0 = no limit), got {self.max_gpu_memory}"),
            (self.guard_interval > 0, "guard_interval", f"a positive number of seconds, got {self.guard_interval}"),
        ]
        checks.append((not self.dynamic_seq_length or 0 < self.min_seq_length, "min_seq_length",
                       f"a positive integer, got {self.min_seq_length}"))
        checks.append((not self.dynamic_seq_length or not self.max_seq_length or self.min_seq_length <= self.max_seq_length,
                       "min_seq_length", f"at most max_seq_length={self.max_seq_length}, got {self.min_seq_length}"))
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"{key}: expected {expected}")
        if not (self.device == "auto" or self.device in ("cpu", "mps", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device: expected auto / cpu / cuda / cuda:N / mps, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
