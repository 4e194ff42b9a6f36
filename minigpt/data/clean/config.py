"""CleanConfig: the parameters of notebook 01 and their validation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class CleanConfig:
    """Parameters of notebook 01 (every field is a notebook parameter).

    Sources: with ``data_files`` empty, the built-in corpora (see ``sources.builtin_sources``);
    with files, only those files unless ``use_full_data`` adds every built-in source as well.
    A JSONL line is a pretrain document (``text``) or a dialogue (``conversations``), told apart
    per line; dialogues go to ``sft*.jsonl``.

    ``max_data_size`` caps kept pretrain documents and, separately, kept dialogues. Records read
    after a cap is reached are counted as ``over_cap``; a file stops being read once every kind
    of record it has produced is full, and later sources of a full kind are skipped.

    ``fullwidth_to_halfwidth``, ``nfkc``, ``strip_control`` and ``cjk_punctuation`` are the steps of
    ``minigpt.data.normalize.normalize``, the normalisation prompts and chat data get as well: switching
    one off makes the training text differ from what generation feeds the model. Full-width -> half-width
    runs before NFKC, which would map the same characters (the protected Chinese punctuation aside), so
    switching ``fullwidth_to_halfwidth`` off changes the output only when ``nfkc`` is off as well.
    Quality filters and near dedup apply to pretrain documents; dialogues get the cleaning steps,
    ``max_chars`` (on all turns together) and exact dedup. Near dedup finds candidates by LSH (many short
    bands, so a pair at the threshold is a candidate ~99% of the time) and declares a duplicate only when
    the Jaccard similarity estimated from the two MinHash signatures reaches the threshold, less two
    standard deviations of the estimate (0.07 at 0.8 with 128 values).
    """

    data_files: list[str] = field(default_factory=list)  # user files; empty = built-in corpora
    use_full_data: bool = False  # every built-in source (plus data_files)
    max_data_size: int = 0  # cap on kept documents (and, separately, on kept dialogues); 0 = no cap
    text_column: str = "text"  # text field for csv / parquet / jsonl
    sft_language: str = "chinese"  # chatterbot dialogues for SFT: chinese | english | both
    val_fraction: float = 0.02  # pretraining documents held out for validation
    # dialogues held out for 04's and 06's chat measures: enough that they mean something (the 457 built-in
    # Chinese dialogues hold out ~55; at 0.02 it was 8)
    sft_val_fraction: float = 0.12
    min_chars: int = 8  # pretrain documents shorter than this are dropped (dialogues are exempt)
    max_chars: int = 50_000
    max_line_bytes: int = 1_000_000  # longer input lines are rejected without being read whole
    # cleaning steps, in the order they run
    strip_pos_tags: bool = True  # People's Daily word/TAG -> word
    remove_html: bool = True
    remove_urls: bool = True
    fullwidth_to_halfwidth: bool = True  # letters and digits; Chinese punctuation stays full-width
    nfkc: bool = True  # compatibility folding, Chinese punctuation and the ellipsis kept
    strip_control: bool = True
    cjk_punctuation: bool = True  # ASCII , ; : ! ? . next to Chinese characters -> ，；：！？。
    collapse_whitespace: bool = True
    # quality filters (Gopher / C4 style, adapted to characters because Chinese has no spaces)
    quality_filter: bool = True
    min_letter_fraction: float = 0.5  # letters+digits (CJK, Latin, ...) among non-space chars
    max_symbol_fraction: float = 0.1  # chars that are neither letters, digits nor punctuation
    min_cjk_fraction: float = 0.0  # 0 = off; e.g. 0.3 keeps mostly-Chinese documents only
    max_char_run: int = 16  # reject a character repeated more than this many times in a row
    max_dup_line_fraction: float = 0.3  # share of repeated lines within a document
    dup_ngram_size: int = 10  # characters per n-gram for the repeated n-gram share
    max_dup_ngram_fraction: float = 0.25
    # dedup
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dedup_threshold: float = 0.8  # estimated Jaccard similarity of character shingles
    near_dedup_ngram: int = 5  # shingle size from 80 characters on; shorter texts get shorter ones (>= 2)
    near_dedup_num_perm: int = 128
    checkpoint_every: int = 20_000  # records between resume checkpoints
    # worker processes for normalising, filtering and MinHash (0 = every core); inputs under 8 MB are
    # cleaned in-process. The output is byte-identical whatever the number.
    workers: int = 0
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range or of the wrong type."""

        def bad(name: str, expected: str) -> None:
            raise ValueError(f"CleanConfig.{name} = {getattr(self, name)!r}: expected {expected}")

        if not isinstance(self.data_files, list) or not all(isinstance(p, (str, os.PathLike)) for p in self.data_files):
            bad("data_files", "a list of file paths")
        for name in ("max_data_size", "min_chars", "workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        for name in ("max_chars", "max_line_bytes", "max_char_run", "dup_ngram_size", "near_dedup_ngram",
                     "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.max_chars < self.min_chars:
            bad("max_chars", f"at least min_chars ({self.min_chars})")
        if not isinstance(self.text_column, str) or not self.text_column:
            bad("text_column", "a non-empty column name")
        if self.sft_language not in ("chinese", "english", "both"):
            bad("sft_language", "'chinese', 'english' or 'both'")
        for name in ("val_fraction", "sft_val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "a number in [0, 1)")
        for name in ("min_letter_fraction", "max_symbol_fraction", "min_cjk_fraction", "max_dup_line_fraction",
                     "max_dup_ngram_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "a fraction in [0, 1]")
        if not 0.0 < self.near_dedup_threshold < 1.0:
            bad("near_dedup_threshold", "a similarity strictly between 0 and 1")
        if not isinstance(self.near_dedup_num_perm, int) or not 8 <= self.near_dedup_num_perm <= 1024:
            bad("near_dedup_num_perm", "an integer in [8, 1024]")
