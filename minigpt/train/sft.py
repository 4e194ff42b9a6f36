"""Notebook 04's glue: a pretrained checkpoint + chat JSONL -> masked ChatML examples -> the same Trainer.

Data. By default the run's ``data/sft.jsonl`` / ``sft_val.jsonl`` (minimind ``{"conversations": [...]}``,
written by notebook 01, whose ``sft_language`` picks the built-in chatterbot dialogues: chinese (default),
english or both; set it at the top of a params YAML, or ``-p sft_language english`` for the whole demo:
01 cleans those dialogues and 02 puts them in the tokenizer's training text). That is the recommended way
to fine-tune in English. Notebook 04's ``chat_source`` can also point elsewhere without re-running 01:
"run" (default) = what 01 wrote; "chinese" / "english" / "both" = the built-in dialogues of that language
read directly; or a path to a chat JSONL file of your own. For the last two, conversations are validated
as 01 does and ~5% are held out for eval by a hash of each conversation.

Examples (chat_data.py): the tokenizer's ChatML rendering exactly; labels only on assistant replies and
their closing ``<|im_end|>``; too long -> cut at the last turn boundary that fits, else dropped; both counted.
``pack_conversations`` packs several conversations per row with a block-diagonal causal mask and RoPE
positions restarting per conversation (batches ``(x, y, {"attn_mask", "positions"})``).

LoRA (``use_lora``; lora.py). Base weights are frozen and only the adapters on ``lora_targets`` train.
What is saved:

  checkpoint_step_N/   adapter.safetensors only (+ optimizer state, trainer state, config, tokenizer);
                       resume loads the base from ``pretrained_checkpoint`` again (its model.safetensors
                       SHA-256 is recorded in config.json and checked) and the adapter on top.
  final_model/         model.safetensors with the adapters merged into the base weights (a plain GPT:
                       ``load_checkpoint``, notebook 05 and export read it as any other checkpoint)
                       + adapter.safetensors, so the adapter alone can be reused or inspected.

EMA is not combined with LoRA (it would shadow the frozen base); use_ema with use_lora is an error.
LoRA usually wants a larger learning rate than a full fine-tune (about 10x: 3e-4 rather than 3e-5); the
section default is the full fine-tune's, so set learning_rate explicitly with use_lora.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from . import checkpoint as ckpt
from .checkpoint import load_checkpoint
from ..data.chat_data import ChatBatches, build_chat_example, pad_examples
from ..data.chat_source import BUILTIN_CHAT, ChatReport, load_chat_source, no_chat_message
from ..data.datasets import IGNORE_INDEX
from ..model.lora import ADAPTER_FILE, LORA_TARGETS, adapter_state, count_trainable, has_lora, inject_lora, load_adapter_state, merged_state
from ..params import ParameterError, Params, jsonable, validate_dataclass
from .pretrain import train_config_from_params
from .trainer import Trainer

logger = logging.getLogger(__name__)

@dataclass
class SFTConfig:
    """Notebook 04's own parameters (beside TrainConfig's)."""

    chat_source: str = "run"  # run = data/sft.jsonl from 01 | chinese | english | both (built-in dialogues) | a .jsonl path
    pack_conversations: bool = False  # several conversations per row, attention kept within each
    # the share of training examples that are built-in skill problems (data/skills/train.jsonl from 01); 0 = dialogues only
    skills_fraction: float = 0.0
    use_lora: bool = False  # train low-rank adapters only; base weights frozen
    lora_rank: int = 8
    lora_alpha: float = 16.0  # the update is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def validate(self) -> None:
        if self.chat_source not in ("run", *BUILTIN_CHAT) and not self.chat_source.endswith((".jsonl", ".json")):
            raise ValueError(f"chat_source: expected 'run', 'chinese', 'english', 'both' or a path to a chat .jsonl file, got {self.chat_source!r}")
        if not 0.0 <= self.skills_fraction <= 1.0:
            raise ValueError(f"skills_fraction: expected a number in [0, 1], got {self.skills_fraction}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank: expected an integer >= 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha: expected a positive number, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout: expected a number in [0, 1), got {self.lora_dropout}")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or not self.lora_targets:
            raise ValueError(f"lora_targets: {bad[0] if bad else 'empty'!r}: expected names from {', '.join(LORA_TARGETS)}")


class SFTTrainer(Trainer):
    """The Trainer for chat examples: only assistant tokens count as trained tokens, rows keep whole
    conversations (no context growth), and checkpoints are LoRA-aware (see the module docstring)."""

    def _count_tokens(self, y: torch.Tensor) -> int:
        return int((y != IGNORE_INDEX).sum())  # the prompt and padding carry no loss

    def _grow_context(self, source) -> None:
        logger.warning("context_growth applies to pretraining windows; chat batches keep whole conversations")

    def checkpoint_weights(self, final: bool) -> dict[str, dict[str, torch.Tensor]] | None:
        model = ckpt.unwrap(self.model)
        if not has_lora(model):
            return None
        files = {ADAPTER_FILE: adapter_state(model)}
        if final:
            merged = merged_state(model)
            if model.config.tie_word_embeddings:
                merged.pop("lm_head.weight", None)  # stored once, as embed_tokens.weight
            files["model.safetensors"] = merged
        return files

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        model = ckpt.unwrap(self.model)
        adapter = Path(folder) / ADAPTER_FILE
        if not has_lora(model):
            if adapter.is_file() and not (Path(folder) / "model.safetensors").is_file():
                raise ckpt.CheckpointError(f"{folder}: an adapter-only (LoRA) checkpoint; resume it with use_lora=True")
            return super().load_weights(folder)
        if not adapter.is_file():
            raise ckpt.CheckpointError(f"{adapter}: not found; this run uses LoRA, which resumes from adapter checkpoints "
                                       "(clear the output folder or set use_lora=False to resume a full fine-tune)")
        saved_base = (ckpt.read_config(folder).get("params") or {}).get("lora_base") or {}
        current = self.extra_config.get("lora_base") or {}
        if saved_base.get("model_sha256") and current.get("model_sha256") and saved_base["model_sha256"] != current["model_sha256"]:
            raise ckpt.CheckpointError(f"{folder}: its adapter was trained on base {saved_base.get('checkpoint')} "
                                       f"(sha256 {saved_base['model_sha256'][:12]}), the current base differs; cannot resume")
        load_adapter_state(model, load_file(str(adapter)), str(adapter))


def load_conversations(P: Params, chat_source: str) -> tuple[list[list[dict]], list[list[dict]], ChatReport]:
    """(train, val, report) for notebook 04's chat_source; the reading, accounting and normalising live
    in ``minigpt.data.chat_source``."""
    return load_chat_source(chat_source, P.paths["data"], P.paths["run"])


def mix_skills(dialogues: list[list[dict]], data_dir: Path, fraction: float) -> tuple[list[list[dict]], dict[str, Any]]:
    """Dialogues + the run's skill problems, with the dialogues repeated so that skills are about ``fraction`` of
    the examples (every skill problem is kept; ChatBatches samples the list, so repeats set the proportions)."""
    from ..data.skills import load_run_skills

    try:
        skills = [it.conversation() for it in load_run_skills(data_dir, "train")]
    except FileNotFoundError as e:  # a run folder made without 01 (chat_source from a file): dialogues only
        logger.warning("skills_fraction=%g: %s; training on the dialogues only", fraction, e)
        return dialogues, {"dialogues": len(dialogues), "dialogue_repeats": 1, "skills": 0, "skills_share": 0.0,
                           "missing": str(e)}
    if fraction >= 1.0 or not dialogues:
        repeats = 0
    else:
        repeats = max(1, round(len(skills) * (1 - fraction) / (fraction * len(dialogues))))
    mixed = dialogues * repeats + skills
    return mixed, {"dialogues": len(dialogues), "dialogue_repeats": repeats, "skills": len(skills),
                   "skills_share": len(skills) / max(1, len(mixed))}


def skill_accuracy(trainer: Trainer, data_dir: Path, per_family: int = 32) -> dict[str, float] | None:
    """Greedy held-out accuracy on the run's validation skill problems (what 04 shows before and after SFT); None
    when the run has no data/skills/ (your own data without 01's skills)."""
    from ..data.skills import load_run_skills
    from ..eval.skills import held_out_accuracy

    try:
        items = load_run_skills(data_dir, "val", per_family=per_family)
    except FileNotFoundError:
        return None
    out = held_out_accuracy(ckpt.unwrap(trainer.model), trainer.tokenizer, items)
    trainer.model.train()
    return out


def build_examples(tokenizer, conversations: list[list[dict]], max_len: int) -> tuple[list, dict[str, int]]:
    """ChatML examples with assistant-only labels, and counts of what happened to every conversation."""
    examples = []
    counts = {"conversations": len(conversations), "kept": 0, "truncated": 0, "dropped_too_long": 0, "dropped_no_reply": 0}
    for conv in conversations:
        ex = build_chat_example(tokenizer, conv, max_len)
        if ex is None:
            replied = any(m.get("role") == "assistant" and m.get("content") for m in conv)
            counts["dropped_too_long" if replied else "dropped_no_reply"] += 1
            continue
        counts["kept"] += 1
        counts["truncated"] += int(ex.truncated)
        examples.append(ex)
    return examples, counts


def start_checkpoint(P: Params) -> Path:
    """The model SFT starts from: pretrained_checkpoint, init_from (a minigpt checkpoint, or an HF folder imported
    once into runs/<run>/import/), or the run's pretrain/final_model."""
    ckpt_dir = Path(P.pretrained_checkpoint) if P.pretrained_checkpoint else P.paths["pretrain"] / "final_model"
    if P.get("init_from"):
        if P.pretrained_checkpoint:
            raise ParameterError("init_from and pretrained_checkpoint: both name the model to start from; set one")
        from ..convert import resolve_init_from

        ckpt_dir = resolve_init_from(P.init_from, P.paths["run"] / "import")
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} not found: run notebooks/03_pretrain first (or set pretrained_checkpoint)")
    return ckpt_dir


