"""Notebook 08's glue: reinforcement learning with verifiable rewards (GRPO) on the built-in skills, with the
same Trainer as pretraining, SFT and DPO (checkpoints, exact resume, live plot, metrics.jsonl, LoRA, guard).

    trainer, info = build_rl_trainer(P)
    before = trainer.evaluate(); trainer.fit(); after = trainer.evaluate()      # or: run_rl(P)

Each optimizer step (each micro-batch, with accumulation) is one round of GRPO (minigpt.align.grpo):
``batch_size`` skill problems from the train split are drawn, the current policy samples ``group_size``
completions for each with the project's batched generator (``TextGenerator.generate_ids``; the C decode step
on a float32 CPU model), the skill's checker scores each (``minigpt.data.skills.reward``: the same checker as
evaluation, plus ``format_reward`` when the reply ends its turn), rewards become group-normalised advantages, and
the loss is GRPO's clipped surrogate on the completion tokens, with an optional KL to the initial model.

One update follows each round of rollouts (DeepSeekMath's setting), so the sampling policy is the policy being
updated: the ratio is exactly 1 at the update and the clip never binds; it is kept so the loss is the paper's.

Exact resume. The rollouts of batch i are a function of (seed, i) and the weights: the prompts are drawn by a
generator seeded with (seed, i), the completions by one seeded with (seed, i) too. A resumed run has the same
weights, optimizer state and position, so it samples the same completions and trains to the same weights.
The rollout source reads the live weights, so it is never prefetched (dataloader_workers is ignored).

Held-out accuracy: greedy answers to ``eval_per_family`` validation problems per family at every evaluation,
scored by the same checker (``val_accuracy``; per family ``val_accuracy/<family>``).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..align.grpo import LOSS_AGGREGATIONS, equal_reward_fraction, group_advantages, grpo_loss, token_logps
from ..atomic import atomic_write_json
from ..data import skills as skill_data
from ..data.datasets import IGNORE_INDEX
from ..eval.skills import held_out_accuracy
from ..infer.config import GenerationConfig
from ..infer.generate import TextGenerator
from ..model.lora import LORA_TARGETS, count_trainable, inject_lora
from ..params import ParameterError, Params, jsonable, validate_dataclass
from . import checkpoint as ckpt
from .checkpoint import load_checkpoint
from .machine import autocast, setup_machine
from .memory import set_attention
from .pretrain import train_config_from_params
from .sft import SFTTrainer

logger = logging.getLogger(__name__)

BEST_DIR = "best"  # rl/best/: the weights of the best evaluation so far (keep_best)


@dataclass
class RLConfig:
    """Notebook 08's own parameters (beside TrainConfig's; its batch_size is the number of problems per round)."""

    init_checkpoint: str = ""  # the model to train and the KL reference; default runs/<run>/sft/final_model
    skill_families: list[str] = field(default_factory=list)  # families to train on (empty = all)
    group_size: int = 8  # completions sampled per problem (G)
    temperature: float = 1.0  # rollout sampling temperature (no top-k / top-p: the policy's own distribution)
    max_new_tokens: int = skill_data.REPLY_TOKENS  # completion length limit of a rollout (worked solutions fit)
    clip_eps: float = 0.2  # the policy ratio's clip range
    kl_coef: float = 0.0  # weight of the k3 KL to the initial model in the loss (0 = logged only)
    # constant (token sums / (completions x max_new_tokens), Dr. GRPO) | token (mean over all completion tokens, DAPO)
    # | sequence (per completion, then mean): see minigpt/align/grpo.py
    loss_agg: str = "constant"
    scale_advantages: bool = True  # divide by the group's std (GRPO); false keeps reward - group mean
    format_reward: float = 0.0  # added to the reward of a completion that ends its turn (<|im_end|>)
    drop_equal_groups: bool = True  # train only on groups whose rewards differ (the others carry no signal)
    # the final model is the evaluated weights with the best held-out accuracy, the starting model included (model
    # selection on validation problems; test problems stay unseen): RL's accuracy moves by noise between evaluations
    keep_best: bool = True
    eval_per_family: int = 32  # held-out validation problems per family for val_accuracy at each evaluation
    use_lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    live_plot_interval: int = 10

    def validate(self) -> None:
        unknown = [f for f in self.skill_families if f not in skill_data.FAMILIES]
        if unknown:
            raise ValueError(f"skill_families: {unknown[0]!r} is not a skill family; expected names from "
                             f"{', '.join(skill_data.FAMILIES)}")
        if self.group_size < 2:
            raise ValueError(f"group_size: expected an integer >= 2 (advantages compare completions of one problem), "
                             f"got {self.group_size}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an integer >= 1, got {self.max_new_tokens}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps: expected a number in (0, 1), got {self.clip_eps}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef: expected a number >= 0, got {self.kl_coef}")
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_agg: expected one of {', '.join(LOSS_AGGREGATIONS)}, got {self.loss_agg!r}")
        if self.format_reward < 0:
            raise ValueError(f"format_reward: expected a number >= 0, got {self.format_reward}")
        if self.eval_per_family < 1:
            raise ValueError(f"eval_per_family: expected an integer >= 1, got {self.eval_per_family}")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_rank >= 1, lora_alpha > 0, 0 <= lora_dropout < 1 expected, got "
                             f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or not self.lora_targets:
            raise ValueError(f"lora_targets: {bad[0] if bad else 'empty'!r}: expected names from {', '.join(LORA_TARGETS)}")


def _read_best(path: Path) -> dict[str, Any]:
    """A resumed run's best.json, checked: {"step": int, "val_accuracy": number in [0, 1]}."""
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(best.get("step"), int) and 0 <= float(best["val_accuracy"]) <= 1):
            raise ValueError("expected an integer step and a val_accuracy in [0, 1]")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a best-model record ({e}); delete the folder {path.parent} to start it afresh") from None
    return best


