"""Training the tokenizer: a byte-level BPE on the cleaned corpus, saved as a Hugging Face folder."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Iterable, Iterator

from .config import TokenizerConfig
from .corpus import DATA_NOTEBOOK, conversation_text, count_lines, iter_jsonl, require_file
from .minitokenizer import MiniTokenizer
from .. import normalize as textnorm
from ..normalize import NORMALIZE_VERSION, check_same_version, version_of
from .special import ESCAPE_MARK, SPECIAL_TOKENS, TOKENIZER_FILES

logger = logging.getLogger(__name__)


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, normalize_version: int = NORMALIZE_VERSION
                    ) -> MiniTokenizer:
    """Train a byte-level BPE on ``texts`` (consumed once, streamed), which were normalised as
    ``normalize_version`` (recorded in the saved folder)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    cfg.validate()
    tok = Tokenizer(models.BPE())
    # decode(encode(x)) must be exactly x: the one normalizer removes only the chat template's escape
    # mark U+FDD0, a noncharacter that minigpt.data.normalize removes from every text anyway
    tok.normalizer = normalizers.Replace(ESCAPE_MARK, "")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # split_digits: while the merges are learned every digit is its own word, so no merge joins two digits
    # (or a space and a digit) and a number always encodes as one token per digit, whatever its frequency in
    # the corpus. The saved pipeline is plain ByteLevel, which then gives the same ids (and the native encoder
    # of fast_encode.py still applies). Per-digit numbers are what arithmetic skills need (LLaMA splits digits
    # for the same reason, Touvron et al. 2023).
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if cfg.split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.tokenizer_vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # first, so they get ids 0..3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
        show_progress=False,
    )
    t0 = time.perf_counter()
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    tok.pre_tokenizer = byte_level
    mt = MiniTokenizer(tok, normalize_version=normalize_version)
    mt.train_seconds = time.perf_counter() - t0
    logger.info("trained tokenizer: vocab %d in %.1fs", mt.vocab_size, mt.train_seconds)
    return mt


def training_texts(data_dir: str | os.PathLike, cfg: TokenizerConfig) -> Iterator[str]:
    """Train documents (+ SFT dialogue text when sft.jsonl exists, + the built-in skills' training problems when
    skills/train.jsonl exists), sampled per ``tokenizer_train_mb`` (by line hash) and ``tokenizer_samples``.

    Chat and skill text is included so their words are in the vocabulary.
    """
    data_dir = Path(data_dir)
    train = require_file(data_dir / "train.jsonl")
    sources: list[tuple[Path, int, str]] = [(train, count_lines(train), "text")]
    for chat in (data_dir / "sft.jsonl", data_dir / "skills" / "train.jsonl"):
        if chat.is_file():
            sources.append((chat, count_lines(chat), "conversations"))
    total = sum(n for _, n, _ in sources)
    nbytes = sum(p.stat().st_size for p, _, _ in sources)
    fraction = min(1.0, cfg.tokenizer_train_mb * 1e6 / nbytes) if cfg.tokenizer_train_mb and nbytes else 1.0
    if fraction < 1.0:
        logger.info("tokenizer_train_mb=%g: training on a %.1f%% sample of %.0f MB (lines picked by hash)",
                    cfg.tokenizer_train_mb, 100 * fraction, nbytes / 1e6)
    keep: set[int] | None = None
    if cfg.tokenizer_samples and cfg.tokenizer_samples < total:
        keep = set(random.Random(0).sample(range(total), cfg.tokenizer_samples))
    offset = 0
    for path, n, key in sources:
        for k, item in enumerate(iter_jsonl(path, key, fraction)):
            if keep is None or offset + k in keep:
                if key == "conversations":
                    item = conversation_text(item) if isinstance(item, list) else ""
                if isinstance(item, str):
                    try:
                        item.encode("utf-8")
                    except UnicodeEncodeError as e:  # a lone surrogate from a "\ud800" JSON escape
                        raise ValueError(
                            f"{path}: record {k + 1}: not valid Unicode ({e.reason}); re-run {DATA_NOTEBOOK} to clean the data"
                        ) from None
                    yield item
        offset += n


def normalized(texts: Iterable[str], version: int, batch: int = 512) -> Iterator[str]:
    """``texts`` through ``minigpt.data.normalize.normalize`` in batches (a no-op on notebook 01's output,
    which is normalised already; hand-made train.jsonl files get the same form as everything else)."""
    chunk: list[str] = []
    for t in texts:
        chunk.append(t)
        if len(chunk) >= batch:
            yield from textnorm.normalize(chunk, version=version)
            chunk = []
    if chunk:
        yield from textnorm.normalize(chunk, version=version)


def data_version(data_dir: str | os.PathLike) -> int:
    """The normalisation version of a cleaned data folder (its stats.json); 1 when not recorded."""
    stats = Path(data_dir) / "stats.json"
    try:
        return version_of(json.loads(stats.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return 1


def build_tokenizer(data_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, cfg: TokenizerConfig) -> MiniTokenizer:
    """Train on ``data_dir`` and save to ``tokenizer_dir``, or reuse it (``retrain_tokenizer=False``)."""
    cfg.validate()
    tokenizer_dir = Path(tokenizer_dir)
    if not cfg.retrain_tokenizer and (tokenizer_dir / "tokenizer.json").is_file():
        tok = MiniTokenizer.load(tokenizer_dir)
        if tok.vocab_size != cfg.tokenizer_vocab_size:
            logger.warning(
                "reusing %s with vocab %d although tokenizer_vocab_size=%d; set retrain_tokenizer=True to retrain",
                tokenizer_dir, tok.vocab_size, cfg.tokenizer_vocab_size,
            )
        else:
            logger.info("reusing existing tokenizer %s (retrain_tokenizer=False)", tokenizer_dir)
        missing = [f for f in TOKENIZER_FILES[1:] if not (tokenizer_dir / f).is_file()]
        if missing:  # e.g. only tokenizer.json was copied in: complete the HF folder
            tok.save(tokenizer_dir)
        check_same_version(tok.normalize_version, data_version(data_dir), str(tokenizer_dir), str(data_dir))
        return tok
    require_file(Path(data_dir) / "train.jsonl")
    version = data_version(data_dir)
    tok = train_tokenizer(normalized(training_texts(data_dir, cfg), version), cfg, normalize_version=version)
    if tok.vocab_size < cfg.tokenizer_vocab_size:
        logger.warning(
            "vocab is %d < tokenizer_vocab_size=%d: not enough text/pairs at min_frequency=%d",
            tok.vocab_size, cfg.tokenizer_vocab_size, cfg.min_frequency,
        )
    tok.save(tokenizer_dir)
    return tok
