"""Built-in preference pairs, made without any download, following SPIN (self-play fine-tuning,
Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models").

For each dialogue of the SFT data: the prompt is everything before its last assistant reply, ``chosen`` is that
human-written reply (the reference reply) and ``rejected`` is the SFT model's own sampled reply to the same
prompt. DPO on such pairs pushes the model's distribution from its own samples toward the human data.

The held-out pairs come from dialogues DPO does not train on: notebook 01's ``sft_val.jsonl`` first, then
dialogues picked by a hash of their text until there are ``eval_pairs`` of them. (The SFT model has seen those
extra dialogues during SFT; what DPO is measured on is whether it now prefers the reference reply to its own
sample on prompts it did not get pairs for.) Sampling is seeded, so the same model and settings give the same pairs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch

from ..data import normalize as textnorm
from ..infer.generate import GenerationConfig, TextGenerator
from .pairs import PairError, PreferencePair, checked_pair

logger = logging.getLogger(__name__)


def split_last_reply(conv: list[dict]) -> tuple[list[tuple[str, str]], str] | None:
    """(prompt as (role, content) pairs, the last assistant reply), or None when there is no usable reply."""
    last = max((i for i, m in enumerate(conv) if m.get("role") == "assistant"), default=None)
    if last is None or not any(m.get("role") == "user" for m in conv[:last]) or conv[last - 1].get("role") != "user":
        return None
    return [(m["role"], m["content"]) for m in conv[:last]], conv[last]["content"]


def _hash(conv: list[dict]) -> str:
    return hashlib.sha256(json.dumps(conv, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def heldout_split(train: list[list[dict]], val: list[list[dict]], eval_pairs: int
                  ) -> tuple[list[list[dict]], list[list[dict]]]:
    """(dialogues to train on, held-out dialogues): all of `val`, topped up from `train` in hash order."""
    need = max(0, eval_pairs - len(val))
    ranked = sorted(range(len(train)), key=lambda i: _hash(train[i]))
    moved = set(ranked[:need])
    return [c for i, c in enumerate(train) if i not in moved], list(val) + [train[i] for i in sorted(moved)]


@torch.no_grad()
def spin_pairs(model: torch.nn.Module, tokenizer, conversations: list[list[dict]], gen_cfg: GenerationConfig,
               batch_size: int = 16, device: str | torch.device | None = None) -> tuple[list[PreferencePair], dict[str, int]]:
    """SPIN pairs for `conversations`: (pairs, counts of what happened to each dialogue)."""
    counts = {"dialogues": len(conversations), "pairs": 0, "no_reply": 0, "sample_equals_reference": 0, "empty_sample": 0}
    prompts = []
    for conv in conversations:
        split = split_last_reply(conv)
        if split is None:
            counts["no_reply"] += 1
        else:
            prompts.append(split)
    gen = TextGenerator(model, tokenizer, device=device)
    pairs = []
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b:b + batch_size]
        cfg = dataclasses.replace(gen_cfg, seed=None if gen_cfg.seed is None else gen_cfg.seed + b)
        ids = gen.generate_ids([gen.chat_prompt_ids([{"role": r, "content": c} for r, c in p], cfg) for p, _ in chunk], cfg)
        for (prompt, reply), out in zip(chunk, ids):
            sample = textnorm.normalize(tokenizer.decode(out, skip_special_tokens=True)).strip()
            try:
                pairs.append(checked_pair(prompt, reply, sample))
            except PairError as e:
                counts["sample_equals_reference" if e.reason == "identical_replies" else "empty_sample"
                       if e.reason == "empty_reply" else "no_reply"] += 1
    counts["pairs"] = len(pairs)
    logger.info("SPIN pairs: %s", counts)
    return pairs, counts


def load_or_make_spin(folder: Path, sft_checkpoint: Path, train: list[list[dict]], val: list[list[dict]],
                      gen_cfg: GenerationConfig, eval_pairs: int, max_pairs: int = 0, device: str | None = None):
    """SPIN pairs in ``folder`` ({train,eval}.jsonl + meta.json): reused when the SFT model, the dialogues and the
    settings are those of meta.json, else sampled (the SFT model loaded for it) and written atomically."""
    from ..atomic import atomic_write_json
    from ..train.checkpoint import load_checkpoint, sha256_file
    from .pairs import PairSet, read_pairs, write_pairs

    train, held = heldout_split(train, val, eval_pairs)
    if max_pairs:
        train = sorted(train, key=_hash)[:max_pairs]
    key = {"sft_sha256": sha256_file(Path(sft_checkpoint) / "model.safetensors"), "settings": dataclasses.asdict(gen_cfg),
           "dialogues_sha256": hashlib.sha256(json.dumps([train, held], ensure_ascii=False).encode()).hexdigest()}
    meta_path = Path(folder) / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
        if {k: meta.get(k) for k in key} == key:
            logger.info("SPIN pairs: reusing %s (same SFT model, dialogues and sampling settings)", folder)
            return PairSet(read_pairs(Path(folder) / "train.jsonl"), read_pairs(Path(folder) / "eval.jsonl"),
                           {"source": "spin", "folder": str(folder), **meta["counts"], "reused": True})
    model, tokenizer, _ = load_checkpoint(sft_checkpoint)
    train_pairs, c_train = spin_pairs(model, tokenizer, train, gen_cfg, device=device)
    eval_pairs_, c_eval = spin_pairs(model, tokenizer, held, gen_cfg, device=device)
    counts = {"train": c_train, "eval": c_eval}
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_pairs(Path(folder) / "train.jsonl", train_pairs)
    write_pairs(Path(folder) / "eval.jsonl", eval_pairs_)
    atomic_write_json(meta_path, {**key, "counts": counts})  # last: the pairs files are complete when it exists
    return PairSet(train_pairs, eval_pairs_, {"source": "spin", "folder": str(folder), **counts, "reused": False})


@torch.no_grad()
def skill_pairs(model: torch.nn.Module, tokenizer, items: list, gen_cfg: GenerationConfig, samples: int = 4,
                batch_size: int = 64, device: str | torch.device | None = None, worked: bool = False
                ) -> tuple[list[PreferencePair], dict[str, int]]:
    """Verifiable pairs (``pairs_source: skills``): for each skill problem the reference reply is chosen (its worked
    solution when the run trains on them, ``worked``) and one of the SFT model's own ``samples`` sampled replies
    that the skill's checker marks wrong is rejected. A problem the model answered right every time gives no pair
    (counted), so the pairs are exactly the model's mistakes."""
    from ..data.skills import reference_reply, reward

    counts = {"problems": len(items), "pairs": 0, "all_samples_right": 0, "empty_sample": 0}
    gen = TextGenerator(model, tokenizer, device=device)
    pairs = []
    for b in range(0, len(items), batch_size):
        chunk = items[b:b + batch_size]
        cfg = dataclasses.replace(gen_cfg, seed=None if gen_cfg.seed is None else gen_cfg.seed + b)
        prompts = [gen.chat_prompt_ids(it.messages(), cfg) for it in chunk for _ in range(samples)]
        outs = gen.generate_ids(prompts, cfg)
        for i, it in enumerate(chunk):
            replies = [textnorm.normalize(tokenizer.decode(o, skip_special_tokens=True)).strip()
                       for o in outs[i * samples:(i + 1) * samples]]
            wrong = [r for r in replies if r and not reward(it, r)]
            if not wrong:
                counts["empty_sample" if not all(replies) else "all_samples_right"] += 1
                continue
            try:
                pairs.append(checked_pair((("user", it.question),), reference_reply(it, worked), wrong[0]))
            except PairError:
                counts["empty_sample"] += 1
    counts["pairs"] = len(pairs)
    logger.info("skill pairs: %s", counts)
    return pairs, counts
