"""The Trainer: one loop (`fit`) and one optimizer step (`_train_step`) for pretraining, SFT, DPO and RL.

Read `fit` top to bottom: each step trains, then at its intervals the loop evaluates, logs, saves a checkpoint and
samples; whatever ends it (max_steps, max_minutes, early stopping, a stop request, a signal, numerical faults), a
resumable checkpoint is left. Everything that changes the trainer's state (step, best_val, the optimizer on resume)
is a method here. The helpers take and return plain values: run_state (folder operations), clock (training time,
budget, checkpoints by time), optim, schedules, machine, batches, metrics, checkpoint (the files).

From notebook 03 to the attention: 03_pretrain's `trainer.fit()` -> `Trainer._train_step` -> `Trainer._forward_loss`
-> `GPT.forward` -> `Block.forward` -> `Attention.forward` (model/gpt.py). SFTTrainer, DPOTrainer and GRPOTrainer
override `_forward_loss`, `_count_tokens`, `_grow_context`, `checkpoint_weights`, `load_weights`, `evaluate`, `_log`.
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
from . import run_state
from ..atomic import clean_stale_temporaries
from .batches import BatchSource, GrowingBatchSource, accumulation_steps, check_batch_source, grow_context, unpack_batch
from .clock import TrainClock
from .guard import ResourceGuard
from .machine import autocast, compile_model, install_stop_signals, matmul_peak, setup_machine
from .memory import plan_memory
from .metrics import eval_loss, flops_per_token, format_metrics, layer_grad_norms, throughput
from .optim import EMA, build_optimizer
from .run_lock import RunLock
from .schedules import lr_at
from ..config import ModelConfig, TrainConfig
from ..devices import memory_mb

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


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
        self.accumulation_steps = accumulation_steps(cfg, self.seq_len, world_size)
        # the memory switches go onto the model; a step that cannot fit stops here, naming what would fit
        self.memory_estimate = plan_memory(self.model, cfg.machine, cfg.optim.batch_size, self.seq_len,
                                           self.accumulation_steps, cfg.optim.optimizer_type, self.device, self.dtype)
        self.train_batches = self._prefetched(train_batches)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        fp16_cuda = self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16_cuda)
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.use_ema else None
        self.max_steps = cfg.schedule.max_steps  # 0 with max_minutes: no step limit
        # the run's one clock: training time (max_minutes), checkpoints by time, the estimate (tests inject `clock`)
        self.train_clock = TrainClock(cfg.schedule.max_minutes, cfg.checkpoints.save_minutes, clock or time.perf_counter)
        self.step, self.tokens_seen, self.best_val, self.evals_without_improvement = 0, 0, math.inf, 0
        self.faults_in_a_row, self.faults_total = 0, 0
        self.history: list[dict] = []  # eval records
        self.stop_reason: str | None = None
        self._stop, self._compiled, self._last_saved_step = threading.Event(), None, -1
        # the measured matmul peak of the run's dtype (MFU's denominator) and that dtype's name: fp32, bf16 or fp16
        self.peak_flops, self.peak_dtype = None, None
        self.run_lock: RunLock | None = None  # the output folder's lock while fit() runs (rank 0)

    # ----- construction helpers --------------------------------------------------------------
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
        """config.json's content; "train" is the flat TrainConfig dict."""
        return {
            "kind": self.kind,
            "model": self.model_cfg.to_dict(),
            "train": self.cfg.to_flat(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokenizer_sha256": getattr(self.tokenizer, "sha256", None),
            "params": self.extra_config,
        }

    # ----- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until max_steps or max_minutes, early stop, a stop request or a signal; always leaves a checkpoint."""
        ev, saves, log_every = self.cfg.evaluation, self.cfg.checkpoints, self.cfg.logging.log_interval
        # stop signals are handled until the last checkpoint is written: a second Ctrl+C cannot cut a save short
        restore_signals, bar = install_stop_signals(self._on_signal), None
        try:
            self._prepare_run()  # the folder's lock; resume, or archive an earlier run; run_config.json
            self._emit("on_train_begin")
            bar = self._progress_bar()
            self.train_clock.start(self.step)
            window = (time.perf_counter(), 0, 0)  # since the last log line: start, trained and computed tokens
            last = False  # this step is the run's last (max_steps or the time budget)
            while not (last or 0 < self.max_steps <= self.step or self._should_stop()):
                if self.guard is not None:
                    with self.train_clock.paused():  # waiting for memory or temperature is not training
                        self.guard.wait_if_needed(self._stop)
                rec = self._train_step()
                if rec["skipped"]:  # nothing changed; max_faults in a row stop the run
                    if self._too_many_faults():
                        break
                    continue
                last = self._reached_the_end()
                window = (window[0], window[1] + rec["tokens"], window[2] + rec["computed_tokens"])
                if self.step % log_every == 0 or last:
                    rec.update(self._throughput(window))
                    window = (time.perf_counter(), 0, 0)
                rec["elapsed_s"], rec["train_s"] = self.train_clock.wall_s(), self.train_clock.elapsed_s()
                with self.train_clock.paused():  # evaluating, logging, saving and sampling are not training time
                    if self.step % ev.eval_interval == 0 or last:
                        rec.update(self.evaluate())
                        self._track_early_stopping(rec)
                    self._log(rec)
                    if (per_step := self.train_clock.step_done(self.step)) is not None and self.is_main:
                        self.train_clock.log_estimate(per_step, self.step, self.max_steps, str(self.device),
                                                      self.model_cfg, saves.save_interval)
                    if (self.step % saves.save_interval == 0 or self.train_clock.save_due()) and not last:
                        self.save_step_checkpoint()
                    if ev.sample_interval and self.step % ev.sample_interval == 0:
                        self._sample()
                if bar is not None:
                    bar.update(self.step - bar.n)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.1e}", refresh=False)
                if self.stop_reason == "early stopping":
                    break
            self._save_at_end()
            result = {"step": self.step, "tokens_seen": self.tokens_seen, "stop_reason": self.stop_reason or "max_steps",
                      "best_val_loss": self.best_val if self.best_val < math.inf else None, "faults": self.faults_total,
                      "elapsed_s": self.train_clock.wall_s(), "train_s": self.train_clock.elapsed_s()}
            self._emit("on_train_end", result)
            return result
        finally:
            restore_signals()
            if bar is not None:
                bar.close()
            if self._prefetch is not None:
                self._prefetch.close()  # the prefetching threads this trainer started
            if self.run_lock is not None:  # the OS drops the lock too if this process dies
                self.run_lock.release()
                self.run_lock = None

    def _train_step(self) -> dict[str, Any]:
        """One optimizer step: forward and backward over accumulation_steps micro-batches, clip, update; a step
        whose loss or gradient norm is not finite changes nothing (see _skip_update)."""
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        fwd = self._forward_model()
        self.model.train()
        total_loss, tokens, computed = torch.zeros((), device=self.device), 0, 0
        for micro in range(self.accumulation_steps):
            x, y, extras = unpack_batch(next(self.train_batches), self.device)
            # under DDP the gradients are all-reduced once per optimizer step, not per micro-batch
            no_sync = micro < self.accumulation_steps - 1 and isinstance(self.model, DistributedDataParallel)
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                with self._autocast():
                    try:
                        loss = self._forward_loss(fwd, x, y, extras)
                    except Exception as e:
                        if fwd is self.model:
                            raise
                        fwd = self._without_compile(e)  # a compiled graph failed at its first call
                        loss = self._forward_loss(fwd, x, y, extras)
                loss = loss / self.accumulation_steps
                self.scaler.scale(loss).backward()
            total_loss += loss.detach()
            tokens += self._count_tokens(y)
            computed += x.numel()
        if self._distributed():  # the logged loss is the global batch's (equal shards: the mean of the ranks' means)
            torch.distributed.all_reduce(total_loss)
            total_loss /= self.world_size
        self.scaler.unscale_(self.optimizer)
        # per-block norms are read before clipping, so they add up (in squares) to the logged grad_norm
        log = self.cfg.logging
        layer_norms = layer_grad_norms(self.model) if log.log_gradients and (self.step + 1) % log.log_interval == 0 else None
        clip = self.cfg.optim.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                                         clip if clip > 0 else float("inf")))
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
        rec = {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
               "computed_tokens": computed, "tokens_seen": self.tokens_seen, "skipped": False}
        if self.cfg.schedule.context_growth:
            rec["seq_len"] = int(x.shape[1])
        if layer_norms is not None:
            rec["grad_norms"] = layer_norms
        return rec

    def _forward_loss(self, fwd, x: torch.Tensor, y: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """The micro-batch's loss from `fwd` (the model, or its compiled graph); subclasses put their loss here."""
        return fwd(x, y, **extras)[1]

    def _count_tokens(self, y: torch.Tensor) -> int:
        """Tokens a micro-batch trains on: every target of a pretraining window."""
        return y.numel()

    # ----- what the loop and the step read or decide ------------------------------------------
    def learning_rate(self) -> float:
        """The schedule's learning rate for the next step (by step, or by training time with max_minutes)."""
        s = self.cfg.schedule
        return lr_at(self.step, learning_rate=self.cfg.optim.learning_rate, min_lr=s.min_lr, warmup_steps=s.warmup_steps,
                     max_steps=self.max_steps, lr_scheduler=s.lr_scheduler, lr_restarts=s.lr_restarts,
                     decay_lr=s.decay_lr, decay_fraction=s.decay_fraction,
                     time=self.train_clock.progress(self.step, s.warmup_steps))

    def _forward_model(self) -> torch.nn.Module:
        """The model, or its torch.compile graph (built at the first step) with enable_compile."""
        m = self.cfg.machine
        if m.enable_compile and self._compiled is None:
            if m.disable_speedups:
                logger.info("enable_compile ignored: disable_speedups=True")
                self._compiled = self.model
            else:
                self._compiled = compile_model(self.model, self.cfg, self.device)
        return self._compiled or self.model

    def _without_compile(self, error: Exception) -> torch.nn.Module:
        """The compiled graph failed at its first call: the eager model for the rest of the run."""
        logger.warning("torch.compile failed at first use (%s); continuing without compile", type(error).__name__)
        self._compiled = self.model
        return self.model

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

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

    def _too_many_faults(self) -> bool:
        if self.faults_in_a_row < self.max_faults:
            return False
        self.stop_reason = "numerical faults"
        logger.error("%d non-finite losses/gradients in a row at step %d: stopping. Try a lower learning_rate, "
                     "longer warmup_steps, or dtype=float32/bfloat16 instead of float16 (loss-scale overflow).",
                     self.faults_in_a_row, self.step)
        return True

    def _reached_the_end(self) -> bool:
        """After a step: max_steps reached, or max_minutes of training time used (under DDP rank 0's clock decides,
        so every rank stops at the same step)."""
        done = self.train_clock.over_budget()
        if self.train_clock.has_budget and self._distributed():
            flag = torch.tensor([1.0 if done else 0.0], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            done = flag.item() > 0
        if done and self.stop_reason is None:
            self.stop_reason = "max_minutes"
        return done or self.step == self.max_steps

    def _throughput(self, window: tuple[float, int, int]) -> dict[str, Any]:
        """A log line's speed, memory and guard fields; `window` = (its start, trained and computed tokens)."""
        out = throughput(window[1], window[2], time.perf_counter() - window[0], self.world_size,
                         flops_per_token(self.model_cfg, self.seq_len), self.peak_flops, self.peak_dtype)
        out["memory_mb"] = memory_mb(self.device)
        if self.guard is not None and self.guard.last_reading:
            out.update({f"{k}_percent": round(v, 1) for k, v in self.guard.last_reading.items()})
        return out

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

    # ----- evaluation and samples ------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """val_loss over the first num_eval_batches validation batches, val_bpc when characters per token are known,
        val_loss_ema with EMA; the model is back in train mode after."""
        if not self.eval_batches:
            return {}
        model, batches = ckpt.unwrap(self.model), self.eval_batches[: self.cfg.evaluation.num_eval_batches]
        out = {"val_loss": eval_loss(model, batches, self.device, self._autocast, self.world_size)}
        if self.chars_per_token:
            out["val_bpc"] = out["val_loss"] / (self.chars_per_token * math.log(2))
        if self.ema is not None:
            raw = {k: v.clone() for k, v in ckpt.model_state_live(self.model).items()}
            self.ema.copy_to(self.model)
            out["val_loss_ema"] = eval_loss(model, batches, self.device, self._autocast, self.world_size)
            ckpt.load_model_state(model, raw, "raw weights")
        self.model.train()
        return out

    def _track_early_stopping(self, rec: dict) -> None:
        """Keep the eval history and the best loss; set stop_reason when `patience` evals brought no improvement."""
        if "val_loss" not in rec:
            return
        self.history.append({"step": self.step, "val_loss": rec["val_loss"]})
        if rec["val_loss"] < self.best_val - 1e-6:
            self.best_val = rec["val_loss"]
            self.evals_without_improvement = 0
            return
        self.evals_without_improvement += 1
        ev = self.cfg.evaluation
        if ev.early_stopping and self.evals_without_improvement >= ev.patience:
            self.stop_reason = "early stopping"
            logger.info("early stopping at step %d: no val improvement in %d evals (best %.4f)",
                        self.step, ev.patience, self.best_val)

    def _sample(self) -> None:
        """Greedy continuations of sample_prompts, logged and handed to callbacks' on_sample."""
        prompts = self.cfg.evaluation.sample_prompts
        if self.tokenizer is None or not prompts or not self.is_main:
            return
        from ..infer.generate import GenerationConfig, TextGenerator

        gen = TextGenerator(ckpt.unwrap(self.model), self.tokenizer, device=self.device)
        greedy = GenerationConfig(max_new_tokens=max(1, min(40, self.model_cfg.max_seq_len // 2)), do_sample=False)
        for prompt in prompts:
            text = gen.generate(prompt, greedy)
            logger.info("sample @%d %r -> %r", self.step, prompt, text)
            self._emit("on_sample", prompt, text)
        self.model.train()

    # ----- logging and callbacks -------------------------------------------------------------
    def _log(self, rec: dict, event: bool = False) -> None:
        """A metrics.jsonl line (rank 0); a step's record also goes to callbacks' on_log and, at log steps, the log."""
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

    # ----- the run's state: start, resume, checkpoints -----------------------------------------
    def _prepare_run(self) -> None:
        """Before the first step: take the folder's lock (rank 0), clean leftovers of interrupted writes, measure the
        matmul peak (before any RNG state is restored), resume if asked, else archive an earlier run;
        run_config.json; say what the run will do."""
        c = self.cfg.checkpoints
        if self.is_main:
            self.run_lock = RunLock(self.output_dir).acquire()
            clean_stale_temporaries(self.output_dir)
        if self.peak_flops is None:
            self.peak_flops, self.peak_dtype = matmul_peak(self.device, self.dtype)
        if c.resume_from or c.auto_resume:
            folder = run_state.checkpoint_to_resume(self.output_dir, c.resume_from)
            if folder is not None:
                self.resume(folder)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            if self.step == 0:
                run_state.archive_previous_run(self.output_dir)  # a fresh run starts a fresh log and checkpoint series
            if self.cfg.logging.plot_loss:
                (self.output_dir / "plots").mkdir(exist_ok=True)
            if c.save_config:  # the merged parameters beside the checkpoints (the monitor reads max_steps here)
                ckpt.atomic_write_json(self.output_dir / "run_config.json", {**self.config_dict(), "max_steps": self.max_steps})
        budget = f", {self.cfg.schedule.max_minutes:g} minutes of training time" if self.train_clock.has_budget else ""
        logger.info("training on %s, dtype %s (%s), accumulation %d, %s steps%s", self.device,
                    str(self.dtype).replace("torch.", ""), self.dtype_reason, self.accumulation_steps,
                    self.max_steps or "no limit on", budget)
        if self.peak_flops:
            logger.info("MFU is measured against the measured %s matmul peak of this machine, %s GFLOP/s",
                        self.peak_dtype, f"{self.peak_flops / 1e9:,.0f}")

    def resume(self, folder: str | Path) -> None:
        """Continue exactly where `folder` left off: weights, EMA, optimizer, RNGs, sampler, counters, clock, metrics."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = ckpt.read_config(folder)  # checked: the shape is bounded by the weights file
        run_state.check_compatible(folder, meta, self.model_cfg.to_dict(), getattr(self.tokenizer, "sha256", None),
                                   self.cfg.to_flat())
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
        state = ckpt.read_trainer_state(folder)
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.train_batches.load_state_dict(state["sampler"])
        run_state.set_rng_state(state["rng"])
        self.best_val = state["best_val"] if state.get("best_val") is not None else math.inf
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.faults_total = int(state.get("faults_total", 0))
        self.history = state.get("history", [])
        self.train_clock.load_state_dict(state.get("train_clock"), str(folder / "trainer_state.json"))
        if self.is_main:
            run_state.start_branch(self.output_dir, folder, self.step)
            run_state.truncate_metrics(self.metrics_path, self.step)
        logger.info("resumed from %s at step %d", folder, self.step)

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

    def save_step_checkpoint(self) -> Path | None:
        """checkpoint_step_N/ with everything resume needs (rank 0 writes it); then prune older ones."""
        if not self.is_main:
            return None
        folder = self.output_dir / f"checkpoint_step_{self.step}"
        ckpt.save_checkpoint(folder, self.model, self.config_dict(), self.tokenizer_dir,
                             ema_state=self.ema.shadow if self.ema else None, optimizer_state=self._optimizer_state(),
                             trainer_state=self._trainer_state(), weights=self.checkpoint_weights(final=False))
        c = self.cfg.checkpoints
        ckpt.prune_checkpoints(self.output_dir, c.keep_last_n_checkpoints, c.permanent_checkpoints)
        self._last_saved_step = self.step
        self.train_clock.saved()
        self._emit("on_save", folder)
        return folder

    def save_final(self) -> Path:
        """final_model/: the weights (and EMA) with config and tokenizer, without optimizer state."""
        folder = self.output_dir / "final_model"
        ckpt.save_checkpoint(folder, self.model, self.config_dict(), self.tokenizer_dir,
                             ema_state=self.ema.shadow if self.ema else None, weights=self.checkpoint_weights(final=True))
        self._emit("on_save", folder)
        return folder

    def _optimizer_state(self) -> dict[str, Any]:
        """optimizer.pt's content: optimizer, loss scaler, torch RNGs, and the schedule's settings."""
        s = self.cfg.schedule
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # the schedule is a pure function of the step; its settings are kept to warn when they change
            "scheduler": {"lr_scheduler": s.lr_scheduler, "step": self.step, "max_steps": self.max_steps,
                          "warmup_steps": s.warmup_steps, "lr": self.optimizer.param_groups[0]["lr"]},
        }

    def _trainer_state(self) -> dict[str, Any]:
        """trainer_state.json's content: counters, sampler position, RNGs, early-stopping and eval history, clock."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "sampler": self.train_batches.state_dict(),
            "rng": run_state.rng_state(),
            "best_val": self.best_val if self.best_val < math.inf else None,
            "evals_without_improvement": self.evals_without_improvement,
            "faults_total": self.faults_total,
            "history": self.history,
            "train_clock": self.train_clock.state_dict(),  # training seconds: a max_minutes run continues its clock
        }

    # Weight-file hooks: a subclass (SFT with LoRA, in sft.py) saves/loads something other than model.safetensors.
    def checkpoint_weights(self, final: bool) -> dict[str, dict[str, torch.Tensor]] | None:
        """safetensors files for a checkpoint (name -> state dict); None = model.safetensors with all weights."""
        return None

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        ckpt.load_model_state(ckpt.unwrap(self.model), load_file(str(folder / "model.safetensors")), str(folder))
