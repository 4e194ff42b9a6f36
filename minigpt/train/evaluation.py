"""The Trainer's evaluation: validation loss (and bits per character, and the EMA weights' loss), early
stopping on it, and greedy samples. The Trainer's methods (`evaluate`, `_eval_loss`, `_track_early_stopping`,
`_sample`) call these, so a subclass overrides the method as before."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from . import checkpoint as ckpt
from .metrics import mean_eval_loss

# The train.trainer.Trainer these helpers are handed; not imported, since trainer.py imports this module.
Trainer = Any

logger = logging.getLogger(__name__)


def eval_loss(trainer: Trainer) -> float:
    """Mean loss over the first num_eval_batches validation batches; the model is back in train mode after."""
    batches = trainer.eval_batches[: trainer.cfg.evaluation.num_eval_batches]
    loss = mean_eval_loss(ckpt.unwrap(trainer.model), batches, trainer.device, trainer._autocast, trainer.world_size)
    trainer.model.train()
    return loss


@torch.no_grad()
def evaluate(trainer: Trainer) -> dict[str, Any]:
    """val_loss, val_bpc when characters per token are known, val_loss_ema with EMA."""
    if not trainer.eval_batches:
        return {}
    out = {"val_loss": trainer._eval_loss()}
    if trainer.chars_per_token:
        out["val_bpc"] = out["val_loss"] / (trainer.chars_per_token * math.log(2))
    if trainer.ema is not None:
        raw = {k: v.clone() for k, v in ckpt.model_state_live(trainer.model).items()}
        trainer.ema.copy_to(trainer.model)
        out["val_loss_ema"] = trainer._eval_loss()
        ckpt.load_model_state(ckpt.unwrap(trainer.model), raw, "raw weights")
    return out


def track_early_stopping(trainer: Trainer, rec: dict) -> None:
    """Keep the eval history and the best loss; set stop_reason when `patience` evals brought no improvement."""
    if "val_loss" not in rec:
        return
    trainer.history.append({"step": trainer.step, "val_loss": rec["val_loss"]})
    if rec["val_loss"] < trainer.best_val - 1e-6:
        trainer.best_val = rec["val_loss"]
        trainer.evals_without_improvement = 0
        return
    trainer.evals_without_improvement += 1
    ev = trainer.cfg.evaluation
    if ev.early_stopping and trainer.evals_without_improvement >= ev.patience:
        trainer.stop_reason = "early stopping"
        logger.info("early stopping at step %d: no val improvement in %d evals (best %.4f)",
                    trainer.step, ev.patience, trainer.best_val)


def sample(trainer: Trainer) -> None:
    """Greedy continuations of sample_prompts, logged and handed to callbacks' on_sample."""
    prompts = trainer.cfg.evaluation.sample_prompts
    if trainer.tokenizer is None or not prompts or not trainer.is_main:
        return
    from ..infer.generate import GenerationConfig, TextGenerator

    gen = TextGenerator(ckpt.unwrap(trainer.model), trainer.tokenizer, device=trainer.device)
    greedy = GenerationConfig(max_new_tokens=max(1, min(40, trainer.model_cfg.max_seq_len // 2)), do_sample=False)
    for prompt in prompts:
        text = gen.generate(prompt, greedy)
        logger.info("sample @%d %r -> %r", trainer.step, prompt, text)
        trainer._emit("on_sample", prompt, text)
    trainer.model.train()
