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
# # 07 · Align: preference tuning (DPO)
#
# After SFT the model answers in turns, but nothing told it which of two answers is *better*. Direct Preference
# Optimization (DPO, Rafailov et al. 2023) learns from pairs — a prompt, a **chosen** reply and a **rejected**
# one — by raising the chosen reply's probability relative to a frozen **reference** model (the SFT model)
# and lowering the rejected one's, with no reward model and no sampling during training.
#
# - **Pairs**: by default built here without any download, following SPIN (self-play fine-tuning, Chen et al.
#   2024): for each SFT dialogue the human reply is *chosen* and the SFT model's own sampled reply is
#   *rejected*. Or bring your own (`pairs_source`): MiniMind's `dpo.jsonl`
#   (`{"chosen": [messages], "rejected": [messages]}`) or `{"prompt", "chosen", "rejected"}` JSONL; invalid
#   lines go to `runs/<run>/align/rejects.jsonl` with their line number and reason.
# - **Verifiable pairs** (`pairs_source: skills`, the demo's default): for each built-in skill problem (01) the
#   reference answer is chosen and one of the SFT model's own sampled answers that the checker marks **wrong** is
#   rejected. DPO then learns exactly from the model's mistakes, and the held-out pairs come from validation
#   problems it never trained on, so the reward accuracy measures something a program can verify. Families the
#   run answers with worked solutions (arithmetic) give no pairs: a wrong scratchpad slips once and then continues
#   consistently, and pushing all of it down taught answers that disagree with their own steps. Watch the skills
#   table after DPO: on this small model even the other families' pairs cost some arithmetic.
# - **Loss** (`loss_type`, `beta`, `label_smoothing`): sigmoid DPO, conservative DPO (label smoothing) or IPO,
#   on the final assistant reply only. The reference's log-probs are computed once and cached in
#   `runs/<run>/align/reference_logps.safetensors`, so the reference model is not in memory while training.
# - Same `Trainer` as 03 and 04: checkpoints, exact resume, live plot, metrics; LoRA with `use_lora`.
#
# It reads `runs/<run>/sft/final_model` and writes `runs/<run>/align/` (`final_model/` loads in notebook 05).

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml" (its `align:` block).
config = None
run_dir = None
sft_checkpoint = None          # default: runs/<run>/sft/final_model
# pairs: spin or skills are built here from the SFT model, or a path to your dpo.jsonl
pairs_source = None
loss_type = None               # sigmoid | ipo
beta = None
label_smoothing = None
# sft_weight adds sft_weight times the chosen reply token NLL, as RPO does; 0 is plain DPO
sft_weight = None
learning_rate = None
max_steps = None
batch_size = None
use_lora = None

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.params import load_params
from minigpt.train.dpo import dpo_config, spin_settings

P = load_params("align", globals())
dpo = dpo_config(P)
print(dpo)

# %% [markdown]
# ## Make the pairs
# With `pairs_source: spin` the SFT model answers every SFT dialogue's last user turn by sampling with the
# settings below; its answer becomes the *rejected* reply and the dialogue's human reply the *chosen* one.
# Held-out pairs (for the metrics) come from dialogues DPO does not train on. The pairs are written to
# `runs/<run>/align/pairs/` and reused while the SFT model and settings stay the same.

# %%
# NBVAL_CHECK_OUTPUT
print("pairs_source:", dpo.pairs_source)
if dpo.pairs_source == "spin":
    print("sampling settings:", spin_settings(dpo, P.seed))

# %%
# NBVAL_IGNORE_OUTPUT
import logging

from minigpt.train.dpo import make_pairs

logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
pairs = make_pairs(P)
print(f"{len(pairs.train)} training pairs, {len(pairs.eval)} held out")
print({k: v for k, v in pairs.info.items() if k not in ("folder", "rejects")})

# %% [markdown]
# ## A few pairs
# The prompt's last user turn, the chosen (reference) reply and the rejected (the model's own) reply.

# %%
# NBVAL_IGNORE_OUTPUT
import pandas as pd

pd.DataFrame([{"prompt": p.prompt[-1][1], "chosen": p.chosen, "rejected": p.rejected} for p in pairs.train[:5]])

