"""One Trainer for pretraining and SFT: the step loop (accumulation, schedule, clipping, NaN skipping),
a step or time budget, metrics, callbacks and a graceful stop.

Its helpers live beside it: run_state (checkpoints, exact resume, archiving), optim (optimizer, EMA),
machine (device, dtype, compile), batches (the BatchSource protocol), metrics (FLOPs, summaries),
evaluation (validation loss, early stopping, samples), budget (the training clock and max_minutes).
The names earlier code imported from here are re-exported.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt
from . import evaluation, run_state
from .budget import TrainClock
from .guard import ResourceGuard
from .batches import BatchSource, GrowingBatchSource, accumulation_steps, check_batch_source, grow_context, unpack_batch
from .machine import autocast, compile_model, install_stop_signals, setup_machine
from .memory import plan_memory
from .metrics import flops_per_token, format_metrics, layer_grad_norms
from .optim import EMA, build_optimizer, param_groups
from .schedules import lr_at
from .timing import RunTimer
from ..config import ModelConfig, TrainConfig
from ..devices import memory_mb

__all__ = ["Trainer", "TrainingStopped", "BatchSource", "EMA", "build_optimizer", "param_groups", "flops_per_token",
           "format_metrics", "unpack_batch", "compile_model"]

logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Raised inside the loop when too many numerical faults in a row make going on pointless."""


