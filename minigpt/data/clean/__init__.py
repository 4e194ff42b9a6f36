"""Streaming cleaning pipeline: every input record is either kept or accounted for.

    cfg = CleanConfig(data_files=["my.jsonl"])
    stats = run_cleaning(cfg, "runs/demo/data")

Reads the sources record by record (memory does not grow with input size beyond the dedup
tables: ~25-45 bytes per kept record for exact dedup and ~0.5-0.8 KB per kept document for near
dedup, see ``near``), cleans and filters each document in worker processes (``prepare``; ``workers``),
removes exact and near duplicates, splits train/val by a hash of the text and writes:

    train.jsonl, val.jsonl        {"text": ...} per line
    sft.jsonl, sft_val.jsonl      {"conversations": [...]} per line
    rejects.jsonl                 {"file", "line", "reason", "excerpt", "source", "detail"} per rejected record
    stats.json                    counts by reason, per source, per cleaning step

Modules, in the order a record meets them: ``config`` (CleanConfig), ``normalize`` (cleaning
steps), ``filters`` (length limits and the table of quality rules), ``dedup`` (hashes, hash set,
MinHash/LSH), ``prepare`` (the per-batch work of the worker processes; ``Cleaner``, its per-document
part), ``near`` (verified near dedup), ``pipeline`` (run_cleaning, batches, checkpoints and resume),
``outputs`` (the val split and what the next notebooks will do), ``report`` (tables and plots);
``reasons`` names every reject reason and step counter, ``chars`` holds the numpy views of a batch
of texts that filters and dedup share.
"""

from .config import CleanConfig
from .dedup import HashSet64, MinHashLSH, chat_dedup_key, dedup_key, is_val, lsh_params, lsh_verified_params, text_hash
from .filters import QUALITY_RULES, check_chat_length, check_text_length, quality_batch
from .normalize import normalize_batch
from .outputs import data_plan, ensure_val_split
from .pipeline import BATCH, HIST_BINS, KEYLOGS, OUTPUTS, STATE_FILE, run_cleaning
from .prepare import Cleaner
from .reasons import (
    DUPLICATE_LINES, DUPLICATE_NGRAMS, EMPTY_AFTER_CLEAN, EXACT_DUPLICATE, HIGH_SYMBOL_FRACTION, LOW_CJK_FRACTION,
    LOW_LETTER_FRACTION, NEAR_DUPLICATE, REASONS, REPEATED_CHAR_RUN, STEPS, TOO_LONG, TOO_SHORT,
)
from .report import example_rejects, plot_clean_stats, stats_table

__all__ = [
    "BATCH", "DUPLICATE_LINES", "DUPLICATE_NGRAMS", "EMPTY_AFTER_CLEAN", "EXACT_DUPLICATE", "HIGH_SYMBOL_FRACTION",
    "HIST_BINS", "KEYLOGS", "LOW_CJK_FRACTION", "LOW_LETTER_FRACTION", "NEAR_DUPLICATE", "OUTPUTS", "QUALITY_RULES",
    "REASONS", "REPEATED_CHAR_RUN", "STATE_FILE", "STEPS", "TOO_LONG", "TOO_SHORT",
    "CleanConfig", "Cleaner", "HashSet64", "MinHashLSH",
    "chat_dedup_key", "check_chat_length", "data_plan", "ensure_val_split", "check_text_length", "dedup_key", "example_rejects", "is_val",
    "lsh_params", "lsh_verified_params", "normalize_batch", "plot_clean_stats", "quality_batch", "run_cleaning", "stats_table", "text_hash",
]
