"""Folder operations of a run, on plain values: which checkpoint to resume, whether it fits the current model,
archiving an earlier run found in the folder, branching on resume, keeping metrics.jsonl consistent with the step
a run resumes from, and the Python/numpy RNG states a checkpoint records. What a resume or a save changes in
the Trainer is a Trainer method (trainer.py)."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint as ckpt

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


def checkpoint_to_resume(output_dir: Path, resume_from: str | None) -> Path | None:
    """resume_from (checked), else the newest checkpoint in `output_dir` that checks out, else None."""
    if resume_from:
        ckpt.check_resumable(resume_from)
        return Path(resume_from)
    folder = ckpt.latest_valid_checkpoint(output_dir)
    if folder is None:
        logger.info("auto_resume: no checkpoint in %s; starting fresh", output_dir)
    return folder


def check_compatible(folder: Path, meta: dict[str, Any], model: dict[str, Any], tokenizer_sha256: str | None,
                     train: dict[str, Any]) -> None:
    """Refuse a checkpoint (its config.json `meta`) of another model shape (`model`, a ModelConfig dict) or
    tokenizer; warn about changed training settings (`train`, the flat TrainConfig)."""
    saved_model = meta.get("model", {})
    if saved_model != model:
        diff = sorted(k for k in set(saved_model) | set(model) if saved_model.get(k) != model.get(k))
        raise ckpt.CheckpointError(f"{folder}: model shape differs from the current one in {diff}; cannot resume")
    saved_sha = meta.get("tokenizer_sha256")
    if tokenizer_sha256 and saved_sha and saved_sha != tokenizer_sha256:
        raise ckpt.CheckpointError(f"{folder}: trained with tokenizer {saved_sha[:12]}, current is {tokenizer_sha256[:12]}")
    old_train = meta.get("train", {})
    for key in WATCHED_ON_RESUME:
        if key in old_train and old_train[key] != train.get(key):
            logger.warning("resume: %s changed from %s to %s", key, old_train[key], train.get(key))


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