def rollout_config(rl: RLConfig, seed: int) -> GenerationConfig:
    """How rollouts are sampled: the policy's own distribution at `temperature`, stopping at the end of the turn."""
    return GenerationConfig(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=0, top_p=1.0,
                            do_sample=True, seed=seed)


class RolloutBatches:
    """A BatchSource of GRPO rounds: batch i = rollouts of the live policy on problems drawn by (seed, i).

    A batch is (x, y, {"advantages", "ref_logps"}): rows = problems x group_size, each the chat prompt followed by
    one sampled completion; y holds the completion's tokens (its closing <|im_end|> included) and IGNORE_INDEX on
    the prompt and the padding. `pop_stats()` hands the rounds' reward statistics to the trainer's log.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, items: Sequence[skill_data.SkillItem],
                 problems: int, rl: RLConfig, seed: int, reference: torch.nn.Module | None = None,
                 autocast_fn: Callable[[], Any] | None = None) -> None:
        if not items:
            raise ValueError("no skill problems to train on")
        self.items, self.problems, self.rl, self.seed = list(items), problems, rl, seed
        self.generator = TextGenerator(model, tokenizer)
        self.tokenizer, self.reference = tokenizer, reference
        self.autocast_fn = autocast_fn
        self.pad_id = tokenizer.pad_id
        gen = rollout_config(rl, seed)
        self.prompt_ids = [self.generator.chat_prompt_ids(item.messages(), gen) for item in self.items]
        self.seq_len = model.config.max_seq_len
        self.position = 0
        self._stats: list[dict[str, float]] = []

    def __next__(self):
        batch = self.batch_at(self.position)
        self.position += 1
        return batch

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])

    def problems_at(self, index: int) -> list[int]:
        """The problems of batch `index`: a draw without replacement, seeded by (seed, index)."""
        rng = random.Random(f"rl:{self.seed}:{index}")
        return rng.sample(range(len(self.items)), min(self.problems, len(self.items)))

    def batch_at(self, index: int):
        t0 = time.perf_counter()
        G = self.rl.group_size
        chosen = self.problems_at(index)
        prompts = [self.prompt_ids[i] for i in chosen for _ in range(G)]
        # one seed per round: a resumed run draws the same completions (the seed must fit 63 bits)
        gen = rollout_config(self.rl, (self.seed * 1_000_003 + index) % (2**63 - 1))
        completions = self.generator.generate_ids(prompts, gen)
        rollout_s = time.perf_counter() - t0
        im_end = self.tokenizer.im_end_id
        correct, ended, rewards = [], [], []
        for row, ids in enumerate(completions):
            item = self.items[chosen[row // G]]
            text = self.tokenizer.decode([t for t in ids if t != im_end], skip_special_tokens=True)
            ok = skill_data.reward(item, text)
            end = bool(ids) and ids[-1] == im_end
            correct.append(ok)
            ended.append(end)
            rewards.append(ok + (self.rl.format_reward if end else 0.0))
        r = torch.tensor(rewards, dtype=torch.float32)
        adv = group_advantages(r, G, scale=self.rl.scale_advantages)
        mean_length = sum(map(len, completions)) / len(completions)
        if self.rl.drop_equal_groups:
            # a group whose rewards are all equal has zero advantage everywhere: it adds no gradient, only tokens
            # to the loss's denominator (DAPO's dynamic sampling, Yu et al. 2025, without the re-sampling)
            informative = (r.view(-1, G).max(1).values != r.view(-1, G).min(1).values).repeat_interleave(G)
            if informative.any():
                keep = informative.nonzero().flatten().tolist()
                prompts, completions, adv = [prompts[i] for i in keep], [completions[i] for i in keep], adv[keep]
        x, y = self._rows(prompts, completions)
        extras = {"advantages": adv}
        if self.reference is not None:
            with torch.no_grad(), (self.autocast_fn() if self.autocast_fn else torch.autocast("cpu", enabled=False)):
                device = next(self.reference.parameters()).device
                logits = self.reference(x.to(device))[0]
                extras["ref_logps"] = token_logps(logits, y.to(device)).cpu()
        self._stats.append({"reward": float(r.mean()), "accuracy": sum(correct) / len(correct),
                            "ended_turn": sum(ended) / len(ended), "equal_reward_fraction": equal_reward_fraction(r, G),
                            "completion_tokens": mean_length, "rollout_s": rollout_s})
        return x, y, extras

    def _rows(self, prompts: list[list[int]], completions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt + completion per row, right-padded; targets on the completion's tokens only."""
        rows = []
        for p, c in zip(prompts, completions):
            full = p + c
            target = [IGNORE_INDEX] * (len(p) - 1) + c
            rows.append((full[:-1], target))
        T = max(len(r[0]) for r in rows)
        x = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, target) in enumerate(rows):
            x[i, :len(ids)] = torch.tensor(ids)
            y[i, :len(target)] = torch.tensor(target)
        return x, y

    def pop_stats(self) -> dict[str, float]:
        """Means of the rounds' statistics since the last call (train_reward, train_accuracy, ...)."""
        if not self._stats:
            return {}
        out = {f"train_{k}": sum(s[k] for s in self._stats) / len(self._stats) for k in self._stats[0]}
        out["rollout_s"] = sum(s["rollout_s"] for s in self._stats)
        del out["train_rollout_s"]
        self._stats = []
        return out


