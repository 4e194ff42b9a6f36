"""Checkpoints: atomic folders of safetensors + JSON, verified by a manifest, loaded without pickle.

A checkpoint folder (`checkpoint_step_N/` or `final_model/`) holds:
  model.safetensors      the weights (tied head stored once)
  ema.safetensors        EMA weights, when use_ema
  config.json            {"format_version", "model": ModelConfig, "train": TrainConfig (flat), "step", "tokens_seen",
                         "tokenizer_sha256", ...}
  optimizer.pt           optimizer / scheduler / scaler state (tensors only: loaded with weights_only=True)
  trainer_state.json     RNG states, sampler position, metric history needed to resume exactly
  tokenizer.json, tokenizer_config.json, special_tokens_map.json
  manifest.json          size and SHA-256 of every other file; written last, so its presence means complete

Before anything is built from a checkpoint, each file it reads is checked and a CheckpointError names the file
and the problem: the manifest's shape (entries confined to the folder, non-empty, sizes and checksums
well-formed), config.json's model shape (bounded by the tensors the weights file really holds, so a crafted
config cannot make minigpt build a huge model), and trainer_state.json's counters, sampler position and RNG states.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..atomic import atomic_folder, atomic_write_json, atomic_write_text, fsync_dir  # noqa: F401 (re-exported)
from ..config import ModelConfig
from ..model.gpt import GPT

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_STEP_DIR = re.compile(r"^checkpoint_step_(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The layout of a checkpoint folder, recorded in config.json. Any other version (older or unknown) is refused,
# never adapted. 2: grouped TrainConfig fields written flat under their current names, every ModelConfig field.
FORMAT_VERSION = 2


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
    try:
        with safe_open(str(path), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception as e:  # the Rust reader raises its own error type for a bad header
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def check_model_shape(config_path: Path, model: dict[str, Any], weights: Path | None) -> None:
    """config.json's model is a valid ModelConfig whose parameter count the weights file can hold."""
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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain GPT under torch.compile's and DDP's wrappers (their state_dict keys gain prefixes)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def model_state_live(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The live tensors (no copy) of the unwrapped model, without the tied head."""
    model = unwrap(model)
    sd = model.state_dict(keep_vars=False)
    if getattr(model, "config", None) is not None and model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights, without the tied head (safetensors refuses shared storage)."""
    return {k: v.detach().contiguous().cpu() for k, v in model_state_live(model).items()}


def load_model_state(model: GPT, state: dict[str, torch.Tensor], source: str = "") -> None:
    if model.config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def write_manifest(folder: Path) -> dict:
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            files[p.name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    manifest = {"format": f"minigpt-checkpoint-{FORMAT_VERSION}", "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_checkpoint(folder: str | Path) -> None:
    """Raise CheckpointError naming the file when the manifest is absent, malformed, or any file differs from it."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (an incomplete or interrupted save)")
    for name, meta in manifest_files(folder).items():
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"{p}: listed in the manifest but missing")
        if p.stat().st_size != meta["size"]:
            raise CheckpointError(f"{p}: size {p.stat().st_size} bytes, manifest says {meta['size']} (truncated?)")
        if sha256_file(p) != meta["sha256"]:
            raise CheckpointError(f"{p}: checksum differs from the manifest (corrupt file)")


def save_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    tokenizer_dir: str | Path | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    weights: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a complete checkpoint atomically: build it in a temp folder, fsync, then rename.

    weights: safetensors files to write instead of the default {"model.safetensors": model_state(model)}
    (LoRA runs: adapter-only step checkpoints, merged weights + adapter in final_model; see sft.py).
    """
    with atomic_folder(folder) as tmp:
        _write_checkpoint_files(tmp, model, config, tokenizer_dir, ema_state, optimizer_state, trainer_state, weights)
    return Path(folder)


class DiskFullError(OSError):
    """No space left on the device while writing a checkpoint file (the previous checkpoint is untouched)."""


def _is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception chain (torch.save wraps it in a RuntimeError about a stream position)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def open_for_write(path: Path):
    """The file object every checkpoint file is written through."""
    return open(path, "wb")


def _write_file(path: Path, write: Callable[[Any], None]) -> None:
    """write(f) into a new file at `path`, flushed and fsynced; a full disk becomes DiskFullError naming the file."""
    try:
        with open_for_write(path) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        if _is_disk_full(e):
            raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}") from None
        raise


def _write_checkpoint_files(tmp: Path, model, config, tokenizer_dir, ema_state, optimizer_state, trainer_state, weights) -> None:
    from safetensors.torch import save as safetensors_bytes

    def json_bytes(obj: Any, indent: int | None = None) -> Callable[[Any], None]:
        return lambda f: f.write(json.dumps(obj, ensure_ascii=False, indent=indent).encode("utf-8"))

    for name, state in (weights if weights is not None else {"model.safetensors": model_state(model)}).items():
        _write_file(tmp / name, lambda f, st=state: f.write(safetensors_bytes(st)))
    if ema_state is not None:
        ema = {k: v.detach().contiguous().cpu() for k, v in ema_state.items()}
        _write_file(tmp / "ema.safetensors", lambda f: f.write(safetensors_bytes(ema)))
    if optimizer_state is not None:
        _write_file(tmp / "optimizer.pt", lambda f: torch.save(optimizer_state, f))
    if trainer_state is not None:
        _write_file(tmp / "trainer_state.json", json_bytes(trainer_state))
    _write_file(tmp / "config.json", json_bytes({"format_version": FORMAT_VERSION, **config}, indent=2))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                _write_file(tmp / name, lambda f, src=src: f.write(src.read_bytes()))
    try:
        write_manifest(tmp)  # last: its presence means every file above is complete
    except BaseException as e:
        if _is_disk_full(e):
            raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {tmp / MANIFEST}") from None
        raise


def read_config(folder: str | Path, check_weights: bool = True) -> dict[str, Any]:
    """config.json, checked: an object whose "model" is a valid ModelConfig that the weights file can hold."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a minigpt checkpoint folder (final_model/ or checkpoint_step_N/)")
    meta = read_json(path, "config")
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path}: expected an object with a \"model\" entry (a minigpt checkpoint's config)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} (missing means written before versions "
                              f"were recorded); this minigpt reads version {FORMAT_VERSION} only. Retrain, or load it "
                              f"with the minigpt commit that wrote it")
    check_model_shape(path, meta["model"], Path(folder) / "model.safetensors" if check_weights else None)
    return meta


def read_trainer_state(folder: str | Path) -> dict[str, Any]:
    """trainer_state.json, checked (counters >= 0 and equal to the folder's step, sampler position, RNG states)."""
    folder = Path(folder)
    path = folder / "trainer_state.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; resuming needs a checkpoint_step_N folder (final_model holds no training state)")
    m = _STEP_DIR.match(folder.name)
    return check_trainer_state(path, read_json(path, "trainer state"), int(m.group(1)) if m else None)


def check_resumable(folder: str | Path) -> None:
    """Everything resume reads, checked without building anything: manifest, config, trainer state."""
    verify_checkpoint(folder)
    read_config(folder)
    read_trainer_state(folder)


def load_optimizer_state(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / "optimizer.pt"
    if not path.is_file():
        return None
    # weights_only=True: tensors, numbers, strings and containers only. A crafted pickle is refused, not run.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises UnpicklingError or RuntimeError depending on the payload
        if isinstance(e, pickle.UnpicklingError) or "weights only" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused to load: it holds more than plain tensors, numbers and strings (pickled Python "
                "objects, which could run code when loaded). minigpt never loads such files; delete this checkpoint "
                "or resume from another one.") from None
        raise CheckpointError(f"{path}: not a readable optimizer state (truncated or corrupt: {type(e).__name__})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", verify: bool = True,
                    use_ema: bool = False) -> tuple[GPT, Any, ModelConfig]:
    """Load (model, tokenizer, model_config) from a checkpoint folder. Nothing is unpickled."""
    from ..data.tokenizer import MiniTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not found; expected a checkpoint folder such as runs/demo/pretrain/final_model")
    if verify:
        verify_checkpoint(folder)
    meta = read_config(folder)
    cfg = ModelConfig.from_dict(meta["model"])
    model = GPT(cfg)
    weights = folder / ("ema.safetensors" if use_ema and (folder / "ema.safetensors").is_file() else "model.safetensors")
    load_model_state(model, load_file(str(weights)), str(weights))
    model.to(device).eval()
    tokenizer = MiniTokenizer.load(folder)
    expected = meta.get("tokenizer_sha256")
    if expected and tokenizer.sha256 != expected:
        raise CheckpointError(
            f"{folder}/tokenizer.json: SHA-256 {tokenizer.sha256[:12]} differs from the one the model was trained with ({expected[:12]})"
        )
    return model, tokenizer, cfg


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint_step_N folder, oldest first."""
    out = []
    d = Path(output_dir)
    if d.is_dir():
        for p in d.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_valid_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest checkpoint that verifies and whose config and trainer state check out; corrupt, partial or
    malformed ones are skipped with a warning naming the file and the problem."""
    for step, folder in reversed(list_checkpoints(output_dir)):
        try:
            check_resumable(folder)
            return folder
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s", folder, e)
    return None


def prune_checkpoints(output_dir: str | Path, keep_last_n: int, permanent: list[int] | tuple = ()) -> list[Path]:
    """Delete all but the newest `keep_last_n` checkpoints; steps listed in `permanent` are never deleted."""
    ckpts = list_checkpoints(output_dir)
    removed = []
    # temp folders of saves that a SIGKILL cut short (another pid's .checkpoint_step_N.tmpPID / .oldPID)
    for p in Path(output_dir).glob(".checkpoint_step_*"):
        m = re.search(r"\.(?:tmp|old)(\d+)$", p.name)
        if m and int(m.group(1)) != os.getpid() and p.is_dir():
            if ".old" in p.name[-len(m.group(0)):] and not (p.parent / p.name[1:-len(m.group(0))]).exists():
                continue  # the only copy of a folder whose replacement was cut short: clean_stale_temporaries restores it
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for step, folder in ckpts[:-keep_last_n] if keep_last_n > 0 else []:
        if step in set(permanent):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def stage_checkpoint(given: str, default: Path, notebook: str, key: str) -> Path:
    """The checkpoint a stage starts from: `given` (a parameter) or the earlier stage's `default`; a missing folder
    is a FileNotFoundError naming the notebook that writes it and the parameter that overrides it."""
    path = Path(given) if given else default
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: run notebooks/{notebook} first (or set {key})")
    return path
