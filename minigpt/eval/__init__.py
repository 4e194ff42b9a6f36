"""Evaluation: multiple-choice scoring, benchmark loaders, the built-in cloze, the built-in skills, lm-eval, and the
report card.

`minigpt.infer.evaluate` keeps perplexity, bits per character and samples.md.
"""
from .cloze import chat_cloze, ensure_cloze, load_cloze, text_cloze
from .config import EvalConfig
from .loaders import Benchmark, load_benchmarks, read_mc_csv, read_mc_jsonl
from .report_card import benchmark_table, compare, embed_images, render, write_report
from .runner import evaluate_run, stale_models
from .scoring import MCItem, bias_flag, change_note, evaluate_items, pass_at_k, score_item, wilson_interval
from .skills import evaluate_skills, format_skills_table, skills_by_stage

__all__ = ["Benchmark", "EvalConfig", "MCItem", "benchmark_table", "bias_flag", "change_note", "chat_cloze", "compare",
           "embed_images", "ensure_cloze", "evaluate_items", "evaluate_run", "evaluate_skills", "format_skills_table",
           "load_benchmarks", "load_cloze", "pass_at_k", "read_mc_csv", "read_mc_jsonl", "render", "score_item",
           "skills_by_stage", "stale_models", "text_cloze", "wilson_interval", "write_report"]