def split_examples(tokenizer, train_convs: list[list[dict]], val_convs: list[list[dict]], seq_len: int
                   ) -> tuple[list, list, dict[str, int]]:
    """(train examples, val examples, train counts): what was cut or dropped is logged; with no val conversation a
    twentieth of the training examples is held out rather than evaluating on nothing (tiny corpora)."""
    train_ex, train_counts = build_examples(tokenizer, train_convs, seq_len)
    val_ex, val_counts = build_examples(tokenizer, val_convs, seq_len)
    for split, c in (("train", train_counts), ("val", val_counts)):
        if c["truncated"] or c["dropped_too_long"] or c["dropped_no_reply"]:
            logger.info("sft %s: %d conversations, %d truncated at a turn boundary, %d dropped (too long for seq_len=%d), "
                        "%d dropped (no assistant reply)", split, c["conversations"], c["truncated"],
                        c["dropped_too_long"], seq_len, c["dropped_no_reply"])
    if not val_ex:
        val_ex, train_ex = train_ex[: max(1, len(train_ex) // 20)], train_ex[max(1, len(train_ex) // 20):]
    return train_ex, val_ex, train_counts


def build_sft_trainer(P: Params, callbacks: Iterable[Any] = (), rank: int = 0, world_size: int = 1,
                      skip_if_no_chat: bool = False) -> tuple[Trainer | None, dict[str, Any]]:
    """Everything notebook 04 needs, checked before any compute: (trainer, info about data and LoRA).
    With ``skip_if_no_chat``, no chat data gives (None, {"skipped": what to do}) instead of an error."""
    paths = P.paths
    sft_cfg = P.build(SFTConfig)
    validate_dataclass(sft_cfg)
    ckpt_dir = start_checkpoint(P)
    cfg = train_config_from_params(P)
    if sft_cfg.use_lora and cfg.optim.use_ema:
        raise ParameterError("use_ema: not supported together with use_lora (the EMA would shadow the frozen base); set one of them false")
    model, tokenizer, model_cfg = load_checkpoint(ckpt_dir)
    seq_len = cfg.schedule.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ParameterError(f"seq_len: {seq_len} exceeds the pretrained model's max_seq_len={model_cfg.max_seq_len}")
    try:
        train_convs, val_convs, report = load_conversations(P, sft_cfg.chat_source)
    except FileNotFoundError as e:
        if skip_if_no_chat:
            return None, {"skipped": str(e)}
        raise
    if not train_convs and not val_convs:
        if skip_if_no_chat:
            return None, {"skipped": no_chat_message(report)}
        raise ValueError(no_chat_message(report))
    source = report.source
    mix = None
    if sft_cfg.skills_fraction > 0:
        train_convs, mix = mix_skills(train_convs, P.paths["data"], sft_cfg.skills_fraction)
        logger.info("sft: %d dialogue examples (each %dx) and %d skill problems: %.0f%% skills", mix["dialogues"],
                    mix["dialogue_repeats"], mix["skills"], 100 * mix["skills_share"])
    train_ex, val_ex, train_counts = split_examples(tokenizer, train_convs, val_convs, seq_len)
    bs = cfg.optim.batch_size
    batches = ChatBatches(train_ex, bs, tokenizer.pad_id, seed=cfg.schedule.seed, rank=rank, world_size=world_size,
                          pack=sft_cfg.pack_conversations, seq_len=seq_len)
    eval_batches = [pad_examples(val_ex[i:i + bs], tokenizer.pad_id) for i in range(0, len(val_ex), bs)]
    extra = jsonable(P)
    info: dict[str, Any] = {"checkpoint": str(ckpt_dir), "data": source, "train_examples": len(train_ex),
                            "val_examples": len(val_ex), **train_counts, "packing": sft_cfg.pack_conversations,
                            "chat_data": report.as_dict()}
    if mix is not None:
        info["skills_mix"] = mix
    if sft_cfg.use_lora:
        torch.manual_seed(cfg.schedule.seed)  # the adapters' random init depends on the seed alone, not on what ran before
        inject_lora(model, sft_cfg.lora_rank, sft_cfg.lora_alpha, sft_cfg.lora_dropout, sft_cfg.lora_targets)
        extra["lora_base"] = {"checkpoint": str(ckpt_dir), "model_sha256": ckpt.sha256_file(ckpt_dir / "model.safetensors")}
        trainable, total = count_trainable(model)
        info["lora"] = {"rank": sft_cfg.lora_rank, "alpha": sft_cfg.lora_alpha, "targets": list(sft_cfg.lora_targets),
                        "trainable_params": trainable, "total_params": total}
        logger.info("LoRA: %d of %d parameters trainable (%.2f%%)", trainable, total, 100 * trainable / total)
    output_dir = Path(cfg.checkpoints.output_dir) if cfg.checkpoints.output_dir else paths["sft"]
    trainer = SFTTrainer(
        model, cfg, batches, eval_batches, output_dir,
        tokenizer=tokenizer, tokenizer_dir=ckpt_dir, callbacks=callbacks, kind="sft",
        extra_config=extra, rank=rank, world_size=world_size,
    )
    return trainer, info
