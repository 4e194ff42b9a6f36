"""Cleaner: the normalisation steps and quality filters of one config, with shared step counters."""

from __future__ import annotations

from .config import CleanConfig
from .filters import quality_batch
from .normalize import normalize_batch


class Cleaner:
    """Per-document cleaning and filtering; counts how many documents each step changed."""

    def __init__(self, cfg: CleanConfig, steps: dict[str, int]):
        self.cfg = cfg
        self.steps = steps

    def normalize(self, s: str, pos_tagged: bool = False) -> str:
        """All enabled cleaning steps for one string (see ``normalize_batch``)."""
        return self.normalize_batch([s], [pos_tagged])[0]

    def normalize_batch(self, texts: list[str], pos_tagged: list[bool]) -> list[str]:
        """Cleaning steps in order: POS tags, full-width, NFKC, HTML, URLs, control, whitespace."""
        return normalize_batch(texts, pos_tagged, self.cfg, self.steps)

    def quality(self, s: str) -> tuple[str, str]:
        """(reason, detail) for a document that fails a quality rule, else ('', '')."""
        return self.quality_batch([s])[0]

    def quality_batch(self, texts: list[str]) -> list[tuple[str, str]]:
        """Quality rules for a batch of non-empty cleaned documents (see ``filters.QUALITY_RULES``)."""
        return quality_batch(texts, self.cfg)
