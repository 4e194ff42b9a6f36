"""Equal-time experiments: recipes (overrides of one base config) trained for the same training-time budget, over
several seeds, one at a time in fresh processes; val BPC against time, a table and results.json.

    python -m minigpt.experiment params/sweeps/ablations_tiny.yaml [--out DIR] [--minutes M]

sweep (the file format and its checks), runner (prepare the corpus once, run, resume), run_one (one run's
process), report (the plot and the table). Notebook 08 calls the same functions.
"""
from .report import load_results, markdown_table, plot_bpc_vs_time, summary_table, write_report
from .runner import default_out, prepare_corpus, run_sweep
from .sweep import Sweep, SweepError, load_sweep

__all__ = ["Sweep", "SweepError", "load_sweep", "run_sweep", "prepare_corpus", "default_out", "load_results",
           "summary_table", "markdown_table", "plot_bpc_vs_time", "write_report"]
