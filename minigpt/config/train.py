"""Training configuration: one small dataclass per concern (optim, schedule, evaluation, checkpoints,
logging, machine, guard), composed into TrainConfig and read grouped (`cfg.optim.learning_rate`).

Parameters arrive flat (notebooks, YAML files, checkpoints' "train" dict): `TrainConfig.from_flat` puts each
field in its group, `to_flat` writes them back out. Other names for a field (the seeds' flags) are resolved
where parameters are read (minigpt.params.ALIASES), not here."""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

GUARD_RESUME_MARGIN = 5.0  # percent under a limit that usage must fall to before a paused run resumes
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def non_finite_fields(obj: Any) -> list[str]:
    """Names of a dataclass's float fields holding NaN or an infinity (those of dataclass fields included)."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += non_finite_fields(value)
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f.name)
    return out


def find_value(obj: Any, key: str) -> Any:
    """The field `key` of `obj` or of one of its dataclass fields (TrainConfig's groups)."""
    if hasattr(obj, key):
        return getattr(obj, key)
    return next(getattr(v, key) for f in dataclasses.fields(obj)
                if dataclasses.is_dataclass(v := getattr(obj, f.name)) and hasattr(v, key))


# One check of a config: (holds, the key it names, what was expected, with the value given).
Check = tuple[bool, str, str]


def check_config(obj: Any) -> None:
    """The one validation of every config dataclass (ModelConfig, TrainConfig, GenerationConfig): a NaN or
    infinite number, then `obj.checks()` in order; the first that fails is a ValueError "key: expected ..."."""
    for key in non_finite_fields(obj):
        raise ValueError(f"{key}: expected a finite number, got {find_value(obj, key)}")
    for ok, key, expected in obj.checks():
        if not ok:
            raise ValueError(f"{key}: expected {expected}")


# ----- training configuration: one small dataclass per concern, composed into TrainConfig -----------------


@dataclass
class OptimConfig:
    """How each optimizer step is computed: optimizer, batch, clipping, EMA and numerical faults."""

    learning_rate: float = 1e-3  # peak learning rate, reached at the end of warmup
    optimizer_type: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 folded into the gradient) | muon
    # muon: Muon (orthogonalised momentum) for the hidden 2-D weight matrices, AdamW for embeddings, head, norms
    weight_decay: float = 0.1  # applied to matrices only; norms and biases are never decayed
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.95  # Adam's second-moment decay
    batch_size: int = 16  # sequences per micro-batch (per process under DDP)
    accumulation_steps: int = 1  # micro-batches whose gradients add up to one optimizer step
    total_batch_size: int = 0  # tokens per optimizer step; >0 derives accumulation_steps from it
    grad_clip: float = 1.0  # clip the global gradient norm to this value (0 = no clipping)
    use_ema: bool = False  # keep an exponential moving average of the weights (saved as ema.safetensors)
    ema_decay: float = 0.999  # EMA weight of the old average at each step
    max_faults: int = 5  # non-finite losses/gradients in a row before the run stops and keeps the last good state

    OPTIMIZERS = ("adamw", "adam", "muon")

    def checks(self) -> list[Check]:
        return [
            (self.learning_rate > 0, "learning_rate", f"a positive number, got {self.learning_rate}"),
            (self.optimizer_type in self.OPTIMIZERS, "optimizer_type", f"one of {self.OPTIMIZERS}, got {self.optimizer_type!r}"),
            (self.weight_decay >= 0, "weight_decay", f"a non-negative number, got {self.weight_decay}"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1/beta2", f"values in [0, 1), got {self.beta1}, {self.beta2}"),
            (self.batch_size > 0, "batch_size", f"a positive integer, got {self.batch_size}"),
            (self.accumulation_steps > 0, "accumulation_steps", f"a positive integer, got {self.accumulation_steps}"),
            (self.total_batch_size >= 0, "total_batch_size", f"0 or a positive token count, got {self.total_batch_size}"),
            (self.grad_clip >= 0, "grad_clip", f"a non-negative number (0 = off), got {self.grad_clip}"),
            (0.0 < self.ema_decay < 1.0, "ema_decay", f"a value in (0, 1), got {self.ema_decay}"),
            (self.max_faults > 0, "max_faults", f"a positive integer, got {self.max_faults}"),
        ]


@dataclass
class ScheduleConfig:
    """How long training runs, on what context length, and how the learning rate moves over it."""

    max_steps: int = 200  # optimizer steps to train for (0 with max_minutes: no step limit)
    max_minutes: float = 0.0  # training-time budget (wall clock minus evaluation, saving, sampling); 0 = none
    epochs: int = 0  # >0: max_steps is derived from the token count of this many epochs
    warmup_steps: int = 20  # linear warmup from learning_rate/warmup_steps up to learning_rate
    lr_scheduler: str = "cosine"  # decay after warmup: cosine | linear | polynomial | constant | cosine_with_restarts | wsd
    lr_restarts: int = 1  # cosine cycles for cosine_with_restarts
    min_lr: float = 1e-4  # learning rate at the end of the decay
    decay_fraction: float = 0.2  # wsd: the share of the run (steps, or the max_minutes budget) at its end over which the rate decays
    decay_lr: bool = True  # False keeps the peak learning rate after warmup
    seq_len: int = 0  # tokens per training window (0 = the model's max_seq_len)
    context_growth: bool = False  # grow the training window in doubling stages during the run
    context_growth_from: int = 64  # window length at the first step when context_growth is on
    context_growth_to: int = 0  # window length reached by the last stage (0 = seq_len, else the model's max_seq_len)
    seed: int = 1337  # seeds weight init, batch order, dropout and sampling
    doc_aligned_batches: bool = False  # pretraining windows start at a document's first token

    SCHEDULERS = ("cosine", "linear", "polynomial", "constant", "cosine_with_restarts", "wsd")

    def checks(self) -> list[Check]:
        growth = self.context_growth
        return [
            (self.max_steps > 0 or self.epochs > 0 or (self.max_steps == 0 and self.max_minutes > 0), "max_steps",
             f"a positive integer (or epochs > 0, or 0 with max_minutes > 0), got {self.max_steps}"),
            (self.max_minutes >= 0, "max_minutes", f"a number of minutes >= 0 (0 = no time budget), got {self.max_minutes}"),
            (self.warmup_steps >= 0, "warmup_steps", f"a non-negative integer, got {self.warmup_steps}"),
            (self.epochs > 0 or self.max_steps == 0 or self.warmup_steps <= self.max_steps, "warmup_steps",
             f"at most max_steps={self.max_steps}, got {self.warmup_steps}"),
            (self.lr_scheduler in self.SCHEDULERS, "lr_scheduler", f"one of {self.SCHEDULERS}, got {self.lr_scheduler!r}"),
            (self.lr_restarts > 0, "lr_restarts", f"a positive integer, got {self.lr_restarts}"),
            (self.min_lr >= 0, "min_lr", f"a non-negative number, got {self.min_lr}"),
            (0 < self.decay_fraction <= 1, "decay_fraction", f"a share of the steps in (0, 1], got {self.decay_fraction}"),
            (not growth or self.context_growth_from > 0, "context_growth_from",
             f"a positive integer, got {self.context_growth_from}"),
            (not growth or not self.context_growth_to or self.context_growth_from <= self.context_growth_to,
             "context_growth_from", f"at most context_growth_to={self.context_growth_to}, got {self.context_growth_from}"),
        ]


@dataclass
class EvalConfig:
    """When and how the model is evaluated: validation loss, early stopping, greedy samples."""

    eval_interval: int = 50  # steps between validation-loss evaluations
    num_eval_batches: int = 10  # validation batches per evaluation
    early_stopping: bool = False  # stop when validation loss has not improved for `patience` evaluations
    patience: int = 5  # evaluations without improvement before early stopping
    sample_interval: int = 100  # steps between greedy samples from sample_prompts (0 = never)
    sample_prompts: list[str] = field(default_factory=lambda: ["你好，"])  # prompts for those samples

    def checks(self) -> list[Check]:
        return [
            (self.eval_interval > 0, "eval_interval", f"a positive integer, got {self.eval_interval}"),
            (self.num_eval_batches > 0, "num_eval_batches", f"a positive integer, got {self.num_eval_batches}"),
            (self.patience > 0, "patience", f"a positive integer, got {self.patience}"),
        ]


@dataclass
class CheckpointConfig:
    """Where checkpoints go, how often, which are kept, and what a run resumes from."""

    save_interval: int = 100  # steps between resumable checkpoints (checkpoint_step_N/)
    save_minutes: float = 15.0  # also a checkpoint when this many minutes passed since the last one (0 = off)
    keep_last_n_checkpoints: int = 3  # newer checkpoints kept; older ones are deleted
    permanent_checkpoints: list[int] = field(default_factory=list)  # steps whose checkpoints are never deleted
    output_dir: str = ""  # "" = <run_dir>/pretrain (or sft)
    resume_from: str = ""  # a checkpoint folder to continue from (verified first)
    auto_resume: bool = False  # continue from the newest verified checkpoint in output_dir, if any
    save_config: bool = True  # write run_config.json (the merged parameters) next to the checkpoints

    def checks(self) -> list[Check]:
        return [
            (self.save_interval > 0, "save_interval", f"a positive integer, got {self.save_interval}"),
            (self.save_minutes >= 0, "save_minutes", f"a number of minutes >= 0 (0 = off), got {self.save_minutes}"),
            (self.keep_last_n_checkpoints > 0, "keep_last_n_checkpoints",
             f"a positive integer, got {self.keep_last_n_checkpoints}"),
        ]


@dataclass
class LoggingConfig:
    """What the run reports and where: metrics lines, plots, progress bar, optional experiment loggers."""

    log_interval: int = 10  # steps between metrics lines (throughput, memory, MFU)
    log_gradients: bool = False  # per-layer gradient norms in metrics.jsonl at each log_interval
    plot_loss: bool = True  # write loss plots under plots/ at each save
    progress_bar: bool = True  # a tqdm bar in the console / notebook (metrics lines are logged as well)
    use_wandb: bool = False  # log metrics to Weights & Biases (needs `pip install wandb`)
    wandb_project: str = "minigpt"  # the W&B project
    wandb_run_name: str = ""  # the W&B run name ("" = run_name)
    use_tensorboard: bool = False  # write TensorBoard event files under <output_dir>/tensorboard

    def checks(self) -> list[Check]:
        return [(self.log_interval > 0, "log_interval", f"a positive integer, got {self.log_interval}")]


@dataclass
class MachineConfig:
    """Where and how fast the computation runs: device, precision, compilation, threads, data workers."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16 (auto: bf16 where supported, else fp32)
    enable_compile: bool = False  # torch.compile the model (falls back to eager if it fails)
    compile_mode: str = "auto"  # auto: max-autotune on CUDA, reduce-overhead on MPS, default on CPU
    num_threads: int = 0  # CPU threads for torch (0 = physical cores)
    dataloader_workers: int = 0  # threads that prefetch batches ahead of the step
    disable_speedups: bool = False  # turn off fused AdamW, TF32, compile and prefetching (for debugging)
    # (about a third more compute; the activations held drop from every layer's to one layer's plus each block's input)
    activation_checkpointing: bool = False  # memory: recompute each block in the backward instead of keeping its activations
    chunked_loss: bool = True  # the LM head's loss in chunks of rows: the batch x seq x vocab logits are never held
    check_memory: bool = True  # estimate the step's peak memory at start and refuse a run that cannot fit
    # (auto: plain matmuls, model/matmul_attention.py, on the CPU under bf16 up to seq_len 512, where SDPA's kernel is slow)
    attention: str = "auto"  # speed: auto | sdpa | matmul, how training computes attention

    DTYPES = ("auto", "float32", "float16", "bfloat16")
    ATTENTION_IMPLS = ("auto", "sdpa", "matmul")
    COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "auto")

    def checks(self) -> list[Check]:
        most = 4 * (os.cpu_count() or 1)  # more threads than this only thrash (or crash the thread pool)
        return [
            (self.dtype in self.DTYPES, "dtype", f"one of {self.DTYPES}, got {self.dtype!r}"),
            (self.attention in self.ATTENTION_IMPLS, "attention", f"one of {self.ATTENTION_IMPLS}, got {self.attention!r}"),
            (self.compile_mode in self.COMPILE_MODES, "compile_mode",
             f"one of default / reduce-overhead / max-autotune / auto, got {self.compile_mode!r}"),
            (0 <= self.num_threads <= most, "num_threads",
             f"0 (auto) or at most {most} (4 x the {os.cpu_count()} CPU cores here), got {self.num_threads}"),
            (0 <= self.dataloader_workers <= most, "dataloader_workers",
             f"0 to {most} (4 x the {os.cpu_count()} CPU cores here), got {self.dataloader_workers}"),
            (bool(DEVICE_PATTERN.match(str(self.device))), "device",
             f"auto, cpu, mps, cuda or cuda:N (N a GPU number such as 0), got {self.device!r}"),
        ]


@dataclass
class GuardConfig:
    """The resource guard: pause between steps while the machine is above a usage limit (0 or 100 = no limit).

    CPU training fills the cores by itself, so a CPU limit is a deliberate duty cycle for a machine that
    must stay usable (e.g. max_cpu=70, max_memory=70 on a laptop).
    """

    max_cpu: float = 0.0  # % of all cores, system-wide
    max_memory: float = 0.0  # % of RAM, system-wide
    max_gpu_memory: float = 0.0  # % of the GPU's memory (CUDA only)
    disable_monitoring: bool = False  # never read usage, whatever the limits say
    guard_interval: float = 2.0  # seconds between resource readings

    def checks(self) -> list[Check]:
        out = []
        for k in ("max_cpu", "max_memory", "max_gpu_memory"):
            v = getattr(self, k)
            out.append((0 <= v <= 100, k, f"a percentage in [0, 100] (0 = no limit), got {v}"))
            out.append((not 0 < v <= GUARD_RESUME_MARGIN, k,
                        f"0 (no limit) or a limit above the guard's {GUARD_RESUME_MARGIN:g}% resume margin (a paused run "
                        f"resumes below limit - {GUARD_RESUME_MARGIN:g}%, which {v:g}% never reaches), got {v}"))
        return out + [(self.guard_interval > 0, "guard_interval", f"a positive number of seconds, got {self.guard_interval}")]


# TrainConfig's groups: attribute name -> dataclass.
TRAIN_GROUPS: dict[str, type] = {
    "optim": OptimConfig, "schedule": ScheduleConfig, "evaluation": EvalConfig, "checkpoints": CheckpointConfig,
    "logging": LoggingConfig, "machine": MachineConfig, "guard": GuardConfig,
}


def _train_field_groups() -> dict[str, str]:
    """flat field name -> the group that holds it."""
    return {f.name: group for group, cls in TRAIN_GROUPS.items() for f in dataclasses.fields(cls)}


@dataclass
class TrainConfig:
    """Everything the Trainer needs, in groups: `cfg.optim.learning_rate`, `cfg.checkpoints.save_interval`.

    From flat parameters: `TrainConfig.from_flat(learning_rate=3e-4, save_interval=50)`; back: `to_flat()`.
    """

    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    machine: MachineConfig = field(default_factory=MachineConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    FIELD_GROUPS: ClassVar[dict[str, str]] = _train_field_groups()  # flat field name -> group

    @classmethod
    def from_flat(cls, **flat: Any) -> "TrainConfig":
        """From flat field names, as notebooks, YAML files and checkpoints' "train" dicts hold them; an unknown
        name is a TypeError naming it."""
        unknown = sorted(set(flat) - set(cls.FIELD_GROUPS))
        if unknown:
            raise TypeError(f"TrainConfig: unknown field {unknown[0]!r}")
        groups: dict[str, dict[str, Any]] = {g: {} for g in TRAIN_GROUPS}
        for key, value in flat.items():
            groups[cls.FIELD_GROUPS[key]][key] = copy.deepcopy(value)
        return cls(**{g: TRAIN_GROUPS[g](**values) for g, values in groups.items()})

    def to_flat(self) -> dict[str, Any]:
        """Every field under its flat name (what checkpoints' config.json and run_config.json hold as "train")."""
        return {k: copy.deepcopy(v) for group in TRAIN_GROUPS for k, v in dataclasses.asdict(getattr(self, group)).items()}

    def __post_init__(self) -> None:
        check_config(self)  # once, when the object is made: bad values stop before any compute

    def checks(self) -> list[Check]:
        lr, min_lr = self.optim.learning_rate, self.schedule.min_lr
        return [c for group in TRAIN_GROUPS for c in getattr(self, group).checks()] + [
            (min_lr <= lr, "min_lr", f"at most learning_rate={lr:g} (the decay ends there), got {min_lr:g}")]

    def validate(self) -> None:
        """Check again after fields were changed in place."""
        check_config(self)
