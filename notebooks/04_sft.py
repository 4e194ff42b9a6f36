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
# # 04 · Supervised fine-tuning (chat)
#
# The pretrained model continues text; here it learns to answer in turns. Each conversation is
# rendered with the tokenizer's ChatML template, and the loss counts **only the assistant's
# replies** (and their closing `<|im_end|>`): the model is not trained to imitate the user.
# It is the same `Trainer` as notebook 03, with a lower learning rate.
#
# - **Data**: by default the chat JSONL notebook 01 wrote (`runs/<run>/data/sft.jsonl`). For **English**
#   dialogues set `sft_language: english` (or `both`) at the top of the params YAML, or pass
#   `-p sft_language english` to the whole demo, so 01 cleans them and 02's tokenizer learns their words.
#   `chat_source` reads another source without re-running 01: `english` / `chinese` / `both` (the
#   built-in dialogues) or a path to your own minimind-format `.jsonl`.
# - **Skills** (`skills_fraction`): the built-in skill problems 01 wrote (`data/skills/train.jsonl`: add, compare,
#   copy, numerals...) are mixed in, `skills_fraction` of the examples. Unlike a dialogue, a skill answer can be
#   checked, so this notebook measures what SFT taught: held-out accuracy before and after, per family.
# - **Packing** (`pack_conversations`): several conversations share a row; a block-diagonal mask and
#   positions restarting at 0 keep each one exactly as if it were alone.
# - **LoRA** (`use_lora`, `lora_rank`, `lora_alpha`, `lora_dropout`, `lora_targets`): only small adapters
#   train; step checkpoints hold `adapter.safetensors`, and `final_model/` holds the merged weights
#   (loadable by notebook 05 and export as usual) plus the adapter.
# - **Start from a pretrained model** (`init_from`): a downloaded Hugging Face folder (Llama, Qwen2, Qwen3,
#   MiniMind) is imported once into `runs/<run>/import/` and fine-tuned with its own tokenizer and chat
#   template; a minigpt checkpoint works too. See docs/pretrained.md.

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml" (its `sft:` block).
config = None
run_dir = None
pretrained_checkpoint = None   # default: runs/<run>/pretrain/final_model
# a downloaded Hugging Face model folder or a minigpt checkpoint to fine-tune instead
init_from = None
learning_rate = None
max_steps = None
batch_size = None
warmup_steps = None
chat_source = None             # run (01's sft.jsonl) | chinese | english | both | path/to/chat.jsonl
pack_conversations = None
use_lora = None
lora_rank = None
# the share of training examples that are built-in skill problems, 0 = dialogues only
skills_fraction = None

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.params import load_params
from minigpt.train.sft import build_sft_trainer
from minigpt.ui.plots import LivePlot

P = load_params("sft", globals())
live = LivePlot(every=P.live_plot_interval, title="SFT loss")
# with no chat data the rest of the notebook is skipped, and `info` says how to get some
trainer, info = build_sft_trainer(P, callbacks=[live], skip_if_no_chat=True)
print(info.get("skipped") or info)

# %% [markdown]
# ## Before fine-tuning
# The same prompts are asked before and after, through the chat template.

# %%
from minigpt.infer.generate import GenerationConfig, TextGenerator

prompts = ["你好", "你叫什么名字？", "你喜欢什么？"]
greedy = GenerationConfig(max_new_tokens=30, do_sample=False, repetition_penalty=1.2)
if trainer is not None:
    before = [TextGenerator(trainer.model, trainer.tokenizer).chat([{"role": "user", "content": p}], greedy) for p in prompts]

# %% [markdown]
# The pretrained model has never seen a question-and-answer format: on held-out skill problems (validation
# problems, never trained on) it should score about 0.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.train.sft import skill_accuracy

skills_before = skill_accuracy(trainer, P.paths["data"]) if trainer is not None else None
print("held-out skill accuracy before SFT:", "no data/skills/ in this run" if skills_before is None
      else f"{skills_before['val_accuracy']:.3f} (mean of families, {skills_before['val_problems']} problems)")

# %% [markdown]
# ## Train

# %%
# NBVAL_IGNORE_OUTPUT
import logging

logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
result = trainer.fit() if trainer is not None else info["skipped"]
print(result)

# %% [markdown]
# ## After fine-tuning, side by side

# %%
import pandas as pd

if trainer is not None:
    after = [TextGenerator(trainer.model, trainer.tokenizer).chat([{"role": "user", "content": p}], greedy) for p in prompts]
    display(pd.DataFrame({"prompt": prompts, "before SFT": before, "after SFT": after}))

# %% [markdown]
# ## What SFT taught, measured
# The same held-out skill problems after SFT, per family. No held-out problem (nor its twin) is trained on, so a family
# scores only what the model can compute; multi-digit arithmetic stays low after a short SFT. 06 scores every stage
# on the test split.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.eval.skills import accuracy_table

if skills_before is not None:
    skills_after = skill_accuracy(trainer, P.paths["data"])
    display(accuracy_table(skills_before, skills_after, ("before SFT", "after SFT")))

# %%
from IPython.display import Image

Image(filename=str(trainer.output_dir / "plots" / "loss_curve_latest.png")) if trainer is not None else None