# %% [markdown]
# ## Before training: held-out reward accuracy
# The implicit reward of a reply is `beta * (log pi - log ref)`. Before training the policy *is* the reference,
# so every margin is 0 and the reward accuracy is 50% by definition (ties count one half), the loss `log 2`.
# The reference log-probs are computed here, once, and cached.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.align.show import AlignLivePlot
from minigpt.train.dpo import build_dpo_trainer

live = AlignLivePlot(every=dpo.live_plot_interval, title="DPO")
trainer, info = build_dpo_trainer(P, pairs, callbacks=[live])
print({k: info[k] for k in ("train_pairs", "eval_pairs", "dropped_too_long", "reference_cache")})
before = trainer.evaluate()
print(f"held-out reward accuracy before DPO: {before['reward_accuracy']:.3f}  (margin {before['reward_margin']:.4f})")

# %% [markdown]
# ## Train
# The live plot shows the DPO loss, the reward accuracy and margin (held-out points, training lines), the
# log-probs of chosen and rejected replies per token, and the KL from the reference on held-out replies.

# %%
# NBVAL_IGNORE_OUTPUT
result = trainer.fit()
print(result)

# %% [markdown]
# ## After training: the same held-out pairs
# Reward accuracy should now be above 50%: the model prefers the reference reply to its own sample on prompts
# it was not trained on. The KL says how far it moved from the SFT model.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.align.show import before_after

after = trainer.evaluate()
from minigpt.eval.scoring import change_note

n = info["eval_pairs"]  # ties count one half, so k is rounded
print(change_note(round(before["reward_accuracy"] * n), round(after["reward_accuracy"] * n), n,
                  "held-out reward accuracy"))
before_after(before, after)

# %% [markdown]
# ## The margin curve
# The held-out reward margin and accuracy at each evaluation (from `metrics.jsonl`), and all the metrics'
# panels saved as `runs/<run>/align/plots/align_metrics.png`.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import Image

from minigpt.align.show import margin_path, save_align_figure

for step, margin, acc in margin_path(trainer.output_dir):
    print(f"step {step:>5}: margin {margin:+.4f}  accuracy {acc:.3f}")
Image(filename=str(save_align_figure(trainer.output_dir)))

# %% [markdown]
# ## SFT vs aligned vs reference, side by side
# Greedy answers of the SFT model and of the aligned model to held-out prompts, with the reference reply.
# Plain DPO only asks that the chosen reply gain on the rejected one; on a model this small both log-probs
# usually fall (see the next table and `kl_ref`) and answers can grow longer and repetitive as the end-of-turn
# token loses probability too. `sft_weight` adds the chosen reply's likelihood to the loss (RPO) and keeps
# answers well-formed, at a smaller margin: `params/tiny.yaml` sets 0.5 for that reason; `-p sft_weight 0` shows
# plain DPO.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.align.show import side_by_side
from minigpt.train.checkpoint import load_checkpoint

sft_model, _, _ = load_checkpoint(info["checkpoint"])
side_by_side(sft_model, trainer.model, trainer.tokenizer, trainer.pairs["eval"], n=5)

# %% [markdown]
# ## Reference replies vs the model's own, before and after
# Mean log-prob per token on held-out pairs of the reference (chosen) reply and of the model's own sample
# (rejected). DPO should raise the first relative to the second: the gap is what the reward margin measures.

# %%
# NBVAL_IGNORE_OUTPUT
# the rejected side is the model's own sample for spin and skills pairs, the file's rejected reply otherwise
own = dpo.pairs_source in ("spin", "skills")
pd.DataFrame({"chosen reply": [before["chosen_logp_per_token"], after["chosen_logp_per_token"]],
              "model's own reply" if own else "rejected reply": [before["rejected_logp_per_token"],
                                                                 after["rejected_logp_per_token"]]},
             index=["before DPO", "after DPO"]).assign(gap=lambda d: d.iloc[:, 0] - d.iloc[:, 1]).round(4)

# %%
# before training the policy is the reference: margins 0 (up to low-precision rounding), accuracy one half
assert abs(before["reward_margin"]) < 1e-2 and 0.4 <= before["reward_accuracy"] <= 0.6, before
assert (trainer.output_dir / "final_model" / "model.safetensors").is_file()
