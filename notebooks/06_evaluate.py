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
# # 06 · Evaluate: benchmarks and the report card
#
# Is the model any good, and did this change make it better? Validation loss says how well the model
# predicts held-out text; a **benchmark** asks it questions with known answers. Each choice is scored by
# the log-likelihood the model gives its text after the question (the highest wins), zero-shot or with
# k solved examples first, in plain text or through the chat template.
#
# At this size the standard Chinese exams (C-Eval, CMMLU) sit at the 25% a random pick gets, so this
# notebook also builds a benchmark on which a small model visibly learns: **cloze** items from the run's
# held-out split. Point `eval_data` at a folder of C-Eval / CMMLU CSVs or `{question, choices, answer}`
# JSONL that you downloaded to score those too (nothing is downloaded here). Last, the **report card**:
# one page, `runs/<run>/report.md`, with every stage's numbers.

# %% tags=["parameters"]
# Parameters: plain literals only. None means "take it from params/<config>.yaml" (its `evaluate:` block).
config = None
run_dir = None
checkpoint = None        # default: the SFT model if there is one, else the pretrained one
eval_data = None         # a folder of C-Eval *_val.csv / CMMLU CSVs / JSONL you downloaded
num_fewshot = None       # k solved examples before each question
cloze_items = None       # how many built-in cloze items (at most one per held-out document)
compare_with = None      # another run directory: both side by side at the end

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.eval import EvalConfig
from minigpt.params import load_params, validate_dataclass

P = load_params("evaluate", globals())
eval_cfg = P.build(EvalConfig)
validate_dataclass(eval_cfg)
print(eval_cfg)

# %% [markdown]
# ## The built-in cloze
# A prefix of a held-out document, its true continuation, and three continuations of other held-out
# documents of similar length. A model that learnt nothing picks one at random (25%). The items depend only
# on the held-out split and the seed, and are written once to `runs/<run>/eval/cloze.jsonl`; the chat
# variant asks for the reply that closes a held-out dialogue.

# %%
# NBVAL_CHECK_OUTPUT
from minigpt.eval import ensure_cloze, load_cloze

cloze_path = ensure_cloze(P.run_dir, n_items=eval_cfg.cloze_items, seed=eval_cfg.cloze_seed,
                          prefix_chars=eval_cfg.cloze_prefix_chars, min_chars=eval_cfg.cloze_min_chars,
                          max_chars=eval_cfg.cloze_max_chars)
cloze = load_cloze(cloze_path) if cloze_path else []
print(f"{len(cloze)} items in {cloze_path.relative_to(P.run_dir)}; the first one:" if cloze else "no held-out split: run 01")
for item in cloze[:1]:
    print("question:", item.question)
    print("\n".join(f"  {'*' if i == item.answer else ' '} {c}" for i, c in enumerate(item.choices)))

# %% [markdown]
# ## Benchmarks and skills
# Every model of the run (untrained: the run's shape with its seed's random initialisation; pretrained,
# fine-tuned, aligned, RL, whichever exist) on every benchmark, yours included; accuracy with its 95%
# interval (Wilson) against random. A benchmark on which the *untrained* model beats random is flagged as
# biased (e.g. the right choice is usually the longest). The same pass scores the built-in skills by
# generation, measures validation loss, asks each stage the same chat prompts and times generation:
# `runs/<run>/eval/results.json` and `eval/skills.json`, with each checkpoint's SHA-256.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import Markdown

from minigpt.eval import benchmark_table, evaluate_run

results = evaluate_run(P.run_dir, eval_cfg, progress=print)
Markdown(benchmark_table(results["benchmarks"]))

# %%
import math

assert results["benchmarks"], "no benchmark was scored"
assert all(r["n"] > 0 and 0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["random"]) for r in results["benchmarks"])

# %% [markdown]
# ## The built-in skills, stage by stage
# Held-out problems (the test split, never seen in training) with answers a program checks: greedy
# pass@1 with its Wilson 95% interval per family and stage; sampled pass@k (k replies per problem) from
# SFT on shows how often the model *can* answer, the headroom RL turns into greedy accuracy.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import Image

from minigpt.eval import format_skills_table, skills_by_stage
from minigpt.ui.plots import save_skills_plot

skills = skills_by_stage(P.run_dir)
display(Markdown(format_skills_table(skills)))
Image(filename=str(save_skills_plot(skills, P.run_dir / "eval" / "skills.png"))) if skills else None

# %% [markdown]
# ## Standard benchmarks with lm-evaluation-harness
# Notebook 05 exported the model as a `transformers` folder (`runs/<run>/hf`), which
# [lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness) reads as it is. With internet
# access (it fetches C-Eval and CMMLU from the Hugging Face Hub), in a terminal:

# %%
# NBVAL_IGNORE_OUTPUT
import shlex

from minigpt.eval.lmeval import command

print(shlex.join(command(P.run_dir / "hf", "ceval-valid,cmmlu", num_fewshot=5)))

# %% [markdown]
# ## The report card
# One page for the run: environment, data and rejects, tokenizer, model size, training curves, throughput
# and MFU, validation loss / bits per character / perplexity, the benchmark table, the skills table and
# plot, alignment and RL, each stage's chat answers, samples, generation speed, the git commit and the
# parameters. A stage that did not run is marked as such. `python -m minigpt.report RUN_DIR` writes the same
# file from a terminal. Its images sit beside it in the run folder; shown here they are embedded.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.eval import embed_images, write_report

report_path = write_report(P.run_dir)
print(f"wrote {report_path}")
Markdown(embed_images(report_path.read_text(encoding="utf-8"), P.run_dir))

# %% [markdown]
# Two runs side by side (`python -m minigpt.report RUN_A RUN_B`), when `compare_with` names another run:

# %%
# NBVAL_IGNORE_OUTPUT
from pathlib import Path

from minigpt.eval import compare

if P.compare_with:
    display(Markdown(compare(Path(P.compare_with), P.run_dir)))