class GRPOTrainer(SFTTrainer):
    """The Trainer with GRPO's loss on RolloutBatches; evaluation is held-out skill accuracy (greedy)."""

    def __init__(self, *args: Any, rl: RLConfig, eval_items: Sequence[skill_data.SkillItem], **kwargs: Any) -> None:
        self.rl, self.eval_items = rl, list(eval_items)
        self._loss_stats: list[dict[str, torch.Tensor]] = []
        super().__init__(*args, **kwargs)
        self.best: dict[str, Any] | None = None  # keep_best: {"step", "val_accuracy"} of the best evaluation so far
        self._best_state: dict[str, torch.Tensor] | None = None  # its weights (CPU copies)
        self._prepared = False  # rl/best/ is written only once fit() has set the folder up (archive or resume)

    def _prepare_run(self) -> None:
        super()._prepare_run()
        self._prepared = True
        if self._best_state is not None:  # an evaluation before fit() (the notebook's "before")
            self._write_best()

    def resume(self, folder: str | Path) -> None:
        """The Trainer's resume, and the run's best-evaluation record when the run resumes in its own folder."""
        super().resume(folder)
        best_json = self.output_dir / BEST_DIR / "best.json"
        if best_json.is_file():
            on_disk = _read_best(best_json)
            if self.best is None or on_disk["val_accuracy"] >= self.best["val_accuracy"]:
                self.best, self._best_state = on_disk, None

    def _forward_loss(self, fwd, x: torch.Tensor, y: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = fwd(x)[0]
        logps = token_logps(logits, y)
        loss, stats = grpo_loss(logps, logps.detach(), extras["advantages"], y != IGNORE_INDEX, extras.get("ref_logps"),
                                self.rl.clip_eps, self.rl.kl_coef, self.rl.loss_agg, self.rl.max_new_tokens)
        self._loss_stats.append(stats)  # tensors, read at log steps
        return loss

    def _log(self, rec: dict, event: bool = False) -> None:
        if not event:
            rec.update(self.train_batches.pop_stats())
            if self._loss_stats:
                for key in self._loss_stats[0]:
                    rec[f"train_{key}"] = float(sum(s[key] for s in self._loss_stats)) / len(self._loss_stats)
                self._loss_stats = []
        super()._log(rec, event)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """val_accuracy (greedy, held-out validation problems) overall and per family."""
        if not self.eval_items or not self.is_main:
            return {}
        out = held_out_accuracy(ckpt.unwrap(self.model), self.tokenizer, self.eval_items, self.rl.max_new_tokens)
        self.model.train()
        if self.rl.keep_best and (self.best is None or out["val_accuracy"] > self.best["val_accuracy"]):
            self._save_best(out["val_accuracy"])
        return out

    def _save_best(self, accuracy: float) -> None:
        """Keep this evaluation's weights as the best (and write them once the run's folder is set up)."""
        self.best = {"step": self.step, "val_accuracy": accuracy}
        self._best_state = {k: v.detach().to("cpu").clone().contiguous()
                            for k, v in ckpt.unwrap(self.model).state_dict().items()}
        if self._prepared:
            self._write_best()

    def _write_best(self) -> None:
        """rl/best/ (model.safetensors + best.json), atomically: a resumed run continues from it."""
        folder = self.output_dir / BEST_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "model.safetensors.tmp"
        save_file(self._best_state, str(tmp))
        os.replace(tmp, folder / "model.safetensors")
        atomic_write_json(folder / "best.json", self.best)

    def save_final(self) -> Path:
        """final_model/ from the best evaluated weights (keep_best), else from the last step's."""
        if self.rl.keep_best and self.best is not None and self.best["step"] != self.step:
            state = self._best_state or load_file(str(self.output_dir / BEST_DIR / "model.safetensors"))
            ckpt.unwrap(self.model).load_state_dict(state)
            logger.info("final model: the weights of step %d, whose held-out accuracy %.3f was the best evaluated "
                        "(the run ended at step %d; keep_best false keeps the last)", self.best["step"],
                        self.best["val_accuracy"], self.step)
        return super().save_final()


def compare_answers(start_model: torch.nn.Module, model: torch.nn.Module, tokenizer: Any,
                    items: Sequence[skill_data.SkillItem], n: int = 6, max_new_tokens: int = skill_data.REPLY_TOKENS):
    """Greedy answers of the starting and the trained model to held-out problems, those that differ first."""
    import pandas as pd

    greedy = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    rows = []
    generators = TextGenerator(start_model, tokenizer), TextGenerator(ckpt.unwrap(model), tokenizer)
    prompts = [generators[0].chat_prompt_ids(it.messages(), greedy) for it in items]
    answers = [[tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in g.generate_ids(prompts, greedy)]
               for g in generators]
    model.train()
    for it, a0, a1 in zip(items, *answers):
        rows.append({"family": it.family, "problem": it.question, "answer": it.answer,
                     "before": a0, "right before": skill_data.reward(it, a0) > 0,
                     "after": a1, "right after": skill_data.reward(it, a1) > 0})
    rows.sort(key=lambda r: r["before"] == r["after"])  # stable: differing answers first, in item order
    return pd.DataFrame(rows[:n])


def rl_dir(P: Params) -> Path:
    out = P.get("output_dir")
    return Path(out) if out else P.paths["run"] / "rl"


def init_checkpoint(P: Params, rl: RLConfig) -> Path:
    return ckpt.stage_checkpoint(rl.init_checkpoint, P.paths["sft"] / "final_model", "04_sft", "init_checkpoint")


def rl_config(P: Params) -> RLConfig:
    cfg = P.build(RLConfig)
    validate_dataclass(cfg)
    return cfg


def build_rl_trainer(P: Params, callbacks: Iterable[Any] = (), rank: int = 0, world_size: int = 1
                     ) -> tuple[GRPOTrainer, dict[str, Any]]:
    """Everything notebook 08 trains with, checked before any compute: (trainer, info)."""
    rl = rl_config(P)
    cfg = train_config_from_params(P)
    if cfg.optim.use_ema:
        raise ParameterError("use_ema: not supported by RL (rollouts sample from the trained weights); set it false")
    if world_size > 1:
        raise ParameterError("RL runs in one process: rollouts sample from the live weights (nproc_per_node=1)")
    if cfg.machine.dataloader_workers:
        logger.info("dataloader_workers=%d ignored: rollouts read the live weights, they cannot be prefetched",
                    cfg.machine.dataloader_workers)
        cfg.machine.dataloader_workers = 0
    ckpt_dir = init_checkpoint(P, rl)
    model, tokenizer, _ = load_checkpoint(ckpt_dir)
    families = rl.skill_families or None
    train_items = skill_data.load_run_skills(P.paths["data"], "train", families=families)
    eval_items = skill_data.load_run_skills(P.paths["data"], "val", families=families, per_family=rl.eval_per_family)
    device, dtype, _ = setup_machine(cfg)
    model.to(device)
    set_attention(model, cfg.machine, device, dtype, model.config.max_seq_len)  # the reference copy runs as the policy
    # the KL reference: the initial weights, frozen (with LoRA, a merged copy before the adapters exist)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    extra = jsonable(P)
    info: dict[str, Any] = {"checkpoint": str(ckpt_dir), "train_problems": len(train_items),
                            "eval_problems": len(eval_items), "families": sorted({i.family for i in train_items}),
                            "rollouts_per_step": cfg.optim.batch_size * rl.group_size * cfg.optim.accumulation_steps}
    if rl.use_lora:
        torch.manual_seed(cfg.schedule.seed)  # the adapters' init depends on the seed alone
        inject_lora(model, rl.lora_rank, rl.lora_alpha, rl.lora_dropout, rl.lora_targets)
        extra["lora_base"] = {"checkpoint": str(ckpt_dir), "model_sha256": ckpt.sha256_file(ckpt_dir / "model.safetensors")}
        trainable, total = count_trainable(model)
        info["lora"] = {"rank": rl.lora_rank, "trainable_params": trainable, "total_params": total}
    batches = RolloutBatches(model, tokenizer, train_items, cfg.optim.batch_size, rl, cfg.schedule.seed,
                             reference=reference, autocast_fn=lambda: autocast(device, dtype))
    trainer = GRPOTrainer(model, cfg, batches, None, rl_dir(P), tokenizer=tokenizer, tokenizer_dir=ckpt_dir,
                          callbacks=callbacks, kind="rl", extra_config=extra, rank=rank, world_size=world_size,
                          rl=rl, eval_items=eval_items)
    return trainer, info


def run_rl(P: Params, callbacks: Iterable[Any] = ()) -> dict[str, Any]:
    """Trainer, held-out accuracy before, training, after: {"before", "after", "result", "info"} (rl_summary.json)."""
    trainer, info = build_rl_trainer(P, callbacks)
    before = trainer.evaluate()
    result = trainer.fit()
    after = trainer.evaluate()
    return write_summary(trainer.output_dir, before, after, result, info)


def write_summary(output_dir: Path, before: dict, after: dict, result: dict, info: dict) -> dict[str, Any]:
    """rl_summary.json (atomic): held-out accuracy before and after, the fit's result and the run's info."""
    summary = {"before": before, "after": after, "result": result, "info": info}
    atomic_write_json(Path(output_dir) / "rl_summary.json", summary)
    return summary
