"""A run's state on disk: step checkpoints and the final model, exact resume (weights, optimizer, RNGs,
sampler position, metric history), archiving an earlier run found in the folder, and keeping
metrics.jsonl consistent with the step a run resumes from."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from ..atomic import clean_stale_temporaries
from .run_lock import RunLock

# The train.trainer.Trainer these helpers are handed; not imported, since trainer.py imports this module.
Trainer = Any

logger = logging.getLogger(__name__)

# Files and folders of a run in its output folder (what archive_previous_run moves aside).
RUN_ITEMS = ("final_model", "metrics.jsonl", "run_config.json", "plots")
# Settings whose change between a checkpoint and the resuming run is worth a warning.
WATCHED_ON_RESUME = ("batch_size", "learning_rate", "max_steps", "accumulation_steps")


def rng_state() -> dict[str, Any]:
    """Python's and numpy's global RNG states as JSON-ready lists (torch's go to optimizer.pt)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))


def optimizer_state(trainer: Trainer) -> dict[str, Any]:
    """optimizer.pt's content: optimizer, loss scaler, torch RNGs, and the schedule's settings."""
    cfg = trainer.cfg
    return {
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # the schedule is a pure function of the step; its settings are kept to warn when they change
        "scheduler": {"lr_scheduler": cfg.schedule.lr_scheduler, "step": trainer.step, "max_steps": trainer.max_steps,
                      "warmup_steps": cfg.schedule.warmup_steps, "lr": trainer.optimizer.param_groups[0]["lr"]},
    }


def trainer_state(trainer: Trainer) -> dict[str, Any]:
    """trainer_state.json's content: counters, sampler position, RNGs, early-stopping and eval history."""
    return {
        "step": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "sampler": trainer.train_batches.state_dict(),
        "rng": rng_state(),
        "best_val": trainer.best_val if trainer.best_val < math.inf else None,
        "evals_without_improvement": trainer.evals_without_improvement,
        "faults_total": trainer.faults_total,
        "history": trainer.history,
        "train_clock": trainer.train_clock.state_dict(),  # training seconds: a max_minutes run continues its clock
    }


def save_step_checkpoint(trainer: Trainer) -> Path:
    """checkpoint_step_N/ with everything resume needs; then prune older ones."""
    folder = trainer.output_dir / f"checkpoint_step_{trainer.step}"
    ckpt.save_checkpoint(folder, trainer.model, trainer.config_dict(), trainer.tokenizer_dir,
                         ema_state=trainer.ema.shadow if trainer.ema else None,
                         optimizer_state=optimizer_state(trainer), trainer_state=trainer_state(trainer),
                         weights=trainer.checkpoint_weights(final=False))
    c = trainer.cfg.checkpoints
    ckpt.prune_checkpoints(trainer.output_dir, c.keep_last_n_checkpoints, c.permanent_checkpoints)
    return folder


def save_final(trainer: Trainer) -> Path:
    """final_model/: the weights (and EMA) with config and tokenizer, without optimizer state."""
    folder = trainer.output_dir / "final_model"
    ckpt.save_checkpoint(folder, trainer.model, trainer.config_dict(), trainer.tokenizer_dir,
                         ema_state=trainer.ema.shadow if trainer.ema else None,
                         weights=trainer.checkpoint_weights(final=True))
    return folder


def checkpoint_to_resume(trainer: Trainer) -> Path | None:
    """resume_from (checked), else with auto_resume the newest checkpoint that checks out, else None."""
    c = trainer.cfg.checkpoints
    if c.resume_from:
        ckpt.check_resumable(c.resume_from)
        return Path(c.resume_from)
    folder = ckpt.latest_valid_checkpoint(trainer.output_dir)
    if folder is None:
        logger.info("auto_resume: no checkpoint in %s; starting fresh", trainer.output_dir)
    return folder


def prepare_run(trainer: Trainer) -> None:
    """Before the first step: take the folder's lock (rank 0), clean leftovers of interrupted writes, measure
    peak FLOPs (before any RNG state is restored), resume if asked, else archive an earlier run; run_config.json."""
    from .machine import matmul_peak

    cfg = trainer.cfg
    if trainer.is_main:
        trainer.run_lock = RunLock(trainer.output_dir).acquire()
        clean_stale_temporaries(trainer.output_dir)
    if trainer.peak_flops is None:
        trainer.peak_flops, trainer.peak_dtype = matmul_peak(trainer.device, trainer.dtype)  # the run's dtype's peak
    if cfg.checkpoints.resume_from or cfg.checkpoints.auto_resume:
        folder = checkpoint_to_resume(trainer)
        if folder is not None:
            trainer.resume(folder)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    if trainer.step == 0 and trainer.is_main:
        archive_previous_run(trainer.output_dir)  # a fresh run starts a fresh log and checkpoint series
    if trainer.is_main and cfg.logging.plot_loss:
        (trainer.output_dir / "plots").mkdir(exist_ok=True)
    if trainer.is_main and cfg.checkpoints.save_config:
        write_run_config(trainer)


def release_run(trainer: Trainer) -> None:
    lock = getattr(trainer, "run_lock", None)
    if lock is not None:
        lock.release()
        trainer.run_lock = None


def check_compatible(trainer: Trainer, folder: Path, meta: dict[str, Any]) -> None:
    """Refuse a checkpoint of another model shape or tokenizer; warn about changed training settings."""
    saved_model, current = meta.get("model", {}), trainer.model_cfg.to_dict()
    if saved_model != current:
        diff = sorted(k for k in set(saved_model) | set(current) if saved_model.get(k) != current.get(k))
        raise ckpt.CheckpointError(f"{folder}: model shape differs from the current one in {diff}; cannot resume")
    sha = getattr(trainer.tokenizer, "sha256", None)
    if sha and meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != sha:
        raise ckpt.CheckpointError(f"{folder}: trained with tokenizer {meta['tokenizer_sha256'][:12]}, current is {sha[:12]}")
    old_train, now = meta.get("train", {}), trainer.cfg.to_flat()
    for key in WATCHED_ON_RESUME:
        if key in old_train and old_train[key] != now[key]:
            logger.warning("resume: %s changed from %s to %s", key, old_train[key], now[key])


def resume(trainer: Trainer, folder: str | Path) -> None:
    """Continue exactly where `folder` left off: weights, EMA, optimizer, RNGs, sampler, counters, metrics."""
    from safetensors.torch import load_file

    folder = Path(folder)
    check_compatible(trainer, folder, ckpt.read_config(folder))  # checked: shape bounded by the weights file
    trainer.load_weights(folder)
    if trainer.ema is not None and (folder / "ema.safetensors").is_file():
        trainer.ema.shadow = {k: v.float() for k, v in load_file(str(folder / "ema.safetensors")).items()}
    opt = ckpt.load_optimizer_state(folder)
    if opt is not None:
        trainer.optimizer.load_state_dict(opt["optimizer"])
        trainer.scaler.load_state_dict(opt["scaler"])
        torch.set_rng_state(opt["torch_rng"])
        if opt.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(opt["cuda_rng"])
    state = ckpt.read_trainer_state(folder)
    trainer.step = int(state["step"])
    trainer.tokens_seen = int(state["tokens_seen"])
    trainer.train_batches.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    trainer.best_val = state["best_val"] if state.get("best_val") is not None else math.inf
    trainer.evals_without_improvement = int(state.get("evals_without_improvement", 0))
    trainer.faults_total = int(state.get("faults_total", 0))
    trainer.history = state.get("history", [])
    trainer.train_clock.load_state_dict(state.get("train_clock"), str(folder / "trainer_state.json"))
    if trainer.is_main:
        start_branch(trainer.output_dir, folder, trainer.step)
        truncate_metrics(trainer.metrics_path, trainer.step)
    logger.info("resumed from %s at step %d", folder, trainer.step)


def _archive_folder(output_dir: Path, label: str = "") -> Path:
    """A new, empty previous/<time>[-label]/ folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + (f"-{label}" if label else "")
    dest, n = output_dir / "previous" / stamp, 0
    while dest.exists():
        n += 1
        dest = output_dir / "previous" / f"{stamp}_{n}"
    dest.mkdir(parents=True)
    return dest


def archive_previous_run(output_dir: Path) -> Path | None:
    """Move an earlier run's checkpoints, final model and logs out of the way, into previous/<time>/.

    A fresh run in a used folder must not mix with the old run: pruning keeps the highest step numbers,
    so the old run's later checkpoints would delete the new run's, and auto-resume would pick them up.
    Nothing is deleted; the warning says where the old run went.
    """
    old = [p for p in output_dir.iterdir() if p.name.startswith("checkpoint_step_") or p.name in RUN_ITEMS] \
        if output_dir.is_dir() else []
    if not old:
        return None
    dest = _archive_folder(output_dir)
    for p in old:
        os.replace(p, dest / p.name)
    logger.warning("%s held an earlier run (%d items); moved to %s (set auto_resume=True to continue a run instead)",
                   output_dir, len(old), dest)
    return dest


def _saved_step(folder: Path) -> int | None:
    """The step a checkpoint folder's config.json records (None when unreadable)."""
    try:
        step = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("step")
        return step if isinstance(step, int) else None
    except (OSError, ValueError, AttributeError):
        return None


def start_branch(output_dir: Path, source: Path, step: int) -> Path | None:
    """Resuming from `source` (step `step`) starts a branch: nothing of what the folder holds is lost.

    From a checkpoint of this folder, its checkpoints past `step`, a final_model of another step and a copy of
    metrics.jsonl and run_config.json move to previous/<time>-branch-from-step-N/; the checkpoints up to `step`
    (the branch's own history) stay. From a checkpoint elsewhere, the folder's run is archived whole, as a
    fresh run does, and the source run's metric lines up to `step` start this folder's log.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if source.resolve().parent != output_dir.resolve():
        dest = archive_previous_run(output_dir)
        src_metrics = source.parent / "metrics.jsonl"
        if src_metrics.is_file() and not (output_dir / "metrics.jsonl").exists():
            shutil.copy2(src_metrics, output_dir / "metrics.jsonl")  # truncated to `step` by the caller
        return dest
    later = [p for s, p in ckpt.list_checkpoints(output_dir) if s > step]
    final = output_dir / "final_model"
    if final.is_dir() and _saved_step(final) != step:
        later.append(final)
    if not later:
        return None
    dest = _archive_folder(output_dir, f"branch-from-step-{step}")
    for name in ("metrics.jsonl", "run_config.json"):
        if (output_dir / name).is_file():
            shutil.copy2(output_dir / name, dest / name)
    for p in later:
        os.replace(p, dest / p.name)
    logger.warning("resuming %s at step %d starts a branch: the run this folder held went on past it; its %s "
                   "moved to %s (with a copy of its metrics); nothing was deleted",
                   source.name, step, ", ".join(p.name for p in later), dest)
    return dest


def truncate_metrics(metrics_path: Path, step: int) -> None:
    """Drop metric lines past `step` so the log of a resumed run reads as one uninterrupted run."""
    if not metrics_path.is_file():
        return
    keep = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a half-written last line from a killed run
    ckpt.atomic_write_text(metrics_path, "".join(l + "\n" for l in keep))


def write_run_config(trainer: Trainer) -> None:
    """run_config.json: the merged parameters beside the checkpoints (the monitor reads max_steps here)."""
    ckpt.atomic_write_json(trainer.output_dir / "run_config.json", {**trainer.config_dict(), "max_steps": trainer.max_steps})
