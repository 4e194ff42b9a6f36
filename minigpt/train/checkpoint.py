"""Checkpoints: atomic folders of safetensors + JSON, verified by a manifest, loaded without pickle.

A checkpoint folder (`checkpoint_step_N/` or `final_model/`) holds:
  model.safetensors      the weights (tied head stored once)
  ema.safetensors        EMA weights, when use_ema
  config.json            {"model": ModelConfig, "train": TrainConfig, "step", "tokens_seen", "tokenizer_sha256", ...}
  optimizer.pt           optimizer / scheduler / scaler state (tensors only: loaded with weights_only=True)
  trainer_state.json     RNG states, sampler position, metric history needed to resume exactly
  tokenizer.json, tokenizer_config.json, special_tokens_map.json
  manifest.json          size and SHA-256 of every other file; written last, so its presence means complete
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)
from ..config import ModelConfig
from ..model.gpt import GPT

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_STEP_DIR = re.compile(r"^checkpoint_step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or incompatible."""


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
    manifest = {"format": "minigpt-checkpoint-1", "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def verify_checkpoint(folder: str | Path) -> None:
    """Raise CheckpointError naming the file when the manifest is absent or any file differs from it."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (an incomplete or interrupted save)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from e
    for name, meta in files.items():
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


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name, fsync it, then rename it into place.

    A crash at any point leaves either the old complete folder or the new one, never a mix; a failed
    build removes its temporary folder. Checkpoints and the Hugging Face export both write this way.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if folder.exists():
            # Replacing a folder is two renames; the old one is moved aside first so a crash leaves one complete copy.
            old = folder.with_name(f".{folder.name}.old{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder.parent)


def _write_checkpoint_files(tmp: Path, model, config, tokenizer_dir, ema_state, optimizer_state, trainer_state, weights) -> None:
    for name, state in (weights if weights is not None else {"model.safetensors": model_state(model)}).items():
        save_file(state, str(tmp / name))
    if ema_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    if trainer_state is not None:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state), encoding="utf-8")
    (tmp / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
    write_manifest(tmp)  # last: its presence means every file above is complete


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected a minigpt checkpoint folder (final_model/ or checkpoint_step_N/)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_optimizer_state(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / "optimizer.pt"
    if not path.is_file():
        return None
    # weights_only=True: tensors, numbers, strings and containers only. A crafted pickle is refused, not run.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises UnpicklingError or RuntimeError depending on the payload
        raise CheckpointError(f"{path}: refused to load ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


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
    """Newest checkpoint that verifies; corrupt or partial ones are skipped with a warning naming them."""
    for step, folder in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(folder)
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
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for step, folder in ckpts[:-keep_last_n] if keep_last_n > 0 else []:
        if step in set(permanent):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
