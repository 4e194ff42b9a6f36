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
# # 09 · Experiments: quality per CPU minute
#
# Which training recipe gives the best model for the minutes you have? A **sweep** file in `params/sweeps/`
# lists recipes as overrides of one base config (Muon instead of AdamW, QK-norm, ReLU², untied embeddings,
# a warmup-stable-decay schedule, document-aligned batches, bf16 against fp32, ...), one training-time budget
# and the seeds. Every run gets the same budget: wall clock minus evaluation, checkpoint and sampling time
# (`max_minutes`), and its learning-rate schedule runs against that budget, so the decay ends when the time does.
#
# Runs go one at a time, each in a fresh process, on the same corpus. Results are kept in
# `runs/experiments/<sweep>/results.json` after every run; a sweep interrupted in any way continues at the next
# unfinished run when started again. The same from a terminal: `python -m minigpt.experiment params/sweeps/NAME.yaml`.

# %% tags=["parameters"]
# Parameters: plain literals only.
sweep = "ci"      # a file in params/sweeps/ (ci: two recipes, a few seconds each) or a path to one
# out: where results go; empty means runs/experiments/<sweep>
out = ""
minutes = 0.0     # > 0: this budget per run instead of the sweep's budget_minutes

# %% [markdown]
# ## The sweep
# Every key is checked before anything runs: a misspelt parameter or a bad value stops here, naming the key.

# %%
# NBVAL_CHECK_OUTPUT
from pathlib import Path

from minigpt.experiment import default_out, load_sweep

S = load_sweep(sweep)
out_dir = Path(out) if out else default_out(S)
budget = minutes or S.budget_minutes
print(f"sweep {S.name}: base config {S.config!r} with {S.base}, {budget:g} min of training per run, seeds {S.seeds}")
for name, overrides in S.recipes.items():
    print(f"  {name:<12} {overrides or '(the base as it is)'}")
print(f"{len(S.runs())} runs: at least {len(S.runs()) * budget:g} minutes of training")

# %% [markdown]
# ## Run it
# The corpus (cleaned data, tokenizer, token files) is prepared once with the base config if the sweep's
# `data` folder does not hold it yet. Then each (recipe, seed) trains in its own process; runs already in
# `results.json` are skipped, and a run that was cut short is done again from its start.

# %%
# NBVAL_IGNORE_OUTPUT
from minigpt.experiment import load_results, run_sweep

results_path = run_sweep(S, out_dir, minutes or None, progress=print)
results = load_results(results_path)

# %%
assert len(results["runs"]) == len(S.runs()), "a run is missing from results.json"
assert all(r["steps"] > 0 and r["final_val_bpc"] is not None for r in results["runs"])

# %% [markdown]
# ## Validation bits per character against training time
# Each recipe's mean over seeds is a line, the band spans the best and worst seed. Bits per character do not
# depend on the tokenizer, so runs with different vocabularies compare too.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import Image, Markdown

from minigpt.experiment import markdown_table, summary_table, write_report

paths = write_report(out_dir)
Image(filename=str(paths["plot"]))

# %% [markdown]
# ## The table
# Final validation BPC as the mean ± spread (half the range over seeds) and its difference to `baseline`;
# tokens per second of training time, steps, and the peak resident memory of the run's process. A change
# helps only when its difference is larger than the spread. The same table is in `results.md`.

# %%
# NBVAL_IGNORE_OUTPUT
Markdown(markdown_table(summary_table(results)))
