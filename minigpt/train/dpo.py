"""Notebook 07's glue: the SFT model + preference pairs -> DPO with the same Trainer (checkpoints, exact resume,
guard, live plot, metrics, DDP), LoRA optional.

    pairs = make_pairs(P)                       # SPIN pairs sampled from the SFT model, or a pairs file
    trainer, info = build_dpo_trainer(P, pairs)
    trainer.evaluate(); trainer.fit()           # or: run_dpo(P)

Pairs (minigpt.align). ``pairs_source``: "spin" (default: built-in pairs from the run's SFT dialogues, the human
reply chosen and the SFT model's own sample rejected, sampled with the ``spin_*`` settings; written to
``align/pairs/{train,eval}.jsonl`` with ``meta.json`` and reused while the model and settings are the same) or a
path to a MiniMind ``dpo.jsonl`` / flat ``{prompt, chosen, rejected}`` JSONL (invalid lines go to
``align/rejects.jsonl``; ``eval_pairs`` pairs are held out by a hash of each pair).

The reference is the SFT checkpoint. Its log-probs are computed once per pair before training and cached in
``align/reference_logps.safetensors`` (minigpt.align.reference), so only the policy is in memory while training.
The loss (``loss_type`` sigmoid | ipo, ``beta``, ``label_smoothing``) counts the final assistant reply only;
``sft_weight`` = alpha adds alpha * the chosen reply's mean token NLL (RPO: Pang et al. 2024, "Iterative Reasoning
Preference Optimization", eq. 2), which keeps DPO from lowering the chosen replies' likelihood along with the
rejected ones' (and the model's ``<|im_end|>``); the eval's val_loss is the same sum.
With ``use_lora`` the base stays frozen and checkpoints hold the adapter, as in SFT (sft.py's docstring).
DDP: ``build_dpo_trainer(P, pairs, rank=r, world_size=n)`` gives each rank its share of every batch.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from ..align import data as pair_data
from ..align.dpo import LOSS_TYPES, dpo_losses, evaluate_pairs, kl_to_reference
from ..align.pairs import PairReport, PairSet, read_pairs, write_rejects
from ..align.reference import CACHE_FILE, cached_reference_logps, reference_token_logprobs, sequence_logps
from ..atomic import atomic_write_json
from ..data.datasets import IGNORE_INDEX
from ..model.lora import LORA_TARGETS, count_trainable, inject_lora
from ..params import ParameterError, Params, jsonable, validate_dataclass
from . import checkpoint as ckpt
from .checkpoint import load_checkpoint
from .machine import autocast, setup_machine
from .memory import set_attention
from .pretrain import train_config_from_params
from .sft import SFTTrainer

logger = logging.getLogger(__name__)


@dataclass
class DPOConfig:
    """Notebook 07's own parameters (beside TrainConfig's)."""

    sft_checkpoint: str = ""  # the model to align and the reference; default runs/<run>/sft/final_model
    # spin (built-in SPIN pairs) | skills (reference answer vs the SFT model's own wrong answer to a built-in skill
    # problem) | path to a dpo.jsonl / {prompt, chosen, rejected} JSONL
    pairs_source: str = "spin"
    chat_source: str = "run"  # the dialogues SPIN pairs come from (as notebook 04's chat_source)
    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO: the share of preference labels assumed flipped
    sft_weight: float = 0.0  # + sft_weight * the chosen reply's per-token NLL (RPO); keeps the chosen replies likely
    eval_pairs: int = 32  # held-out pairs for the metrics
    max_pairs: int = 0  # training pairs at most (0 = all)
    kl_pairs: int = 16  # held-out replies the KL to the reference is measured on (0 = off)
    spin_temperature: float = 1.0
    spin_top_k: int = 0
    spin_top_p: float = 1.0
    spin_max_new_tokens: int = 48
    use_lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    live_plot_interval: int = 10

    def validate(self) -> None:
        if self.pairs_source not in ("spin", "skills") and not self.pairs_source.endswith((".jsonl", ".json")):
            raise ValueError(f"pairs_source: expected 'spin', 'skills' or a path to a .jsonl file, got {self.pairs_source!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: expected one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if not self.beta > 0:
            raise ValueError(f"beta: expected a positive number, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing: expected a number in [0, 0.5), got {self.label_smoothing}")
        if not 0.0 <= self.sft_weight < 1e3:
            raise ValueError(f"sft_weight: expected a number >= 0, got {self.sft_weight}")
        for key in ("eval_pairs", "max_pairs", "kl_pairs"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: expected an integer >= 0, got {getattr(self, key)}")
        if self.eval_pairs < 1:
            raise ValueError(f"eval_pairs: expected an integer >= 1, got {self.eval_pairs}")
        if self.spin_temperature <= 0 or not 0 < self.spin_top_p <= 1 or self.spin_top_k < 0 or self.spin_max_new_tokens < 1:
            raise ValueError("spin_temperature > 0, 0 < spin_top_p <= 1, spin_top_k >= 0 and spin_max_new_tokens >= 1 expected, got "
                             f"{self.spin_temperature}, {self.spin_top_p}, {self.spin_top_k}, {self.spin_max_new_tokens}")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_rank >= 1, lora_alpha > 0, 0 <= lora_dropout < 1 expected, got "
                             f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or not self.lora_targets:
            raise ValueError(f"lora_targets: {bad[0] if bad else 'empty'!r}: expected names from {', '.join(LORA_TARGETS)}")


def align_dir(P: Params) -> Path:
    out = P.get("output_dir")
    return Path(out) if out else P.paths["run"] / "align"


def sft_checkpoint(P: Params, dpo: DPOConfig) -> Path:
    return ckpt.stage_checkpoint(dpo.sft_checkpoint, P.paths["sft"] / "final_model", "04_sft", "sft_checkpoint")


def spin_settings(dpo: DPOConfig, seed: int):
    from ..infer.generate import GenerationConfig

    return GenerationConfig(max_new_tokens=dpo.spin_max_new_tokens, temperature=dpo.spin_temperature, top_k=dpo.spin_top_k,
                            top_p=dpo.spin_top_p, do_sample=True, seed=seed)


def dpo_config(P: Params) -> DPOConfig:
    cfg = P.build(DPOConfig)
    validate_dataclass(cfg)
    return cfg


def make_pairs(P: Params) -> PairSet:
    """Training and held-out pairs for ``pairs_source``: SPIN pairs (sampled once and kept in align/pairs/) or a file."""
    dpo = dpo_config(P)
    out = align_dir(P)
    if dpo.pairs_source == "skills":
        return _skill_pairs(P, dpo)
    if dpo.pairs_source != "spin":
        return _file_pairs(P, dpo, out)
    from ..data.chat_source import load_chat_source, no_chat_message
    from ..align.spin import load_or_make_spin

    ckpt_dir = sft_checkpoint(P, dpo)
    train_convs, val_convs, report = load_chat_source(dpo.chat_source, P.paths["data"], P.paths["run"])
    if not train_convs and not val_convs:
        raise ValueError(no_chat_message(report))
    device = str(setup_machine(train_config_from_params(P))[0])
    return load_or_make_spin(out / "pairs", ckpt_dir, train_convs, val_convs, spin_settings(dpo, int(P.seed)),
                             dpo.eval_pairs, dpo.max_pairs, device=device)


def _skill_pairs(P: Params, dpo: DPOConfig) -> PairSet:
    """Pairs from the built-in skills (data/skills/ from 01): training problems for training, validation problems
    (never trained on) held out; ``max_pairs`` caps the training problems, ``eval_pairs`` the held-out ones."""
    from ..align.spin import skill_pairs
    from ..data.skills import REPLY_TOKENS, load_run_skills

    train_items = load_run_skills(P.paths["data"], "train")
    held_items = load_run_skills(P.paths["data"], "val")
    worked = any(it.solution for it in train_items)
    if worked:
        # No pairs from families the run answers with worked solutions: a wrong sample slips at one step and then
        # continues consistently from it, so pushing the whole rejected reply down teaches answers that disagree
        # with their own steps (measured: 60 steps on the demo's SFT model took held-out add 0.76 -> 0.50, sub
        # 0.73 -> 0.29, add3 0.58 -> 0.17). Those families are left to SFT and RL, whose rewards read the answer.
        stepwise = {it.family for it in train_items if it.solution}
        train_items = [it for it in train_items if it.family not in stepwise]
        held_items = [it for it in held_items if it.family not in stepwise]
    # spread the caps over the families: every k-th problem rather than the first families only
    if dpo.max_pairs and len(train_items) > dpo.max_pairs:
        train_items = train_items[::len(train_items) // dpo.max_pairs][:dpo.max_pairs]
    if len(held_items) > dpo.eval_pairs:
        held_items = held_items[::len(held_items) // dpo.eval_pairs][:dpo.eval_pairs]
    ckpt_dir = sft_checkpoint(P, dpo)
    model, tokenizer, _ = load_checkpoint(ckpt_dir)
    device = str(setup_machine(train_config_from_params(P))[0])
    # the model's replies are sampled to their end (a worked solution is longer than spin_max_new_tokens allows), and
    # the chosen reply is a worked solution when the run's SFT trained on them (skills_worked: train items carry one)
    gen = dataclasses.replace(spin_settings(dpo, int(P.seed)), max_new_tokens=REPLY_TOKENS)
    train, c_train = skill_pairs(model, tokenizer, train_items, gen, device=device, worked=worked)
    held, c_held = skill_pairs(model, tokenizer, held_items, dataclasses.replace(gen, seed=int(P.seed) + 1),
                               device=device, worked=worked)
    if not train or not held:
        raise ValueError(f"pairs_source=skills: the SFT model {ckpt_dir} made no wrong answer to sample from "
                         f"(train {c_train}, held out {c_held}); use pairs_source=spin")
    return PairSet(train, held, {"source": "skills", "train": c_train, "eval": c_held})


def _file_pairs(P: Params, dpo: DPOConfig, out: Path) -> PairSet:
    from ..align.spin import _hash

    path = Path(dpo.pairs_source)
    if not path.is_absolute() and not path.exists():
        path = P.paths["run"] / path
    report = PairReport(str(path))
    pairs = read_pairs(path, report)
    out.mkdir(parents=True, exist_ok=True)
    write_rejects(out / "rejects.jsonl", report)
    if len(pairs) < 2:
        raise ValueError(f"{path}: {report.message()}; at least 2 valid pairs are needed (one to train on, one held out)")
    ranked = sorted(range(len(pairs)), key=lambda i: _hash(pairs[i].as_json()))
    held = set(ranked[:min(dpo.eval_pairs, max(1, len(pairs) // 10))])
    train = [p for i, p in enumerate(pairs) if i not in held]
    info = {"source": str(path), "report": report.as_dict(), "rejects": str(out / "rejects.jsonl")}
    return PairSet(train[:dpo.max_pairs] if dpo.max_pairs else train, [pairs[i] for i in sorted(held)], info)


class DPOTrainer(SFTTrainer):
    """The Trainer with the DPO loss: batches of chosen+rejected rows carry the cached reference log-probs, the loss
    is dpo_losses' mean, and each evaluation adds the pair metrics (and KL to the reference) to the record.
    Checkpoints (LoRA-aware), resume, guard and DDP come from Trainer/SFTTrainer unchanged."""

    def __init__(self, *args: Any, dpo: DPOConfig, eval_pairs: list | None = None, kl_reference: list | None = None,
                 **kwargs: Any) -> None:
        self.dpo = dpo
        self.kl_pairs, self.kl_reference = eval_pairs or [], kl_reference or []
        self._train_sums: list[dict[str, float]] = []
        super().__init__(*args, **kwargs)

    def _forward_loss(self, fwd, x: torch.Tensor, y: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = fwd(x)[0]
        policy, ref = sequence_logps(logits, y), extras["ref_logps"].float()
        n = policy.shape[0] // 2
        losses, rc, rr = dpo_losses(policy[:n], policy[n:], ref[:n], ref[n:], self.dpo.beta, self.dpo.label_smoothing,
                                    self.dpo.loss_type)
        margin = rc - rr
        # tensors, read at log steps: no device sync in the training step
        self._train_sums.append({"pairs": n, "acc": (margin > 0).sum() + 0.5 * (margin == 0).sum(),
                                 "margin": margin.sum()})
        if self.dpo.sft_weight:
            tokens = (y[:n] != IGNORE_INDEX).sum(-1).clamp(min=1)
            return losses.mean() - self.dpo.sft_weight * (policy[:n] / tokens).mean()
        return losses.mean()

    def _log(self, rec: dict, event: bool = False) -> None:
        if not event and self._train_sums:
            n = sum(s["pairs"] for s in self._train_sums)
            rec["train_reward_accuracy"] = float(sum(s["acc"] for s in self._train_sums)) / n
            rec["train_reward_margin"] = float(sum(s["margin"] for s in self._train_sums)) / n
            self._train_sums = []
        super()._log(rec, event)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """val_loss (the DPO loss on held-out pairs), reward accuracy and margin, log-probs, kl_ref."""
        if not self.eval_batches:
            return {}
        model = ckpt.unwrap(self.model)
        m = evaluate_pairs(model, self.eval_batches[: self.cfg.evaluation.num_eval_batches], self.device, self.dpo.beta,
                           self.dpo.label_smoothing, self.dpo.loss_type, self._autocast)
        out: dict[str, Any] = {"val_loss": m.pop("loss") - self.dpo.sft_weight * m["chosen_logp_per_token"], **m}
        if self.kl_pairs:
            out["kl_ref"] = kl_to_reference(model, self.kl_pairs, self.kl_reference, self.tokenizer.pad_id, self.device)
        self.model.train()
        return out


def build_dpo_trainer(P: Params, pairs: PairSet | None = None, callbacks: Iterable[Any] = (), rank: int = 0,
                      world_size: int = 1) -> tuple[DPOTrainer, dict[str, Any]]:
    """Everything notebook 07 trains with, checked before any compute: (trainer, info about pairs, cache and LoRA)."""
    dpo = dpo_config(P)
    cfg = train_config_from_params(P)
    if cfg.optim.use_ema:
        raise ParameterError("use_ema: not supported by DPO (the metrics compare the trained weights with the reference); set it false")
    ckpt_dir = sft_checkpoint(P, dpo)
    pairs = pairs if pairs is not None else make_pairs(P)
    model, tokenizer, model_cfg = load_checkpoint(ckpt_dir)
    seq_len = cfg.schedule.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ParameterError(f"seq_len: {seq_len} exceeds the SFT model's max_seq_len={model_cfg.max_seq_len}")
    train, train_kept, train_long = pair_data.encode_pairs(tokenizer, pairs.train, seq_len)
    held, held_kept, held_long = pair_data.encode_pairs(tokenizer, pairs.eval, seq_len)
    if not held:
        raise ValueError(f"no held-out pair fits seq_len={seq_len} ({len(pairs.eval)} held out); raise eval_pairs or use shorter pairs")
    out = align_dir(P)
    device, dtype, _ = setup_machine(cfg)
    set_attention(model, cfg.machine, device, dtype, seq_len)  # the reference and the policy on the same path
    sha = ckpt.sha256_file(ckpt_dir / "model.safetensors")
    ref_all, cache_info = cached_reference_logps(
        out / CACHE_FILE, train + held, sha, lambda: model, tokenizer.pad_id, device, cfg.optim.batch_size,
        lambda: autocast(device, dtype))
    ref_train, ref_held = ref_all[:len(train)], ref_all[len(train):]
    kl_pairs = held[: dpo.kl_pairs]
    kl_ref = reference_token_logprobs(model.to(device), kl_pairs, tokenizer.pad_id, device) if kl_pairs else []
    bs = cfg.optim.batch_size
    batches = pair_data.PairBatches(train, ref_train, bs, tokenizer.pad_id, seed=cfg.schedule.seed, rank=rank, world_size=world_size)
    evals = pair_data.eval_batches(held, ref_held, bs, tokenizer.pad_id)
    extra = jsonable(P)
    info: dict[str, Any] = {"checkpoint": str(ckpt_dir), "train_pairs": len(train), "eval_pairs": len(held),
                            "dropped_too_long": train_long + held_long, "reference_cache": cache_info, **pairs.info}
    if dpo.use_lora:
        torch.manual_seed(cfg.schedule.seed)  # the adapters' init depends on the seed alone
        inject_lora(model, dpo.lora_rank, dpo.lora_alpha, dpo.lora_dropout, dpo.lora_targets)
        extra["lora_base"] = {"checkpoint": str(ckpt_dir), "model_sha256": sha}
        trainable, total = count_trainable(model)
        info["lora"] = {"rank": dpo.lora_rank, "trainable_params": trainable, "total_params": total}
    trainer = DPOTrainer(model, cfg, batches, evals, out, tokenizer=tokenizer, tokenizer_dir=ckpt_dir, callbacks=callbacks,
                         kind="align", extra_config=extra, rank=rank, world_size=world_size, dpo=dpo, eval_pairs=kl_pairs,
                         kl_reference=kl_ref)
    trainer.pairs = {"train": train_kept, "eval": held_kept}
    return trainer, info


def run_dpo(P: Params, callbacks: Iterable[Any] = ()) -> dict[str, Any]:
    """Pairs, trainer, evaluation before, training, evaluation after: {"before", "after", "result", "info"}."""
    pairs = make_pairs(P)
    trainer, info = build_dpo_trainer(P, pairs, callbacks)
    before = trainer.evaluate()
    result = trainer.fit()
    after = trainer.evaluate()
    summary = {"before": before, "after": after, "result": result, "info": info}
    atomic_write_json(trainer.output_dir / "align_summary.json", summary)
    return summary
