# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Reinforcement learning with verifiable rewards (GRPO)
#
# SFT showed the model answers to copy; DPO (07) showed it pairs to prefer. Here the model learns from its own
# attempts, scored by a program: the built-in skills (01) have reference answers and a checker, so a reply is
# right or wrong with no human and no reward model. That checker is the reward.
#
# **GRPO** (group relative policy optimization, Shao et al. 2024, *DeepSeekMath*) turns rewards into a gradient
# without a value network. For each problem it samples a **group** of `group_size` replies, scores them, and
# gives each reply the advantage `(reward - group mean) / group std`: better than its siblings pushes its tokens
# up, worse pushes them down. The loss is PPO's clipped surrogate on the reply's tokens only, with an optional
# KL to the starting model (the k3 estimator); formulas and citations are in `minigpt/align/grpo.py`.
#
# The arithmetic replies are worked solutions (01's `skills_worked`), so the replies of a group share their
# opening steps; the loss divides by a constant rather than each reply's length (`loss_agg: constant`, Dr. GRPO),
# so those shared steps get no net push and only where the replies differ is learnt. Keep the learning rate low:
# a few thousand exact digit steps are easy to disturb (in our runs 1e-4 lowered held-out arithmetic, 3e-5 did not).
#
# A group whose replies are all right, or all wrong, teaches nothing (all advantages are zero): the share of
# such groups is plotted. Held-out accuracy moves by noise between evaluations at this scale, so the final model
# is the best evaluated one, the starting model included (`keep_best`; validation problems choose, never test ones). Rollouts are the cost of RL, and they use the project's batched generator (the C
# decode step on a CPU). It reads `runs/<run>/sft/final_model` and writes `runs/<run>/rl/`
# (`final_model/` loads in 05, 06 and the server, like any checkpoint).

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml" (its rl block).
config = None
run_dir = None
# default: runs/<run>/sft/final_model
init_checkpoint = None
# completions sampled per problem, and the problems per step
group_size = None
batch_size = None
temperature = None
max_new_tokens = None
learning_rate = None
max_steps = None
max_minutes = None
kl_coef = None
use_lora = None

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.params import load_params
from minigpt.train.rl import rl_config

P = load_params("rl", globals())
rl = rl_config(P)
print(rl)

# %% [markdown]
# ## The problems
# Training problems come from `data/skills/train.jsonl`; the held-out accuracy below uses validation problems,
# which never appear in training (06 scores the test split).

# %%
# NBVAL_IGNORE_OUTPUT
import logging

import pandas as pd

from minigpt.align.show import RLLivePlot
from minigpt.train.rl import build_rl_trainer

logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
live = RLLivePlot(every=rl.live_plot_interval, title="GRPO")
trainer, info = build_rl_trainer(P, callbacks=[live])
print({k: v for k, v in info.items() if k != "families"})
pd.DataFrame([{"family": it.family, "question": it.question, "answer": it.answer}
              for it in trainer.train_batches.items[::max(1, len(trainer.train_batches.items) // 6)][:6]])

# %% [markdown]
# ## One round by hand
# One problem, a group of sampled replies, the checker's reward for each, and the advantages GRPO gives them.
# This is exactly what every training step does for `batch_size` problems at once.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.align.grpo import group_advantages
from minigpt.data.skills import reward
from minigpt.train.rl import rollout_config

source = trainer.train_batches
first = source.problems_at(0)[0]
item = source.items[first]
group = source.generator.generate_ids([source.prompt_ids[first]] * rl.group_size, rollout_config(rl, seed=P.seed))
replies = [trainer.tokenizer.decode(ids, skip_special_tokens=True) for ids in group]
rewards = [reward(item, text) for text in replies]
import torch

advantages = group_advantages(torch.tensor(rewards), rl.group_size)
print("problem:", item.question, "| answer:", item.answer)
pd.DataFrame({"reply": replies, "reward": rewards, "advantage": advantages.numpy().round(3)})

# %% [markdown]
# ## Before training: held-out accuracy
# Greedy answers to the validation problems, per family (pass@1).

# %%
# NBVAL_IGNORE_OUTPUT
before = trainer.evaluate()
print(f"held-out accuracy before RL: {before['val_accuracy']:.3f}")

# %% [markdown]
# ## Train
# Each step samples `batch_size` x `group_size` replies, scores them and takes one gradient step. The live plot
# shows the rollouts' mean reward, the held-out accuracy at each evaluation, the KL to the starting model, the
# replies' length and the share of groups with all-equal rewards.

# %%
# NBVAL_IGNORE_OUTPUT
result = trainer.fit()
print(result)

# %% [markdown]
# ## After training: the same held-out problems
# Accuracy per family before and after, and the curves saved as `runs/<run>/rl/plots/rl_metrics.png`.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import Image

from minigpt.align.show import RL_PANELS, save_align_figure
from minigpt.eval.skills import accuracy_table
from minigpt.train.rl import write_summary

after = trainer.evaluate()
write_summary(trainer.output_dir, before, after, result, info)
from minigpt.eval.scoring import change_note

print(f"held-out accuracy, mean over families: {before['val_accuracy']:.3f} before -> {after['val_accuracy']:.3f} after")
print(change_note(before["val_correct"], after["val_correct"], after["val_problems"], "held-out accuracy, pooled"))
display(accuracy_table(before, after, ("before RL", "after RL")))
Image(filename=str(save_align_figure(trainer.output_dir, RL_PANELS, "rl_metrics.png", "GRPO")))

# %% [markdown]
# ## SFT vs RL, problem by problem
# Held-out problems where the two models' greedy answers differ.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.train.checkpoint import load_checkpoint
from minigpt.train.rl import compare_answers

start_model, _, _ = load_checkpoint(info["checkpoint"])
compare_answers(start_model, trainer.model, trainer.tokenizer, trainer.eval_items, n=6)

# %%
assert (trainer.output_dir / "final_model" / "model.safetensors").is_file()
assert 0.0 <= after["val_accuracy"] <= 1.0 and result["step"] == trainer.max_steps or result["stop_reason"]
