"""Evaluation: perplexity and bits per character on a token split, and a samples.md of fixed prompts.

Bits per character (BPC) compares models with different tokenizers: the total information the
model needs for the split, in bits, divided by its characters:

    bpc = mean_loss_nats * n_tokens / (n_chars * ln 2)

`n_tokens` / `n_chars` are the split's counts (from the token folder's meta.json, or given).
When only part of a split is evaluated, its mean loss stands for the whole split.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..model.gpt import GPT

logger = logging.getLogger(__name__)

# A fixed prompt set, so samples from different runs are comparable. Chinese first, one English line.
DEFAULT_PROMPTS = ["你好，", "中国的首都是", "长江、黄河", "今天天气很好，", "人工智能是", "从前有一座山，", "The weather today"]
DEFAULT_CHAT_PROMPTS = ["你好", "介绍一下中国", "你叫什么名字？"]

_CHAR_KEYS = ("chars", "n_chars", "num_chars", "characters", "char_count")
_TOKEN_KEYS = ("tokens", "n_tokens", "num_tokens", "token_count")


def _first_key(d: dict, keys: Sequence[str]) -> Any:
    for k in keys:
        if isinstance(d, dict) and k in d:
            return d[k]
    return None


def split_meta(meta: dict, split: str) -> dict[str, Any]:
    """This split's {"dtype", "tokens", "chars"} from a meta.json, whichever layout it uses:
    {"val": {...}}, {"splits": {"val": {...}}}, or flat keys like "val_tokens" / "val_chars"."""
    candidates = [meta.get(split), (meta.get("splits") or {}).get(split) if isinstance(meta.get("splits"), dict) else None]
    out: dict[str, Any] = {"dtype": meta.get("dtype")}
    for c in candidates:
        if isinstance(c, dict):
            out["tokens"] = _first_key(c, _TOKEN_KEYS)
            out["chars"] = _first_key(c, _CHAR_KEYS)
            out["dtype"] = c.get("dtype", out["dtype"])
            break
    else:
        out["tokens"] = _first_key(meta, [f"{split}_{k}" for k in _TOKEN_KEYS])
        out["chars"] = _first_key(meta, [f"{split}_{k}" for k in _CHAR_KEYS])
    return out


def load_split(tokens: str | Path | np.ndarray | torch.Tensor, split: str = "val") -> tuple[np.ndarray, dict[str, Any]]:
    """(token array, split meta) from a tokens folder (runs/R/tokens), a .bin file, or an array."""
    if isinstance(tokens, torch.Tensor):
        return tokens.cpu().numpy(), {}
    if isinstance(tokens, np.ndarray):
        return tokens, {}
    path = Path(tokens)
    is_file_arg = path.suffix == ".bin" and not path.is_dir()
    folder, binfile = (path.parent, path) if is_file_arg else (path, path / f"{split}.bin")
    if not binfile.is_file():
        raise FileNotFoundError(f"{binfile}: token file not found; run notebooks/02_tokenizer to write runs/R/tokens")
    meta: dict[str, Any] = {}
    mpath = folder / "meta.json"
    if mpath.is_file():
        try:
            meta = split_meta(json.loads(mpath.read_text(encoding="utf-8")), binfile.stem)
        except ValueError as e:
            raise ValueError(f"{mpath}: not valid JSON ({e})") from None
    dtype = np.dtype(meta.get("dtype") or "uint16")
    return np.memmap(binfile, dtype=dtype, mode="r"), meta


@torch.no_grad()
def evaluate_split(
    model: GPT,
    tokens: str | Path | np.ndarray | torch.Tensor,
    split: str = "val",
    seq_len: int | None = None,
    batch_size: int = 8,
    num_batches: int | None = None,
    num_chars: int | None = None,
    num_tokens: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Mean next-token loss over consecutive windows of `seq_len` tokens; perplexity; BPC when chars are known.

    tokens: a tokens folder (reads `{split}.bin` + meta.json), a .bin file, or an array of ids.
    num_batches: evaluate at most this many batches (None = the whole split).
    num_chars / num_tokens: the split's character and token counts for BPC (default: meta.json).
    """
    data, meta = load_split(tokens, split)
    seq_len = int(seq_len or model.config.max_seq_len)
    if seq_len <= 0 or seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len: expected 1..{model.config.max_seq_len} (max_seq_len), got {seq_len}")
    n = len(data)
    if n < 2:
        raise ValueError(f"{split}: {n} tokens; need at least 2 to evaluate")
    seq_len = min(seq_len, n - 1)
    starts = list(range(0, n - 1 - seq_len + 1, seq_len)) or [0]
    if num_batches is not None:
        starts = starts[: max(1, num_batches) * batch_size]
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    try:
        for i in range(0, len(starts), batch_size):
            chunk = np.stack([np.asarray(data[s:s + seq_len + 1], dtype=np.int64) for s in starts[i:i + batch_size]])
            xy = torch.from_numpy(chunk).to(device)
            _, loss = model(xy[:, :-1], xy[:, 1:])
            k = xy[:, 1:].numel()
            total_loss += loss.item() * k
            total_tokens += k
    finally:
        model.train(was_training)
    mean = total_loss / total_tokens
    out = {"loss": mean, "perplexity": math.exp(min(mean, 700.0)), "tokens": total_tokens, "bpc": float("nan")}
    chars = num_chars if num_chars is not None else meta.get("chars")
    ntok = num_tokens if num_tokens is not None else (meta.get("tokens") or n)
    if chars:
        out["bpc"] = bits_per_char(mean, int(ntok), int(chars))
        out["chars_per_token"] = int(chars) / int(ntok)
    else:
        logger.warning("%s: character count unknown (not in meta.json, num_chars not given): bpc is NaN", split)
    return out


