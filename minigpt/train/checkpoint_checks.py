"""What a checkpoint's files must hold before anything is built from them.

Each check reads one file and raises CheckpointError naming it and the problem: the manifest's shape
(entries confined to the folder, non-empty, sizes and checksums well-formed), config.json's model shape
(bounded by the tensors the weights file really holds, so a crafted config cannot make minigpt build a
huge model), and trainer_state.json's counters, sampler position and RNG states.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or incompatible."""


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; CheckpointError naming the file when it is unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from None


def manifest_files(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's {file name: {"size", "sha256"}}, checked for shape; names are plain files in `folder`."""
    mpath = folder / MANIFEST
    manifest = read_json(mpath, "manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{mpath}: expected an object with a \"files\" mapping, got {type(manifest).__name__}"
                              f"{'' if not isinstance(manifest, dict) else ' without one'}")
    if not files:
        raise CheckpointError(f"{mpath}: lists no files; a checkpoint holds at least config.json and its weights")
    for name, meta in files.items():
        if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
            raise CheckpointError(f"{mpath}: entry {name!r} is not a file name inside the checkpoint folder")
        if not isinstance(meta, dict) or not isinstance(meta.get("size"), int) or isinstance(meta.get("size"), bool) \
                or meta["size"] < 0 or not isinstance(meta.get("sha256"), str) or not _SHA256.match(meta["sha256"]):
            raise CheckpointError(f"{mpath}: entry {name!r}: expected {{\"size\": bytes >= 0, \"sha256\": 64 hex digits}}, "
                                  f"got {meta!r}"[:300])
    if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        raise CheckpointError(f"{mpath}: lists {sorted(files)}; a checkpoint needs config.json and a .safetensors weights file")
    return files


def weights_elements(path: Path) -> int:
    """How many numbers the tensors of a safetensors file hold, from its header alone (no data read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception as e:  # the Rust reader raises its own error type for a bad header
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def check_model_shape(config_path: Path, model: dict[str, Any], weights: Path | None) -> None:
    """config.json's model is a valid ModelConfig whose parameter count the weights file can hold."""
    from ..config import ModelConfig

    if not isinstance(model, dict):
        raise CheckpointError(f"{config_path}: \"model\" must be a mapping of ModelConfig fields, got {model!r}"[:300])
    try:
        cfg = ModelConfig.from_dict(model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: bad model config: {e}") from None
    if weights is None or not weights.is_file():
        return
    held = weights_elements(weights)
    if cfg.num_params() > held:
        raise CheckpointError(
            f"{config_path}: describes a model of {cfg.num_params():,} parameters but {weights.name} holds "
            f"{held:,} numbers; refusing to build it (a damaged or crafted config.json)")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_trainer_state(path: Path, state: Any, step_in_name: int | None = None) -> dict[str, Any]:
    """trainer_state.json: non-negative counters (matching the folder's step), a sampler position, RNG states."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected an object, got {type(state).__name__}")
    for key in ("step", "tokens_seen"):
        if not _whole(state.get(key)):
            raise CheckpointError(f"{path}: {key} {state.get(key)!r}; expected a whole number >= 0")
    if step_in_name is not None and state["step"] != step_in_name:
        raise CheckpointError(f"{path}: step {state['step']} but the folder is checkpoint_step_{step_in_name}")
    sampler = state.get("sampler")
    if not isinstance(sampler, dict) or not _whole(sampler.get("position")):
        raise CheckpointError(f"{path}: sampler {sampler!r}; expected an object with a position >= 0"[:300])
    rng = state.get("rng")
    ok_rng = isinstance(rng, dict) and isinstance(rng.get("python"), list) and len(rng["python"]) == 3 \
        and isinstance(rng.get("numpy"), list) and len(rng["numpy"]) == 5
    if not ok_rng:
        raise CheckpointError(f"{path}: rng: expected python and numpy RNG states as written by minigpt")
    for key in ("evals_without_improvement", "faults_total"):
        if key in state and not _whole(state[key]):
            raise CheckpointError(f"{path}: {key} {state[key]!r}; expected a whole number >= 0")
    best = state.get("best_val")
    if best is not None and (not isinstance(best, (int, float)) or not math.isfinite(best)):
        raise CheckpointError(f"{path}: best_val {best!r}; expected a finite number or null")
    if not isinstance(state.get("history", []), list):
        raise CheckpointError(f"{path}: history: expected a list of evaluation records")
    return state
