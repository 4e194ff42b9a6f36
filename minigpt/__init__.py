"""minigpt: train small GPT language models from scratch, Jupyter-first.

The public names are loaded lazily, so data-only work (cleaning, tokenizing) does not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ModelConfig": "config",
    "TrainConfig": "config",
    "GPT": "model.gpt",
    "Trainer": "train.trainer",
    "GenerationConfig": "infer.generate",
    "TextGenerator": "infer.generate",
    "load_checkpoint": "train.checkpoint",
    "export_hf": "infer.export",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_PUBLIC))