class Trainer:
    """Train `model` on `train_batches` (a BatchSource: WindowSampler, ChatBatches) and keep the run resumable."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        train_batches: BatchSource,
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
        clock: Callable[[], float] | None = None,
    ) -> None:
        cfg.validate()
        check_batch_source(train_batches)
        self.cfg, self.kind = cfg, kind
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0
        self.device, self.dtype, self.dtype_reason = setup_machine(cfg)
        self.model = model.to(self.device)
        self.model_cfg: ModelConfig = ckpt.unwrap(model).config
        self.eval_batches = eval_batches or []
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.tokenizer = tokenizer
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else None
        self.chars_per_token = chars_per_token
        self.extra_config = extra_config or {}
        self.callbacks = self._build_callbacks(callbacks)
        # the resource guard from cfg.guard (None when no limit is set), unless one is passed in (tests)
        self.guard = guard if guard is not None else ResourceGuard.from_config(cfg)
        self.max_faults = max_faults if max_faults is not None else cfg.optim.max_faults
        if cfg.schedule.context_growth:
            self._grow_context(train_batches)
        self.seq_len = train_batches.seq_len or self.model_cfg.max_seq_len
        # the memory switches go onto the model; a step that cannot fit stops here, naming what would fit
        self.memory_estimate = plan_memory(self.model, cfg.machine, cfg.optim.batch_size, self.seq_len,
                                           accumulation_steps(cfg, self.seq_len, world_size),
                                           cfg.optim.optimizer_type, self.device, self.dtype)
        self.train_batches = self._prefetched(train_batches)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        fp16_cuda = self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16_cuda)
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.use_ema else None
        self.accumulation_steps = accumulation_steps(cfg, self.seq_len, world_size)
        self.max_steps = cfg.schedule.max_steps  # 0 with max_minutes: no step limit
        self._clock_fn = clock or time.perf_counter  # the training clock's source (tests inject a fake one)
        self._reset_counters()

    # ----- construction helpers --------------------------------------------------------------
    def _reset_counters(self) -> None:
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
        self.peak_flops: float | None = None  # the measured matmul peak of the run's dtype (MFU's denominator)
        self.peak_dtype: str | None = None  # its dtype's name: fp32, bf16 or fp16
        self._computed_tokens = 0  # positions the current step's forward computed (all of each row)
        self._last_saved_step = -1
        self.run_lock = None  # the output folder's lock while fit() runs (rank 0)
        self.timer: RunTimer | None = None
        self.train_clock = TrainClock(self.cfg.schedule.max_minutes, self._clock_fn)
        self._budget_done = False

    def _build_callbacks(self, callbacks: Iterable[Any]) -> list[Any]:
        out = list(callbacks)
        if self.cfg.logging.plot_loss:
            from ..ui.plots import PlotOnSave

            out.append(PlotOnSave())
        if self.is_main:
            from .loggers import optional_loggers

            out.extend(optional_loggers(self.cfg, self.output_dir))
        return out

    def _grow_context(self, source: BatchSource) -> None:
        """context_growth: the window length follows the step (pretraining windows; SFTTrainer keeps its rows)."""
        if not isinstance(source, GrowingBatchSource):
            logger.warning("context_growth applies to pretraining windows; %s keeps its rows", type(source).__name__)
            return
        grow_context(source, self.cfg, self.model_cfg.max_seq_len)

    def _prefetched(self, source: BatchSource) -> BatchSource:
        """The source, read ahead by dataloader_workers threads when there are any."""
        m = self.cfg.machine
        self._prefetch = None
        if m.dataloader_workers > 0 and not m.disable_speedups:
            from ..data.datasets import PrefetchBatches

            self._prefetch = PrefetchBatches(source, m.dataloader_workers)
        return self._prefetch or source

    def config_dict(self) -> dict[str, Any]:
        """config.json's content; "train" is the flat TrainConfig dict, as earlier versions wrote it."""
        return {
            "kind": self.kind,
            "model": self.model_cfg.to_dict(),
            "train": self.cfg.to_flat(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokenizer_sha256": getattr(self.tokenizer, "sha256", None),
            "params": self.extra_config,
        }

    def _on_signal(self, signum: int) -> None:
        if not self.stop_requested:
            logger.warning("signal %d: finishing the current step, saving a checkpoint, then stopping", signum)
        self.stop_reason = f"signal {signal.Signals(signum).name}"
        self.request_stop()

    def request_stop(self) -> None:
        """Ask the loop to save and return at the next step boundary (widgets' Stop, signals)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _autocast(self):
        return autocast(self.device, self.dtype)

    def _forward_model(self):
        m = self.cfg.machine
        if m.enable_compile and self._compiled is None:
            if m.disable_speedups:
                logger.info("enable_compile ignored: disable_speedups=True")
                self._compiled = self.model
            else:
                self._compiled = compile_model(self.model, self.cfg, self.device)
        return self._compiled or self.model

    # ----- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until max_steps or max_minutes, early stop, a stop request or a signal; always leaves a checkpoint."""
        try:
            self._prepare_run()
            return self._fit()
        finally:
            run_state.release_run(self)  # the folder's lock (the OS drops it too if this process dies)

    def _fit(self) -> dict[str, Any]:
        fpt = flops_per_token(self.model_cfg, self.seq_len)
        budget = f", {self.cfg.schedule.max_minutes:g} minutes of training time" if self.train_clock.has_budget else ""
        logger.info("training on %s, dtype %s (%s), accumulation %d, %s steps%s", self.device,
                    str(self.dtype).replace("torch.", ""), self.dtype_reason, self.accumulation_steps, self.max_steps or "no limit on", budget)
        if self.peak_flops:
            logger.info("MFU is measured against the measured %s matmul peak of this machine, %s GFLOP/s",
                        self.peak_dtype, f"{self.peak_flops / 1e9:,.0f}")
        self._emit("on_train_begin")
        # Signal handlers stay installed until the final checkpoint is written: a second Ctrl+C while
        # saving only repeats the stop request, it cannot cut the save short.
        restore = install_stop_signals(self._on_signal)
        t_start = time.perf_counter()
        self.timer = RunTimer(self, t_start)
        self.train_clock.start()
        try:
            self._loop(fpt, t_start)
            self._save_at_end()
        finally:
            restore()
        result = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "stop_reason": self.stop_reason or "max_steps",
            "best_val_loss": self.best_val if self.best_val < math.inf else None,
            "faults": self.faults_total,
            "elapsed_s": time.perf_counter() - t_start,
            "train_s": self.train_clock.elapsed_s(),
        }
        self._emit("on_train_end", result)
        return result

    def _prepare_run(self) -> None:
        """Lock the folder, clean leftovers, measure peak FLOPs, resume or archive, write run_config.json."""
        run_state.prepare_run(self)

    def _save_at_end(self) -> None:
        """Whatever ended the loop, leave a resumable checkpoint at the current step (and the final model)."""
        if self.stop_requested and self.stop_reason is None:
            self.stop_reason = "stop requested"
        if self.step > 0 and self.is_main:
            if self._last_saved_step != self.step:
                self.save_step_checkpoint()
            if self.stop_reason in (None, "early stopping", "max_minutes"):
                self.save_final()
        if self.stop_reason == "numerical faults" and self.is_main:
            logger.error("the last good state (step %d) is saved in %s; resume from it (auto_resume=True) "
                         "with a lower learning_rate", self.step, self.output_dir / f"checkpoint_step_{self.step}")

    def _loop(self, fpt: float, t_start: float) -> None:
        window = {"t": time.perf_counter(), "tokens": 0, "computed": 0}
        bar = self._progress_bar()
        try:
            while not self._steps_done() and not self._should_stop():
                if self.guard is not None:
                    with self.train_clock.paused():
                        self.guard.wait_if_needed(self._stop)
                rec = self._train_step()
                window["tokens"] += rec["tokens"]
                window["computed"] += rec.get("computed_tokens", rec["tokens"])
                if bar is not None:
                    bar.update(self.step - bar.n)
                    if not rec["skipped"]:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.1e}", refresh=False)
                if rec["skipped"]:
                    if self._too_many_faults():
                        break
                    continue
                self._budget_done = self._budget_reached()
                self._after_step(rec, fpt, t_start, window)
                if self.stop_reason == "early stopping":
                    break
        finally:
            if bar is not None:
                bar.close()
            if self._prefetch is not None:
                self._prefetch.close()  # the prefetching threads this trainer started

    def _steps_done(self) -> bool:
        """max_steps reached (when set), or the time budget used up."""
        return (self.max_steps > 0 and self.step >= self.max_steps) or self._budget_done

    def _budget_reached(self) -> bool:
        """max_minutes of training time used; under DDP every rank stops at the same step (rank 0's clock decides)."""
        if not self.train_clock.has_budget:
            return False
        done = self.train_clock.over_budget()
        if self._distributed():
            flag = torch.tensor([1.0 if done else 0.0], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            done = flag.item() > 0
        if done and self.stop_reason is None:
            self.stop_reason = "max_minutes"
        return done

    def _too_many_faults(self) -> bool:
        if self.faults_in_a_row < self.max_faults:
            return False
        self.stop_reason = "numerical faults"
        logger.error("%d non-finite losses/gradients in a row at step %d: stopping. Try a lower learning_rate, "
                     "longer warmup_steps, or dtype=float32/bfloat16 instead of float16 (loss-scale overflow).",
                     self.faults_in_a_row, self.step)
        return True

    def _after_step(self, rec: dict[str, Any], fpt: float, t_start: float, window: dict[str, float]) -> None:
        """Throughput at log steps, evaluation, the metrics line, checkpoint and sample at their intervals."""
        cfg, now, last = self.cfg, time.perf_counter(), self.step == self.max_steps or self._budget_done
        if self.step % cfg.logging.log_interval == 0 or last:
            # tokens_per_s: positions computed (all of each row); trained_tokens_per_s: those with a target (SFT's
            # assistant tokens). MFU counts the computed ones, against the peak of the dtype this run uses.
            seconds = max(now - window["t"], 1e-9)
            rec["tokens_per_s"] = window["computed"] / seconds * self.world_size
            rec["trained_tokens_per_s"] = window["tokens"] / seconds * self.world_size
            rec["mfu"] = rec["tokens_per_s"] * fpt / (self.peak_flops * self.world_size) if self.peak_flops else None
            if self.peak_flops:
                rec["mfu_peak"] = self.peak_dtype
                rec["peak_gflops"] = self.peak_flops / 1e9
            rec["memory_mb"] = memory_mb(self.device)
            if self.guard is not None and self.guard.last_reading:
                rec.update({f"{k}_percent": round(v, 1) for k, v in self.guard.last_reading.items()})
            window["t"], window["tokens"], window["computed"] = now, 0, 0
        rec["elapsed_s"] = now - t_start
        rec["train_s"] = self.train_clock.elapsed_s()  # training time: the budget's clock, resumed with the run
        with self.train_clock.paused():
            if self.step % cfg.evaluation.eval_interval == 0 or last:
                rec.update(self.evaluate())
                self._track_early_stopping(rec)
            self._log(rec)
            self.timer.step_done(self.step)
            if (self.step % cfg.checkpoints.save_interval == 0 or self.timer.save_due()) and not last:
                self.save_step_checkpoint()
            if cfg.evaluation.sample_interval and self.step % cfg.evaluation.sample_interval == 0:
                self._sample()

    def _progress_bar(self):
        if not (self.cfg.logging.progress_bar and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.max_steps or None, initial=self.step, desc=self.kind, unit="step", dynamic_ncols=True, leave=True)

    def _distributed(self) -> bool:
        return self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def _should_stop(self) -> bool:
        """The local stop flag; under DDP any rank's stop stops every rank at the same step (no hung all-reduce)."""
        stop = self.stop_requested
        if self._distributed():
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0 and not stop:
                self.stop_reason = self.stop_reason or "stop requested (another rank)"
                self._stop.set()
            stop = flag.item() > 0
        return stop

    # ----- one optimizer step ----------------------------------------------------------------
    def _train_step(self) -> dict[str, Any]:
        lr = self._set_lr()
        self._computed_tokens = 0
        total_loss, tokens, x = self._accumulate_gradients()
        self.scaler.unscale_(self.optimizer)
        # per-block norms are read before clipping, so they add up (in squares) to the logged grad_norm
        log = self.cfg.logging
        layer_norms = layer_grad_norms(self.model) if log.log_gradients and (self.step + 1) % log.log_interval == 0 else None
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.optim.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))
        loss_value = float(total_loss)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            return self._skip_update(loss_value, grad_norm)
        self.faults_in_a_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.tokens_seen += tokens * self.world_size
        rec = {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
               "tokens": tokens, "computed_tokens": self._computed_tokens or tokens,
               "tokens_seen": self.tokens_seen, "skipped": False}
        if self.cfg.schedule.context_growth:
            rec["seq_len"] = int(x.shape[1])
        if layer_norms is not None:
            rec["grad_norms"] = layer_norms
        return rec

    def _set_lr(self) -> float:
        s = self.cfg.schedule
        lr = lr_at(self.step, learning_rate=self.cfg.optim.learning_rate, min_lr=s.min_lr, warmup_steps=s.warmup_steps,
                   max_steps=self.max_steps, lr_scheduler=s.lr_scheduler, lr_restarts=s.lr_restarts, decay_lr=s.decay_lr,
                   decay_fraction=s.decay_fraction, time=self.train_clock.progress(self.step, s.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _accumulate_gradients(self) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Forward and backward over accumulation_steps micro-batches: (mean loss, trained tokens, last inputs)."""
        model = self.model
        fwd = self._forward_model()
        model.train()
        total_loss = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(self.accumulation_steps):
            x, y, extras = unpack_batch(next(self.train_batches), self.device)
            last = micro == self.accumulation_steps - 1
            # all-reduce once per optimizer step, not per micro-batch
            no_sync = self.world_size > 1 and not last and isinstance(model, DistributedDataParallel)
            with model.no_sync() if no_sync else contextlib.nullcontext():
                with self._autocast():
                    loss = self._forward_loss(fwd, x, y, extras)
                loss = loss / self.accumulation_steps
                self.scaler.scale(loss).backward()
            total_loss += loss.detach()
            tokens += self._count_tokens(y)
            self._computed_tokens += x.numel()
        if self._distributed():
            # the logged loss is the global batch's (equal-sized shards: the mean of the ranks' means)
            torch.distributed.all_reduce(total_loss)
            total_loss /= self.world_size
        return total_loss, tokens, x

    def _forward_loss(self, fwd, x: torch.Tensor, y: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run_forward(fwd, x, y, **extras)[1]

    def _run_forward(self, fwd, *args, **kwargs):
        """fwd(*args, **kwargs); a compiled graph that fails at first call falls back to eager for the rest of the run."""
        try:
            return fwd(*args, **kwargs)
        except Exception as e:
            if fwd is self.model:
                raise
            logger.warning("torch.compile failed at first use (%s); continuing without compile", type(e).__name__)
            self._compiled = self.model
            return self.model(*args, **kwargs)

    def _count_tokens(self, y: torch.Tensor) -> int:
        """Tokens a micro-batch trains on: every target of a pretraining window."""
        return y.numel()

    def _skip_update(self, loss_value: float, grad_norm: float) -> dict[str, Any]:
        """A NaN/inf step must not touch the weights or the optimizer moments: drop its gradients, count it."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()  # lets fp16 lower its loss scale, which is the usual cure
        self.faults_in_a_row += 1
        self.faults_total += 1
        self._log({"step": self.step, "skipped": True, "loss": loss_value, "grad_norm": grad_norm,
                   "faults_total": self.faults_total}, event=True)
        logger.warning("step %d: non-finite loss/grad norm (%s, %s); update skipped", self.step, loss_value, grad_norm)
        return {"skipped": True, "tokens": 0}

    # ----- evaluation (evaluation.py does the work) ------------------------------------------
    def _eval_loss(self) -> float:
        return evaluation.eval_loss(self)

    def evaluate(self) -> dict[str, Any]:
        return evaluation.evaluate(self)

    def _track_early_stopping(self, rec: dict) -> None:
        evaluation.track_early_stopping(self, rec)

    # ----- logging, callbacks, samples -------------------------------------------------------
    def _log(self, rec: dict, event: bool = False) -> None:
        rec = {k: v for k, v in rec.items() if k not in ("skipped", "tokens", "computed_tokens") or event}
        if self.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        if not event:
            self._emit("on_log", rec)
            if self.step % self.cfg.logging.log_interval == 0 or "val_loss" in rec:
                logger.info(format_metrics(rec))

    def _emit(self, name: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)  # callbacks implement only the events they care about
            if fn is not None:
                fn(self, *args)

    def _sample(self) -> None:
        evaluation.sample(self)

    # ----- checkpoints (run_state.py does the work) ------------------------------------------
    def save_step_checkpoint(self) -> Path | None:
        if not self.is_main:
            return None
        folder = run_state.save_step_checkpoint(self)
        self._last_saved_step = self.step
        if self.timer is not None:
            self.timer.saved()
        self._emit("on_save", folder)
        return folder

    def save_final(self) -> Path:
        folder = run_state.save_final(self)
        self._emit("on_save", folder)
        return folder

    # Weight-file hooks: a subclass (SFT with LoRA, in sft.py) saves/loads something other than model.safetensors.
    def checkpoint_weights(self, final: bool) -> dict[str, dict[str, torch.Tensor]] | None:
        """safetensors files for a checkpoint (name -> state dict); None = model.safetensors with all weights."""
        return None

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        ckpt.load_model_state(ckpt.unwrap(self.model), load_file(str(folder / "model.safetensors")), str(folder))

    def resume(self, folder: str | Path) -> None:
        run_state.resume(self, folder)

