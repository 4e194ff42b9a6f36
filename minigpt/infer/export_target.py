"""Where an export may be written: never over a run, a checkpoint or a user's folder (issue 31).

An export replaces its output folder atomically (`atomic_folder`), so the folder must be new, empty, or a
previous export of the same format: an HF export carries `minigpt_export.json`; a GGUF export is recognised by
its files (GGUF files and a Modelfile only, so Ollama's folder holds nothing else).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..train.checkpoint import TOKENIZER_FILES

# Written into every export folder: only a folder holding it (of the same format) may be replaced.
EXPORT_MARKER = "minigpt_export.json"
# A run folder's parts (runs/<name>/...): an export never goes into or over one of these.
RUN_PARTS = ("data", "tokenizer", "tokens", "pretrain", "sft", "align", "eval", "rl")


def _is_checkpoint(folder: Path) -> bool:
    """A minigpt checkpoint: trainer_state.json, a manifest, or a config.json with a "model" section."""
    if (folder / "trainer_state.json").is_file() or (folder / "manifest.json").is_file():
        return True
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        return isinstance(json.loads(cfg.read_text(encoding="utf-8")).get("model"), dict)
    except (ValueError, OSError, AttributeError):
        return False


def _is_run(folder: Path) -> bool:
    return any((folder / part).is_dir() for part in RUN_PARTS)


def _marker_format(folder: Path) -> str | None:
    """The format named by `folder`'s export marker, None when it has none (or an unreadable one).

    A folder holding nothing but an export's files counts too: an HF export written before the marker existed,
    and a GGUF export (GGUF files and a Modelfile, no marker: Ollama's folder stays as Ollama expects it)."""
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        names = {p.name for p in folder.iterdir()}
        hf = {"config.json", "model.safetensors", "generation_config.json", *TOKENIZER_FILES}
        if "model.safetensors" in names and names <= hf:
            return "hf"
        if names and all(n == "Modelfile" or (n.startswith("minigpt-") and n.endswith(".gguf")) for n in names) \
                and any(n.endswith(".gguf") for n in names):
            return "gguf"
        return None
    return marker.get("format") if isinstance(marker, dict) else None


def check_export_target(out_dir: str | Path, fmt: str, checkpoint_dir: str | Path | None = None) -> Path:
    """Refuse an export folder whose replacement would destroy something that is not an export.

    Refused, with ValueError naming the folder: a checkpoint, or a folder inside one; a run folder, or a
    folder inside one of its parts (data/, pretrain/, ...; a new folder such as runs/X/hf is fine); a folder
    that holds the checkpoint being exported; a file; a non-empty folder that is not an export of this format
    (`minigpt_export.json`, or only an export's files). An empty folder or a previous export of the same format
    may be replaced."""
    out = Path(out_dir)
    target = out.resolve()
    for folder in [target, *target.parents]:
        if folder.is_dir() and _is_checkpoint(folder):
            where = "is" if folder == target else f"is inside {folder}, which is"
            raise ValueError(f"{out}: {where} a minigpt checkpoint; exporting there would replace it. "
                             "Expected a separate output folder, e.g. runs/NAME/hf")
    if target.is_dir() and _is_run(target):
        raise ValueError(f"{out}: is a run folder (it has {', '.join(p for p in RUN_PARTS if (target / p).is_dir())}/); "
                         "exporting there would replace the whole run. Expected a new folder, e.g. runs/NAME/hf")
    for folder in target.parents:
        if _is_run(folder):
            part = target.relative_to(folder).parts[0]
            if part in RUN_PARTS:
                where = "is" if target == folder / part else "is inside"
                raise ValueError(f"{out}: {where} {folder / part}, a part of the run {folder}; "
                                 f"expected a folder of its own, e.g. {folder / fmt}")
            break
    if checkpoint_dir is not None:
        ck = Path(checkpoint_dir).resolve()
        if target == ck or ck.is_relative_to(target):
            raise ValueError(f"{out}: holds the checkpoint being exported ({checkpoint_dir}); "
                             "expected a separate output folder, e.g. runs/NAME/hf")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; expected a folder to write the {fmt} export to")
    if target.is_dir() and any(target.iterdir()):
        found = _marker_format(target)
        if found != fmt:
            what = (f"a {found} export" if found else
                    f"not an export (no {EXPORT_MARKER}; it holds {', '.join(sorted(p.name for p in target.iterdir())[:5])})")
            raise ValueError(f"{out}: not empty and {what}; an export replaces its folder, so it only writes into "
                             f"an empty folder or a previous {fmt} export. Choose another folder or empty this one")
    return out


def write_export_marker(folder: Path, fmt: str, checkpoint_dir: str | Path | None) -> None:
    """The marker that lets a later export of the same format replace `folder`."""
    (folder / EXPORT_MARKER).write_text(json.dumps(
        {"format": fmt, "source": None if checkpoint_dir is None else str(checkpoint_dir)}, indent=2), encoding="utf-8")
