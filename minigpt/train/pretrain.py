"""Notebook 03's glue: resolved parameters -> tokenizer, token files, model, samplers and a Trainer."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable

from ..config import ModelConfig, TrainConfig
from ..data.datasets import WindowSampler, sequential_windows
from ..model.gpt import GPT
from ..params import Params, ParameterError, jsonable, parameter_error
from .trainer import Trainer

logger = logging.getLogger(__name__)


def model_config_from_params(P: Params, vocab_size: int | None = None) -> ModelConfig:
    """The preset's shape with any explicit shape parameter on top."""
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    overrides = {k: P.get(k) for k in names if P.get(k) is not None}
    if vocab_size is not None:
        if overrides.get("vocab_size", vocab_size) < vocab_size:
            raise ParameterError(f"vocab_size: {overrides['vocab_size']} is smaller than the tokenizer's {vocab_size}")
        overrides.setdefault("vocab_size", vocab_size)
    try:
        return ModelConfig.from_preset(P.get("preset") or "tiny", **overrides)
    except ValueError as e:
        raise ParameterError(str(e)) from e


def train_config_from_params(P: Params, **changes: Any) -> TrainConfig:
    """The TrainConfig of resolved parameters (flat names; aliases already resolved by Params) with `changes` on top, validated."""
    try:  # TrainConfig checks itself when made
        return TrainConfig.from_flat(**{**{k: v for k, v in P.items() if k in TrainConfig.FIELD_GROUPS and v is not None},
                                        **changes})
    except ValueError as e:
        raise parameter_error(e) from e


def chars_per_token(meta: dict, split: str) -> float | None:
    """Characters of source text per token of a split, from the token files' meta.json (for bits per character)."""
    info = meta.get("splits", {}).get(split) or {}
    chars, tokens = info.get("num_chars"), info.get("num_tokens")
    if chars and tokens:
        return chars / tokens
    return None


def build_pretrain_trainer(P: Params, callbacks: Iterable[Any] = (), rank: int = 0, world_size: int = 1) -> Trainer:
    """Everything notebook 03 needs, checked before any compute."""
    from ..data.tokenizer import MiniTokenizer

    paths = P.paths
    tok_dir = paths["tokenizer"]
    init = None
    if P.get("init_from"):  # continue pretraining a checkpoint or an imported HF model: its shape and its tokenizer
        from ..convert import resolve_init_from
        from .checkpoint import load_checkpoint

        tok_dir = resolve_init_from(P.init_from, paths["run"] / "import")
        init = load_checkpoint(tok_dir)
        logger.info("init_from: %s (the model's shape comes from it; shape parameters are not used)", tok_dir)
    elif not (tok_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tok_dir / 'tokenizer.json'} not found: run notebooks/02_tokenizer first")
    tokenizer = init[1] if init else MiniTokenizer.load(tok_dir)
    train_cfg = train_config_from_params(P)
    if train_cfg.schedule.doc_aligned_batches and tokenizer.eos_id != 0:
        raise ParameterError(f"doc_aligned_batches: finds documents by <|endoftext|> at id 0, but {tok_dir}'s tokenizer "
                             f"has it at {tokenizer.eos_id}; set doc_aligned_batches false for an imported model")
    model_cfg = init[2] if init else model_config_from_params(P, tokenizer.vocab_size)
    s, opt = train_cfg.schedule, train_cfg.optim
    seq_len = s.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ParameterError(f"seq_len: {seq_len} exceeds max_seq_len={model_cfg.max_seq_len}")
    train_tokens, val_tokens, meta = _token_arrays(P, tokenizer)
    if s.epochs:
        per_step = opt.batch_size * seq_len * max(1, opt.accumulation_steps) * world_size
        s.max_steps = max(1, s.epochs * len(train_tokens) // per_step)
        logger.info("epochs=%d -> max_steps=%d", s.epochs, s.max_steps)
    sampler = WindowSampler(train_tokens, opt.batch_size, seq_len, seed=s.seed, rank=rank, world_size=world_size,
                            doc_aligned=s.doc_aligned_batches)
    eval_batches = sequential_windows(val_tokens, opt.batch_size, seq_len, train_cfg.evaluation.num_eval_batches)
    output_dir = Path(train_cfg.checkpoints.output_dir) if train_cfg.checkpoints.output_dir else paths["pretrain"]
    import torch

    torch.manual_seed(s.seed)
    model = init[0].train() if init else GPT(model_cfg)
    return Trainer(
        model, train_cfg, sampler, eval_batches, output_dir,
        tokenizer=tokenizer, tokenizer_dir=tok_dir, chars_per_token=chars_per_token(meta, "val"),
        callbacks=callbacks, kind="pretrain", extra_config=jsonable(P), rank=rank, world_size=world_size,
    )


def _token_arrays(P: Params, tokenizer):
    """The run's token files, or user files given as train_data / val_data (.npy, or raw .bin with token_dtype)."""
    from ..data.packing import load_tokens, read_meta

    if not P.get("train_data"):
        tokens_dir = P.paths["tokens"]
        if getattr(tokenizer, "imported", None) is not None:  # init_from an HF model: the run's text in its ids
            from ..data.packing import pack_corpus

            tokens_dir = tokens_dir.with_name(f"tokens_{tokenizer.sha256[:12]}")
            pack_corpus(P.paths["data"], tokenizer, tokens_dir)  # kept and reused while data and tokenizer match
        return load_tokens(tokens_dir, "train", tokenizer), load_tokens(tokens_dir, "val", tokenizer), read_meta(tokens_dir)
    dtype = P.get("token_dtype") or None
    arrays = []
    for key in ("train_data", "val_data"):
        path = Path(P.get(key) or P["train_data"])
        if not path.is_file():
            raise FileNotFoundError(f"{key}: {path} not found; expected a .npy file or a raw .bin token file")
        if path.suffix == ".bin" and dtype is None:
            raise ParameterError(f"token_dtype: required for the raw token file {path} (e.g. uint16 or int32)")
        arrays.append(load_tokens(path, path.stem, tokenizer, dtype=dtype))  # range-checks ids against the vocab
    if not P.get("val_data"):
        logger.warning("val_data not given: evaluating on the last 5%% of train_data, which is then not trained on")
        cut = int(len(arrays[0]) * 0.95)
        arrays = [arrays[0][:cut], arrays[0][cut:]]
    return arrays[0], arrays[1], {}
