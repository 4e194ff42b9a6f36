"""One Trainer for pretraining and SFT: device/AMP/compile, accumulation, schedules, EMA, eval,
early stopping, NaN skipping, checkpoints with exact resume, graceful stop, metrics and callbacks."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from . import checkpoint as ckpt
from ..config import ModelConfig, TrainConfig
from ..devices import measure_peak_flops, memory_mb, pick_device, pick_dtype, set_threads
from .schedules import lr_at

logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Raised inside the loop when too many numerical faults in a row make going on pointless."""


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: norms, biases (1-D tensors) are not decayed."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    if device.type in ("cuda", "cpu") and not cfg.disable_optimizations:
        kwargs["fused"] = True  # one kernel for all parameters; measured ~2-3% of a small CPU step
    if cfg.optimizer_type == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kwargs)
    # Plain Adam: L2 folded into the gradient, as the seeds' `adam` option does.
    return torch.optim.Adam(param_groups(model, cfg.weight_decay), **kwargs)


def flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6*N (forward+backward matmuls) + 12*L*d*T for attention scores (PaLM appendix B)."""
    n = model_cfg.num_params() - model_cfg.vocab_size * model_cfg.d_model  # embeddings lookups are free...
    n += model_cfg.vocab_size * model_cfg.d_model  # ...but the tied LM head is a matmul, so it counts once
    return 6 * n + 12 * model_cfg.n_layers * model_cfg.d_model * seq_len


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


class Trainer:
    """Train `model` on `train_batches` (an object with __next__, state_dict, load_state_dict)."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        train_batches,
        eval_batches: list | None = None,
        output_dir: str | Path = "runs/default/pretrain",
        tokenizer=None,
        tokenizer_dir: str | Path | None = None,
        chars_per_token: float | None = None,
        callbacks: Iterable[Any] = (),
        kind: str = "pretrain",
        extra_config: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        guard=None,
        max_faults: int | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.kind = kind
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        set_threads(cfg.num_threads)
        self.device = pick_device(cfg.device)
        self.dtype, self.dtype_reason = pick_dtype(cfg.dtype, self.device)
        if self.device.type == "cuda" and not cfg.disable_optimizations:
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+ (fp32 runs), ~free speed
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        self.model = model.to(self.device)
        self.model_cfg: ModelConfig = ckpt.unwrap(model).config
        self.train_batches = train_batches
        self.eval_batches = eval_batches or []
        self.output_dir = Path(output_dir)
        self.tokenizer = tokenizer
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else None
        self.chars_per_token = chars_per_token
        self.callbacks = list(callbacks)
        if cfg.plot_loss:
            from ..ui.plots import PlotOnSave

            self.callbacks.append(PlotOnSave())
        self.extra_config = extra_config or {}
        if self.is_main:
            from .loggers import optional_loggers

            self.callbacks.extend(optional_loggers(cfg, self.output_dir))
        # The resource guard is built from cfg (max_cpu / max_memory / max_gpu_memory / disable_monitoring)
        # unless one is passed in (tests inject readings that way).
        if guard is None:
            from .guard import ResourceGuard

            guard = ResourceGuard.from_config(cfg)
        self.guard = guard
        self.max_faults = max_faults if max_faults is not None else cfg.max_faults
        if cfg.dynamic_seq_length:
            if hasattr(train_batches, "seq_len_at"):
                self._grow_context(train_batches)
            else:
                logger.warning("dynamic_seq_length applies to pretraining windows; chat batches keep whole conversations")
        if cfg.dataloader_workers > 0 and hasattr(train_batches, "batch_at") and not cfg.disable_optimizations:
            from ..data.datasets import PrefetchBatches

            self.train_batches = PrefetchBatches(train_batches, cfg.dataloader_workers)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16 and self.device.type == "cuda")
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.use_ema else None
        self.step = 0
        self.tokens_seen = 0
        self.best_val = math.inf
        self.evals_without_improvement = 0
        self.faults_in_a_row = 0
        self.faults_total = 0
        self.history: list[dict] = []  # eval records
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._compiled = None
        self.seq_len = getattr(train_batches, "seq_len", None) or self.model_cfg.max_seq_len
        self.accumulation_steps = self._accumulation_steps()
        self.max_steps = cfg.max_steps
        self.peak_flops: float | None = None
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self._last_saved_step = -1

    # ----- configuration helpers -------------------------------------------------------------
    def _grow_context(self, sampler) -> None:
        """dynamic_seq_length: the sampler's window length becomes a function of the optimizer step."""
        from ..data.datasets import dynamic_seq_len

        cfg = self.cfg
        top = cfg.max_seq_length or sampler.seq_len
        if top > self.model_cfg.max_seq_len:
            raise ValueError(f"max_seq_length: {top} exceeds the model's max_seq_len={self.model_cfg.max_seq_len}")
        if cfg.min_seq_length > top:
            raise ValueError(f"min_seq_length: {cfg.min_seq_length} exceeds max_seq_length={top}")
        if cfg.total_batch_size:
            raise ValueError("dynamic_seq_length: use accumulation_steps, not total_batch_size (tokens per step change)")
        accum, max_steps = cfg.accumulation_steps, cfg.max_steps
        sampler.seq_len = top
        sampler.seq_len_at = lambda index: dynamic_seq_len(index // accum, max_steps, cfg.min_seq_length, top)

    def _accumulation_steps(self) -> int:
        cfg = self.cfg
        if cfg.total_batch_size:
            per_micro = cfg.batch_size * self.seq_len * self.world_size
            if cfg.total_batch_size % per_micro:
                raise ValueError(
                    f"total_batch_size: {cfg.total_batch_size} tokens is not a multiple of batch_size*seq_len*world_size={per_micro}"
                )
            return cfg.total_batch_size // per_micro
        return cfg.accumulation_steps

    def config_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model_cfg.to_dict(),
            "train": self.cfg.to_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokenizer_sha256": getattr(self.tokenizer, "sha256", None),
            "params": self.extra_config,
        }

    def request_stop(self) -> None:
        """Ask the loop to save and return at the next step boundary (widgets' Stop, signals)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _forward_model(self):
        if self.cfg.enable_compile and self._compiled is None:
            if self.cfg.disable_optimizations:
                logger.info("enable_compile ignored: disable_optimizations=True")
                self._compiled = self.model
            else:
                self._compiled = compile_model(self.model, self.cfg, self.device)
        return self._compiled or self.model

    # ----- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until max_steps, early stop, a stop request or a signal; always leaves a checkpoint."""
        cfg = self.cfg
        if cfg.resume_from or cfg.auto_resume:
            self._maybe_resume()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.step == 0 and self.is_main:
            self._archive_previous_run()  # a fresh run starts a fresh log and checkpoint series
        if self.is_main and cfg.plot_loss:
            (self.output_dir / "plots").mkdir(exist_ok=True)
        if self.is_main and cfg.save_config:
            # seed 003's save_config: the merged parameters beside the checkpoints (the monitor reads max_steps here)
            ckpt.atomic_write_json(self.output_dir / "run_config.json", {**self.config_dict(), "max_steps": self.max_steps})
        if self.peak_flops is None:
            self.peak_flops = measure_peak_flops(self.device, torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        fpt = flops_per_token(self.model_cfg, self.seq_len)
        logger.info("training on %s, dtype %s (%s), accumulation %d, %d steps",
                    self.device, str(self.dtype).replace("torch.", ""), self.dtype_reason, self.accumulation_steps, self.max_steps)
        self._emit("on_train_begin")
        # Signal handlers stay installed until the final checkpoint is written: a second Ctrl+C while
        # saving only repeats the stop request, it cannot cut the save short.
        restore = self._install_signal_handlers()
        t_start = time.perf_counter()
        try:
            self._loop(fpt, t_start)
            if self.stop_requested and self.stop_reason is None:
                self.stop_reason = "stop requested"
            # Whatever ended the loop, leave a resumable checkpoint at the current step.
            if self.step > 0 and self.is_main:
                if self._last_saved_step != self.step:
                    self.save_step_checkpoint()
                if self.stop_reason in (None, "early stopping"):
                    self.save_final()
            if self.stop_reason == "numerical faults" and self.is_main:
                logger.error("the last good state (step %d) is saved in %s; resume from it (auto_resume=True) "
                             "with a lower learning_rate", self.step, self.output_dir / f"checkpoint_step_{self.step}")
        finally:
            restore()
        result = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "stop_reason": self.stop_reason or "max_steps",
            "best_val_loss": self.best_val if self.best_val < math.inf else None,
            "faults": self.faults_total,
            "elapsed_s": time.perf_counter() - t_start,
        }
        self._emit("on_train_end", result)
        return result

    def _loop(self, fpt: float, t_start: float) -> None:
        cfg = self.cfg
        window_t, window_tokens = time.perf_counter(), 0
        bar = self._progress_bar()
        try:
            while self.step < self.max_steps and not self._should_stop():
                if self.guard is not None:
                    self.guard.wait_if_needed(self._stop)
                rec = self._train_step()
                window_tokens += rec["tokens"]
                if bar is not None:
                    bar.update(self.step - bar.n)
                    if not rec["skipped"]:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.1e}", refresh=False)
                if rec["skipped"]:
                    if self.faults_in_a_row >= self.max_faults:
                        self.stop_reason = "numerical faults"
                        logger.error(
                            "%d non-finite losses/gradients in a row at step %d: stopping. Try a lower learning_rate, "
                            "longer warmup_steps, or dtype=float32/bfloat16 instead of float16 (loss-scale overflow).",
                            self.faults_in_a_row, self.step)
                        break
                    continue
                now = time.perf_counter()
                if self.step % cfg.log_interval == 0 or self.step == self.max_steps:
                    dt = max(now - window_t, 1e-9)
                    rec["tokens_per_s"] = window_tokens / dt * self.world_size
                    rec["mfu"] = rec["tokens_per_s"] * fpt / (self.peak_flops * self.world_size) if self.peak_flops else None
                    rec["memory_mb"] = memory_mb(self.device)
                    if self.guard is not None and self.guard.last_reading:
                        rec.update({f"{k}_percent": round(v, 1) for k, v in self.guard.last_reading.items()})
                    window_t, window_tokens = now, 0
                rec["elapsed_s"] = now - t_start
                if self.step % cfg.eval_interval == 0 or self.step == self.max_steps:
                    rec.update(self.evaluate())
                    self._track_early_stopping(rec)
                self._log(rec)
                if self.step % cfg.save_steps == 0 and self.step < self.max_steps:
                    self.save_step_checkpoint()
                if cfg.sample_interval and self.step % cfg.sample_interval == 0:
                    self._sample()
                if self.stop_reason == "early stopping":
                    break
        finally:
            if bar is not None:
                bar.close()
            close = getattr(self.train_batches, "close", None)
            if close is not None:
                close()

    def _progress_bar(self):
        if not (self.cfg.progress_bar and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.max_steps, initial=self.step, desc=self.kind, unit="step", dynamic_ncols=True, leave=True)

    def _should_stop(self) -> bool:
        """The local stop flag; under DDP any rank's stop stops every rank at the same step (no hung all-reduce)."""
        stop = self.stop_requested
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0 and not stop:
                self.stop_reason = self.stop_reason or "stop requested (another rank)"
                self._stop.set()
            stop = flag.item() > 0
        return stop

    def _train_step(self) -> dict[str, Any]:
        cfg, model = self.cfg, self.model
        fwd = self._forward_model()
        model.train()
        lr = lr_at(self.step, learning_rate=cfg.learning_rate, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                   max_steps=self.max_steps, lr_scheduler=cfg.lr_scheduler, lr_restarts=cfg.lr_restarts, decay_lr=cfg.decay_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total_loss = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(self.accumulation_steps):
            # A batch is (x, y) or (x, y, extras): extras are model keyword arguments (SFT packing: attn_mask, positions).
            x, y, extras = unpack_batch(next(self.train_batches), self.device)
            sync = contextlib.nullcontext()
            if self.world_size > 1 and micro < self.accumulation_steps - 1 and hasattr(model, "no_sync"):
                sync = model.no_sync()  # all-reduce once per optimizer step, not per micro-batch
            with sync:
                with self._autocast():
                    try:
                        _, loss = fwd(x, y, **extras)
                    except Exception as e:  # a compiled graph that fails at first call falls back to eager
                        if fwd is model:
                            raise
                        logger.warning("torch.compile failed at first use (%s); continuing without compile", type(e).__name__)
                        self._compiled = fwd = model
                        _, loss = fwd(x, y, **extras)
                loss = loss / self.accumulation_steps
                self.scaler.scale(loss).backward()
            total_loss += loss.detach()
            tokens += int((y != -100).sum()) if self.kind == "sft" else y.numel()
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # the logged loss is the global batch's (equal-sized shards: the mean of the ranks' means)
            torch.distributed.all_reduce(total_loss)
            total_loss /= self.world_size
        self.scaler.unscale_(self.optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        # per-block norms are read before clipping, so they add up (in squares) to the logged grad_norm
        layer_norms = self._layer_grad_norms() if cfg.log_gradients and (self.step + 1) % cfg.log_interval == 0 else None
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        loss_value = float(total_loss)
        finite = math.isfinite(loss_value) and math.isfinite(float(grad_norm))
        if not finite:
            # Skip the update entirely: a NaN/inf step must not touch the weights or the optimizer moments.
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # lets fp16 lower its loss scale, which is the usual cure
            self.faults_in_a_row += 1
            self.faults_total += 1
            self._log({"step": self.step, "skipped": True, "loss": loss_value, "grad_norm": float(grad_norm),
                       "faults_total": self.faults_total}, event=True)
            logger.warning("step %d: non-finite loss/grad norm (%s, %s); update skipped", self.step, loss_value, float(grad_norm))
            return {"skipped": True, "tokens": 0}
        self.faults_in_a_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(model)
        self.step += 1
        self.tokens_seen += tokens * self.world_size
        rec = {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
               "tokens": tokens, "tokens_seen": self.tokens_seen, "skipped": False}
        if cfg.dynamic_seq_length:
            rec["seq_len"] = int(x.shape[1])
        if layer_norms is not None:
            rec["grad_norms"] = layer_norms
        return rec

    def _layer_grad_norms(self) -> dict[str, float]:
        """Gradient norm per block (`layers.i`) and for embeddings / final norm (seed 003's log_gradients)."""
        sums: dict[str, float] = {}
        for name, p in ckpt.unwrap(self.model).named_parameters():
            if p.grad is None:
                continue
            parts = name.split(".")
            group = ".".join(parts[:2]) if parts[0] == "layers" else parts[0]
            sums[group] = sums.get(group, 0.0) + float(p.grad.detach().float().pow(2).sum())
        return {k: math.sqrt(v) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        if not self.eval_batches:
            return {}
        out = {"val_loss": self._eval_loss()}
        if self.chars_per_token:
            out["val_bpc"] = out["val_loss"] / (self.chars_per_token * math.log(2))
        if self.ema is not None:
            raw = {k: v.clone() for k, v in ckpt.model_state_live(self.model).items()}
            self.ema.copy_to(self.model)
            out["val_loss_ema"] = self._eval_loss()
            ckpt.load_model_state(ckpt.unwrap(self.model), raw, "raw weights")
        return out

    def _eval_loss(self) -> float:
        model = ckpt.unwrap(self.model)  # eval needs no DDP gradient hooks
        model.eval()
        total, count = 0.0, 0
        for batch in self.eval_batches[: self.cfg.num_eval_batches]:
            x, y, extras = unpack_batch(batch, self.device)
            with self._autocast():
                _, loss = model(x, y, **extras)
            n = int((y != -100).sum())
            total += float(loss) * n
            count += n
        self.model.train()
        if self.world_size > 1:
            t = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            total, count = float(t[0]), float(t[1])
        return total / max(count, 1)

    def _track_early_stopping(self, rec: dict) -> None:
        if "val_loss" not in rec:
            return
        self.history.append({"step": self.step, "val_loss": rec["val_loss"]})
        if rec["val_loss"] < self.best_val - 1e-6:
            self.best_val = rec["val_loss"]
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
            if self.cfg.early_stopping and self.evals_without_improvement >= self.cfg.patience:
                self.stop_reason = "early stopping"
                logger.info("early stopping at step %d: no val improvement in %d evals (best %.4f)",
                            self.step, self.cfg.patience, self.best_val)

    # ----- logging ---------------------------------------------------------------------------
    def _log(self, rec: dict, event: bool = False) -> None:
        rec = {k: v for k, v in rec.items() if k not in ("skipped", "tokens") or event}
        if self.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        if not event:
            self._emit("on_log", rec)
            if self.step % self.cfg.log_interval == 0 or "val_loss" in rec:
                logger.info(format_metrics(rec))

    def _emit(self, name: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(self, *args)

    def _sample(self) -> None:
        if self.tokenizer is None or not self.cfg.sample_prompts or not self.is_main:
            return
        from ..infer.generate import GenerationConfig, TextGenerator

        gen = TextGenerator(ckpt.unwrap(self.model), self.tokenizer, device=self.device)
        for prompt in self.cfg.sample_prompts:
            text = gen.generate(prompt, GenerationConfig(max_new_tokens=max(1, min(40, self.model_cfg.max_seq_len // 2)),
                                                         do_sample=False))
            logger.info("sample @%d %r -> %r", self.step, prompt, text)
            self._emit("on_sample", prompt, text)
        self.model.train()

    # ----- checkpoints -----------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        py = random.getstate()
        np_state = np.random.get_state()
        state = {
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        }
        return state

    def save_step_checkpoint(self) -> Path | None:
        if not self.is_main:
            return None
        cfg = self.cfg
        folder = self.output_dir / f"checkpoint_step_{self.step}"
        optimizer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # the schedule is a pure function of the step; its settings are kept to warn when they change
            "scheduler": {"lr_scheduler": cfg.lr_scheduler, "step": self.step, "max_steps": self.max_steps,
                          "warmup_steps": cfg.warmup_steps, "lr": self.optimizer.param_groups[0]["lr"]},
        }
        trainer_state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "sampler": self.train_batches.state_dict(),
            "rng": self._rng_state(),
            "best_val": self.best_val if self.best_val < math.inf else None,
            "evals_without_improvement": self.evals_without_improvement,
            "faults_total": self.faults_total,
            "history": self.history,
        }
        ckpt.save_checkpoint(folder, self.model, self.config_dict(), self.tokenizer_dir,
                             ema_state=self.ema.shadow if self.ema else None,
                             optimizer_state=optimizer_state, trainer_state=trainer_state,
                             weights=self.checkpoint_weights(final=False))
        self._last_saved_step = self.step
        ckpt.prune_checkpoints(self.output_dir, self.cfg.keep_last_n_checkpoints, self.cfg.permanent_checkpoints)
        self._emit("on_save", folder)
        return folder

    def save_final(self) -> Path:
        folder = self.output_dir / "final_model"
        ckpt.save_checkpoint(folder, self.model, self.config_dict(), self.tokenizer_dir,
                             ema_state=self.ema.shadow if self.ema else None, weights=self.checkpoint_weights(final=True))
        self._emit("on_save", folder)
        return folder

    # Weight-file hooks: a subclass (SFT with LoRA, in sft.py) saves/loads something other than model.safetensors.
    def checkpoint_weights(self, final: bool) -> dict[str, dict[str, torch.Tensor]] | None:
        """safetensors files for a checkpoint (name -> state dict); None = model.safetensors with all weights."""
        return None

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        ckpt.load_model_state(ckpt.unwrap(self.model), load_file(str(folder / "model.safetensors")), str(folder))

    def _maybe_resume(self) -> None:
        cfg = self.cfg
        folder = Path(cfg.resume_from) if cfg.resume_from else ckpt.latest_valid_checkpoint(self.output_dir)
        if folder is None:
            logger.info("auto_resume: no checkpoint in %s; starting fresh", self.output_dir)
            return
        if cfg.resume_from:
            ckpt.verify_checkpoint(folder)
        self.resume(folder)

    def resume(self, folder: str | Path) -> None:
        folder = Path(folder)
        meta = ckpt.read_config(folder)
        saved_model = meta.get("model", {})
        if saved_model != self.model_cfg.to_dict():
            diff = sorted(k for k in set(saved_model) | set(self.model_cfg.to_dict())
                          if saved_model.get(k) != self.model_cfg.to_dict().get(k))
            raise ckpt.CheckpointError(f"{folder}: model shape differs from the current one in {diff}; cannot resume")
        sha = getattr(self.tokenizer, "sha256", None)
        if sha and meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != sha:
            raise ckpt.CheckpointError(f"{folder}: trained with tokenizer {meta['tokenizer_sha256'][:12]}, current is {sha[:12]}")
        old_train = meta.get("train", {})
        for key in ("batch_size", "learning_rate", "max_steps", "accumulation_steps"):
            if key in old_train and old_train[key] != getattr(self.cfg, key):
                logger.warning("resume: %s changed from %s to %s", key, old_train[key], getattr(self.cfg, key))
        from safetensors.torch import load_file

        self.load_weights(folder)
        if self.ema is not None and (folder / "ema.safetensors").is_file():
            self.ema.shadow = {k: v.float() for k, v in load_file(str(folder / "ema.safetensors")).items()}
        opt = ckpt.load_optimizer_state(folder)
        if opt is not None:
            self.optimizer.load_state_dict(opt["optimizer"])
            self.scaler.load_state_dict(opt["scaler"])
            torch.set_rng_state(opt["torch_rng"])
            if opt.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(opt["cuda_rng"])
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.train_batches.load_state_dict(state["sampler"])
        py = state["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npst = state["rng"]["numpy"]
        np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
        self.best_val = state["best_val"] if state.get("best_val") is not None else math.inf
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.faults_total = int(state.get("faults_total", 0))
        self.history = state.get("history", [])
        self._truncate_metrics(self.step)
        logger.info("resumed from %s at step %d", folder, self.step)

    def _archive_previous_run(self) -> Path | None:
        """Move an earlier run's checkpoints, final model and logs out of the way, into previous/<time>/.

        A fresh run in a used folder must not mix with the old run: pruning keeps the highest step numbers,
        so the old run's later checkpoints would delete the new run's, and auto-resume would pick them up.
        Nothing is deleted; the warning says where the old run went.
        """
        old = [p for p in self.output_dir.iterdir() if p.name.startswith("checkpoint_step_") or p.name in
               ("final_model", "metrics.jsonl", "run_config.json", "plots")] if self.output_dir.is_dir() else []
        if not old:
            return None
        dest = self.output_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
        n = 0
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{dest.name.split('_')[0]}_{n}")
        dest.mkdir(parents=True)
        for p in old:
            os.replace(p, dest / p.name)
        logger.warning("%s held an earlier run (%d items); moved to %s (set auto_resume=True to continue a run instead)",
                       self.output_dir, len(old), dest)
        return dest

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines past the resumed step so the log reads as one uninterrupted run."""
        if not self.metrics_path.is_file() or not self.is_main:
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:
                continue  # a half-written last line from a killed run
        ckpt.atomic_write_text(self.metrics_path, "".join(l + "\n" for l in keep))

    # ----- signals ---------------------------------------------------------------------------
    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM (Ctrl+C, a kernel interrupt, `kill`) request a graceful stop: save, then return."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum, frame):
            if not self.stop_requested:
                logger.warning("signal %d: finishing the current step, saving a checkpoint, then stopping", signum)
            self.stop_reason = f"signal {signal.Signals(signum).name}"
            self.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass

        def restore() -> None:
            for sig, h in previous.items():
                signal.signal(sig, h)

        return restore


def unpack_batch(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(x, y) or (x, y, extras) -> tensors on `device`; extras (model keyword arguments) default to {}."""
    x, y = batch[0], batch[1]
    extras = batch[2] if len(batch) > 2 else {}
    return (x.to(device, non_blocking=True), y.to(device, non_blocking=True),
            {k: v.to(device, non_blocking=True) for k, v in extras.items()})


def compile_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """torch.compile with a one-line fallback; never raises."""
    mode = cfg.compile_mode
    if mode == "auto":
        mode = {"cuda": "max-autotune", "mps": "reduce-overhead"}.get(device.type, "default")
    try:
        compiled = torch.compile(model, mode=None if mode == "default" else mode)
        logger.info("torch.compile enabled (mode=%s)", mode)
        return compiled
    except Exception as e:  # unsupported backend or platform
        logger.warning("torch.compile unavailable (%s: %s); running eager", type(e).__name__, str(e)[:120])
        return model


def format_metrics(rec: dict) -> str:
    parts = [f"step {rec.get('step', 0):>6}"]
    if rec.get("loss") is not None:
        parts.append(f"loss {rec['loss']:.4f}")
    if "val_loss" in rec:
        parts.append(f"val {rec['val_loss']:.4f}")
    if "val_bpc" in rec:
        parts.append(f"bpc {rec['val_bpc']:.3f}")
    if rec.get("lr") is not None:
        parts.append(f"lr {rec['lr']:.2e}")
    if rec.get("tokens_per_s"):
        parts.append(f"{rec['tokens_per_s']:.0f} tok/s")
    return " | ".join(parts)
