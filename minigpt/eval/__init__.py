"""Evaluation: multiple-choice scoring, benchmark loaders, the built-in cloze, lm-eval, and the report card.

`minigpt.infer.evaluate` keeps perplexity, bits per character and samples.md.
"""
from .cloze import chat_cloze, ensure_cloze, load_cloze, text_cloze
from .config import EvalConfig
from .loaders import Benchmark, load_benchmarks, read_mc_csv, read_mc_jsonl
from .report_card import benchmark_table, compare, render, write_report
from .runner import evaluate_run
from .scoring import MCItem, evaluate_items, score_item, wilson_interval

__all__ = ["Benchmark", "EvalConfig", "MCItem", "benchmark_table", "chat_cloze", "compare", "ensure_cloze",
           "evaluate_items", "evaluate_run", "load_benchmarks", "load_cloze", "read_mc_csv", "read_mc_jsonl", "render",
           "score_item", "text_cloze", "wilson_interval", "write_report"]
