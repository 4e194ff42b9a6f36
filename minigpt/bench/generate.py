"""Generation speed: minigpt against `transformers` `generate` on the same randomly initialised, exported model."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from .text import builtin_texts

logger = logging.getLogger(__name__)


def bench_generation(presets: list[str], new_tokens: int, repeats: int) -> dict[str, Any]:
    """minigpt vs HF generate on the same randomly initialised model, exported once per preset."""
    import torch

    from ..train.checkpoint import save_checkpoint
    from ..config import ModelConfig
    from ..infer.export import export_hf
    from ..infer.generate import bench_generate
    from ..model.gpt import GPT
    from ..data.tokenizer import TokenizerConfig, train_tokenizer

    out: dict[str, Any] = {}
    texts = builtin_texts(2000)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts, TokenizerConfig(tokenizer_vocab_size=6400, min_frequency=2))
        tok.save(Path(tmp) / "tok")
        for preset in presets:
            torch.manual_seed(0)
            cfg = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size)
            model = GPT(cfg).eval()
            ck = Path(tmp) / preset
            save_checkpoint(ck, model, {"model": cfg.to_dict(), "tokenizer_sha256": tok.sha256}, tokenizer_dir=Path(tmp) / "tok")
            hf_dir = export_hf(ck, Path(tmp) / f"{preset}-hf")
            out[preset] = bench_generate(model, tok, hf_dir=hf_dir, new_tokens=new_tokens, repeats=repeats)
    return out