def bits_per_char(loss_nats: float, n_tokens: int, n_chars: int) -> float:
    if n_chars <= 0:
        raise ValueError(f"n_chars: expected a positive count, got {n_chars}")
    return loss_nats * n_tokens / (n_chars * math.log(2))


def evaluate_texts(model: GPT, tokenizer: Any, texts: Sequence[str], seq_len: int | None = None,
                   batch_size: int = 8) -> dict[str, float]:
    """Perplexity and exact BPC of raw texts (joined with <|endoftext|> as the packer does)."""
    ids: list[int] = []
    chars = 0
    for t in texts:
        ids.extend(tokenizer.encode(t))
        ids.append(tokenizer.eos_id)
        chars += len(t)
    arr = np.asarray(ids, dtype=np.int64)
    return evaluate_split(model, arr, seq_len=seq_len, batch_size=batch_size, num_chars=chars, num_tokens=len(arr))


def _md_escape_block(text: str) -> str:
    # A fenced block shows model output verbatim; fences inside it are broken up.
    return text.replace("```", "`\u200b``")


def write_samples(generator: Any, prompts: Sequence[str] | None = None, config: Any = None,
                  path: str | Path | None = None, chat: bool = False, title: str = "Samples",
                  extra: dict[str, Any] | None = None) -> str:
    """Generate one sample per prompt and write markdown (parameters table + samples) to `path`.

    chat=True sends each prompt as a user message through the chat template. Returns the markdown.
    """
    from .generate import GenerationConfig

    config = config or GenerationConfig()
    prompts = list(prompts or (DEFAULT_CHAT_PROMPTS if chat else DEFAULT_PROMPTS))
    lines = [f"# {title}", "", "## Parameters", "", "| parameter | value |", "| --- | --- |"]
    params = {**config.to_dict(), "mode": "chat" if chat else "completion"}
    cfg = getattr(generator.model, "config", None)
    if cfg is not None:
        params.update({"model": f"d{cfg.d_model} L{cfg.n_layers} H{cfg.n_heads}/{cfg.n_kv_heads} ctx{cfg.max_seq_len}",
                       "parameters": f"{generator.model.num_params():,}"})
    params.update(extra or {})
    for k, v in params.items():
        lines.append(f"| {k} | {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v} |")
    lines += ["", "## Samples", ""]
    for i, p in enumerate(prompts, 1):
        if chat:
            out = generator.chat([{"role": "user", "content": p}], config)
        else:
            out = generator.generate(p, config)
        lines += [f"### {i}. {p or '(empty prompt)'}", "", "```text", _md_escape_block(p + out if not chat else out), "```", ""]
    md = "\n".join(lines)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(md, encoding="utf-8")
        os.replace(tmp, path)
        logger.info("wrote %d samples to %s", len(prompts), path)
    return md
