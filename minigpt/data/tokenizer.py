"""Byte-level BPE tokenizer: train, save/load (JSON only), ChatML chat template, quality report.

The saved folder (``runs/R/tokenizer/``) is a Hugging Face tokenizer folder as it is:
``tokenizer.json`` + ``tokenizer_config.json`` (with the ChatML ``chat_template``) +
``special_tokens_map.json``, so ``transformers.AutoTokenizer.from_pretrained(folder)`` loads it.

Special tokens have fixed ids (see ``SPECIAL_TOKENS``)::

    0 <|endoftext|>   document separator (eos); generation from an empty prompt starts here
    1 <|im_start|>    ChatML: start of a message
    2 <|im_end|>      ChatML: end of a message (end of an assistant reply)
    3 <|pad|>         padding only, never trained on

Ids 4..259 are the 256 byte tokens; merges follow.

Chat template (Qwen-style ChatML, no default system prompt)::

    <|im_start|>{role}\\n{content}<|im_end|>\\n      per message
    <|im_start|>assistant\\n                       generation prompt

Safety: ``MiniTokenizer.encode`` never produces special ids from user text (the literal
string ``<|im_end|>`` is encoded as ordinary bytes), so user text can't inject control tokens.
Hugging Face's ``apply_chat_template`` renders a string first and so *does* turn literal special
strings inside content into special ids; on content without such strings both agree exactly.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import random
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..atomic import atomic_write_text

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS: list[str] = [EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, PAD_TOKEN]
EOS_ID = 0
BOS_ID = 0  # generation from an empty prompt starts from <|endoftext|>
IM_START_ID = 1
IM_END_ID = 2
PAD_ID = 3
NUM_BYTES = 256
MIN_VOCAB_SIZE = NUM_BYTES + len(SPECIAL_TOKENS)  # 260
MODEL_MAX_LENGTH = 32768  # a generous default for HF; the export step may overwrite it
CHAT_ROLES = ("system", "user", "assistant")

# Jinja rendering exactly <|im_start|>{role}\n{content}<|im_end|>\n per message.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

DATA_NOTEBOOK = "notebooks/01_data_clean"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# --------------------------------------------------------------------------- config


@dataclass
class TokenizerConfig:
    """Parameters of notebook 02 (tokenizer part).

    tokenizer_samples: how many documents to train on; 0 means all train documents
    (plus all SFT conversations when ``sft.jsonl`` exists). A positive value draws that many
    documents uniformly (seed 0) from train + SFT, so the sample is not just the first file lines.
    """

    tokenizer_vocab_size: int = 6400
    tokenizer_samples: int = 0
    min_frequency: int = 2
    retrain_tokenizer: bool = False

    def validate(self) -> None:
        v = self.tokenizer_vocab_size
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"tokenizer_vocab_size: expected an int, got {v!r}")
        if v < MIN_VOCAB_SIZE:
            raise ValueError(
                f"tokenizer_vocab_size={v} is too small: a byte-level BPE needs the {NUM_BYTES} byte "
                f"tokens plus {len(SPECIAL_TOKENS)} special tokens = {MIN_VOCAB_SIZE}; "
                f"use at least {MIN_VOCAB_SIZE} (default 6400)"
            )
        if v > 2**32 - 1:
            raise ValueError(f"tokenizer_vocab_size={v} is too large: expected at most 2**32-1")
        s = self.tokenizer_samples
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ValueError(f"tokenizer_samples: expected an int >= 0 (0 = all documents), got {s!r}")
        m = self.min_frequency
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"min_frequency: expected an int >= 1, got {m!r}")
        if not isinstance(self.retrain_tokenizer, bool):
            raise ValueError(f"retrain_tokenizer: expected true/false, got {self.retrain_tokenizer!r}")


# --------------------------------------------------------------------------- helpers


def _require_file(path: Path, what: str = "") -> Path:
    path = Path(path)
    if not path.is_file():
        folder = path.parent
        hint = f"run {DATA_NOTEBOOK} first"
        if not folder.exists():
            raise FileNotFoundError(f"{folder} not found (no data folder): {hint} to create {path}")
        raise FileNotFoundError(f"{path} not found{what}: {hint}")
    return path


def iter_jsonl(path: str | os.PathLike, key: str) -> Iterator[Any]:
    """Yield ``obj[key]`` for each non-blank line; errors name the file and line."""
    path = Path(path)
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}); expected one JSON object a line") from None
            if not isinstance(obj, dict) or key not in obj:
                raise ValueError(f"{path}:{lineno}: expected an object with a {key!r} key")
            yield obj[key]


def iter_texts(path: str | os.PathLike) -> Iterator[str]:
    """Texts of a pretrain JSONL file (``{"text": ...}`` a line)."""
    for lineno, t in enumerate(iter_jsonl(path, "text"), 1):
        if not isinstance(t, str):
            raise ValueError(f"{path}: record {lineno}: 'text' must be a string, got {type(t).__name__}")
        yield t


def conversation_text(conv: Sequence[dict]) -> str:
    """Plain text of a conversation (contents joined by newlines) for tokenizer training."""
    return "\n".join(str(m.get("content", "")) for m in conv if isinstance(m, dict))


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
    return n


# --------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-char table used by the ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _canonical_json(s: str) -> str:
    return json.dumps(json.loads(s), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class MiniTokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` with minigpt's special tokens and ChatML."""

    def __init__(self, tokenizer: Any, source: str | None = None) -> None:
        self._tok = tokenizer
        self.source = source  # folder it was loaded from / saved to, for messages
        self.train_seconds: float | None = None  # set by train_tokenizer
        for i, s in enumerate(SPECIAL_TOKENS):
            got = tokenizer.token_to_id(s)
            if got != i:
                raise ValueError(f"tokenizer{' ' + source if source else ''}: special token {s} has id {got}, expected {i}")
        # The serialized form (special tokens matched) is what HF loads; for our own encode we
        # switch matching off so literal "<|im_end|>" in user text stays ordinary bytes.
        self._canonical = _canonical_json(tokenizer.to_str())
        self.sha256: str = hashlib.sha256(self._canonical.encode("utf-8")).hexdigest()
        tokenizer.encode_special_tokens = True
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id, self.bos_id, self.pad_id = EOS_ID, BOS_ID, PAD_ID
        self.im_start_id, self.im_end_id = IM_START_ID, IM_END_ID
        self.special_ids = frozenset(range(len(SPECIAL_TOKENS)))
        self._bytes: dict[int, bytes] = {}  # token_bytes memo: streaming asks for it once per generated token
        self._nl = self.encode("\n")
        self._assistant_header = self.encode("assistant\n")

    def __repr__(self) -> str:
        return f"MiniTokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]}, source={self.source!r})"

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer`` (special-token matching switched off)."""
        return self._tok

    # ---- load / save
    @classmethod
    def load(cls, path: str | os.PathLike) -> "MiniTokenizer":
        from tokenizers import Tokenizer

        p = Path(path)
        f = p / "tokenizer.json" if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: run notebooks/02_tokenizer first (or pass a tokenizer folder)")
        try:
            tok = Tokenizer.from_file(str(f))
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON
            raise ValueError(f"{f}: not a valid tokenizers JSON file ({e})") from None
        return cls(tok, source=str(p))

    def to_json(self) -> str:
        """Canonical tokenizer.json content (special tokens matched, as HF expects)."""
        return self._canonical

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", json.dumps(json.loads(self._canonical), ensure_ascii=False, indent=1))
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(hf_tokenizer_config(), ensure_ascii=False, indent=2))
        atomic_write_text(folder / "special_tokens_map.json", json.dumps(_special_tokens_map(), ensure_ascii=False, indent=2))
        self.source = str(folder)
        logger.info("saved tokenizer (vocab %d, sha256 %s) to %s", self.vocab_size, self.sha256[:12], folder)

    # ---- encode / decode
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Parallel (Rust threads) encoding of many texts."""
        texts = list(texts)
        # encode_batch_fast skips offset tracking (~15% faster); same ids.
        fast = getattr(self._tok, "encode_batch_fast", None)
        encs = fast(texts, add_special_tokens=False) if fast else self._tok.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encs]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        t = self._tok.id_to_token(int(i))
        if t is None:
            raise IndexError(f"token id {i} out of range [0, {self.vocab_size})")
        return t

    def token_bytes(self, i: int) -> bytes:
        """Raw UTF-8 bytes a token stands for (special tokens: their literal text)."""
        i = int(i)
        data = self._bytes.get(i)
        if data is None:
            t = self.id_to_token(i)
            if t is None:
                raise IndexError(f"token id {i} is not in the vocabulary ({self.vocab_size} tokens)")
            if i in self.special_ids:
                data = t.encode("utf-8")
            else:
                try:
                    data = bytes(_UNICODE_TO_BYTE[c] for c in t)
                except KeyError:  # an added (non-byte-level) token: its text is literal
                    data = t.encode("utf-8")
            self._bytes[i] = data
        return data

    def token_str(self, i: int) -> str:
        """Readable form of a token (invalid partial UTF-8 shown with U+FFFD)."""
        return self.token_bytes(i).decode("utf-8", errors="replace")

    # ---- chat
    @staticmethod
    def _check_messages(messages: Sequence[dict]) -> None:
        if not isinstance(messages, (list, tuple)):
            raise ValueError(f"messages: expected a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{k}]: expected a dict with 'role' and 'content', got {m!r}")
            if m["role"] not in CHAT_ROLES:
                raise ValueError(f"messages[{k}]['role']={m['role']!r}: expected one of {CHAT_ROLES}")
            if not isinstance(m["content"], str):
                raise ValueError(f"messages[{k}]['content']: expected a string, got {type(m['content']).__name__}")

    def chat_segments(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[tuple[list[int], bool]]:
        """ChatML as (ids, is_assistant_target) pieces; their concatenation == apply_chat_template.

        Each assistant target piece is the reply's content + its closing ``<|im_end|>``.
        ``role\\ncontent`` is encoded as one string (as HF does, for exact parity); the header is
        then split off by token prefix. If content starts with whitespace BPE may fuse the
        header's "\\n" with it: then the fused token counts as target (it holds reply bytes).
        """
        self._check_messages(messages)
        pieces: list[tuple[list[int], bool]] = []

        def add(ids: list[int], target: bool) -> None:
            if pieces and pieces[-1][1] == target:
                pieces[-1][0].extend(ids)
            elif ids or target:
                pieces.append((list(ids), target))

        bodies = self.encode_batch([f"{m['role']}\n{m['content']}" for m in messages])
        for m, ids in zip(messages, bodies):
            if m["role"] == "assistant":
                h = self._assistant_header
                k = 0
                while k < len(h) and k < len(ids) and ids[k] == h[k]:
                    k += 1
                add([self.im_start_id] + ids[:k], False)
                add(ids[k:] + [self.im_end_id], True)
                add(list(self._nl), False)
            else:
                add([self.im_start_id] + ids + [self.im_end_id] + self._nl, False)
        if add_generation_prompt:
            add([self.im_start_id] + self._assistant_header, False)
        return pieces

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[int]:
        out: list[int] = []
        for ids, _ in self.chat_segments(messages, add_generation_prompt=add_generation_prompt):
            out.extend(ids)
        return out

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The ChatML string (what the Jinja template renders)."""
        self._check_messages(messages)
        s = "".join(f"{IM_START_TOKEN}{m['role']}\n{m['content']}{IM_END_TOKEN}\n" for m in messages)
        return s + (f"{IM_START_TOKEN}assistant\n" if add_generation_prompt else "")


def hf_tokenizer_config() -> dict:
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,  # nothing is prepended automatically; generation starts from eos
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,  # byte-level: every input is representable
        "additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,  # else HF decode would alter " ." and round trips break
        "add_prefix_space": False,
        "split_special_tokens": False,
    }


def _special_tokens_map() -> dict:
    return {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN]}


# --------------------------------------------------------------------------- training


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> MiniTokenizer:
    """Train a byte-level BPE on ``texts`` (consumed once, streamed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    cfg.validate()
    tok = Tokenizer(models.BPE())
    tok.normalizer = None  # no normalisation: decode(encode(x)) must be exactly x
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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
    mt = MiniTokenizer(tok)
    mt.train_seconds = time.perf_counter() - t0
    logger.info("trained tokenizer: vocab %d in %.1fs", mt.vocab_size, mt.train_seconds)
    return mt


def training_texts(data_dir: str | os.PathLike, cfg: TokenizerConfig) -> Iterator[str]:
    """Train documents (+ SFT dialogue text when sft.jsonl exists), sampled per ``tokenizer_samples``.

    SFT text is included so chat words are in the vocabulary.
    """
    data_dir = Path(data_dir)
    train = _require_file(data_dir / "train.jsonl")
    sft = data_dir / "sft.jsonl"
    sources: list[tuple[Path, int, str]] = [(train, _count_lines(train), "text")]
    if sft.is_file():
        sources.append((sft, _count_lines(sft), "conversations"))
    total = sum(n for _, n, _ in sources)
    keep: set[int] | None = None
    if cfg.tokenizer_samples and cfg.tokenizer_samples < total:
        keep = set(random.Random(0).sample(range(total), cfg.tokenizer_samples))
    offset = 0
    for path, n, key in sources:
        for k, item in enumerate(iter_jsonl(path, key)):
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
        return tok
    _require_file(Path(data_dir) / "train.jsonl")
    tok = train_tokenizer(training_texts(data_dir, cfg), cfg)
    if tok.vocab_size < cfg.tokenizer_vocab_size:
        logger.warning(
            "vocab is %d < tokenizer_vocab_size=%d: not enough text/pairs at min_frequency=%d",
            tok.vocab_size, cfg.tokenizer_vocab_size, cfg.min_frequency,
        )
    tok.save(tokenizer_dir)
    return tok


# --------------------------------------------------------------------------- quality report

_ZH = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]+")
_EN = re.compile(r"[A-Za-z][A-Za-z0-9'’\-]*(?:[ ,.;:!?]+[A-Za-z][A-Za-z0-9'’\-]*)*[.,;:!?]?")


def _script_runs(texts: Sequence[str], pattern: re.Pattern) -> list[str]:
    return [m.group(0) for t in texts for m in pattern.finditer(t)]


def token_pieces(tok: MiniTokenizer, text: str) -> list[tuple[str, int]]:
    """Split ``text`` at token boundaries as (piece, n_tokens).

    A token that ends inside a multi-byte UTF-8 character is joined with the following
    token(s) until the bytes decode, so every piece is real text (n_tokens > 1 then).
    """
    out: list[tuple[str, int]] = []
    buf, n = b"", 0
    for i in tok.encode(text):
        buf += tok.token_bytes(i)
        n += 1
        try:
            s = buf.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append((s, n))
        buf, n = b"", 0
    if buf:
        out.append((buf.decode("utf-8", errors="replace"), n))
    return out


def render_tokens_text(tok: MiniTokenizer, text: str, sep: str = "|") -> str:
    """Token boundaries as plain text, e.g. ``迈向|充满|希望``; control chars shown escaped."""
    return sep.join(_visible(p) for p, _ in token_pieces(tok, text))


def _visible(s: str) -> str:
    return "".join(c if not unicodedata.category(c).startswith("C") else repr(c)[1:-1] for c in s)


def render_tokens_html(tok: MiniTokenizer, text: str) -> str:
    """Token boundaries as HTML (alternating backgrounds) for ``IPython.display.HTML``."""
    colors = ("#fde2a7", "#b9e4f7", "#d5f5c8", "#f7c9e3")
    spans = []
    for k, (p, n) in enumerate(token_pieces(tok, text)):
        title = f"{n} tokens (split UTF-8 char)" if n > 1 else "1 token"
        spans.append(
            f'<span title="{title}" style="background:{colors[k % len(colors)]};'
            f'border-radius:2px;padding:0 1px;white-space:pre-wrap">{html.escape(_visible(p))}</span>'
        )
    return '<div style="font-family:monospace;line-height:1.8">' + "".join(spans) + "</div>"


def quality_report(tok: MiniTokenizer, texts: list[str], n_examples: int = 3, top_k: int = 20) -> dict:
    """Round trip, compression (overall / Chinese / English), vocab usage, longest tokens,
    comparison with a character-level tokenizer, and rendered examples. JSON-able."""
    texts = [t for t in texts if t]
    enc = tok.encode_batch(texts)
    failures = [k for k, (t, ids) in enumerate(zip(texts, enc)) if tok.decode(ids) != t]
    n_chars = sum(len(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(e) for e in enc)

    def cpt(runs: list[str]) -> dict:
        ids = tok.encode_batch(runs) if runs else []
        c, n = sum(map(len, runs)), sum(map(len, ids))
        return {"chars": c, "tokens": n, "chars_per_token": (c / n) if n else None}

    counts: Counter = Counter()
    for e in enc:
        counts.update(e)
    normal = [i for i in range(len(SPECIAL_TOKENS), tok.vocab_size)]
    used = sum(1 for i in normal if counts[i])
    longest = sorted(normal, key=lambda i: (-len(tok.token_bytes(i)), i))[:top_k]
    distinct_chars = len(set("".join(texts)))
    report = {
        "n_docs": len(texts),
        "n_chars": n_chars,
        "n_bytes": n_bytes,
        "n_tokens": n_tokens,
        # decode(encode(x)) == x on every text; first_failure is an index into texts
        "round_trip": {"checked": len(texts), "failures": len(failures), "ok": not failures,
                       "first_failure": failures[0] if failures else None},
        "roundtrip_ok": not failures,
        "chars_per_token": n_chars / n_tokens if n_tokens else None,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else None,
        "chinese": cpt(_script_runs(texts, _ZH)),  # CJK runs encoded on their own
        "english": cpt(_script_runs(texts, _EN)),  # Latin-word runs encoded on their own
        "vocab_size": tok.vocab_size,
        "vocab_used": used,
        "vocab_used_frac": used / len(normal) if normal else 0.0,
        "top_tokens": [{"id": i, "token": tok.token_str(i), "count": c} for i, c in counts.most_common(top_k)],
        "longest_tokens": [{"id": i, "token": tok.token_str(i), "bytes": len(tok.token_bytes(i))} for i in longest],
        "char_level": {
            # a character-level tokenizer needs one id per distinct character and one token per char
            "vocab_needed": distinct_chars,
            "tokens": n_chars,
            "bpe_tokens": n_tokens,
            "compression_vs_char": n_chars / n_tokens if n_tokens else None,
        },
        "examples": [
            {"text": t[:200], "tokens": render_tokens_text(tok, t[:200])} for t in texts[:n_examples]
        ],
    }
    if failures:
        logger.warning("round trip failed on %d of %d texts (first: #%d)", len(failures), len(texts), failures[0])
    return report


def quality_tables(report: dict) -> dict:
    """pandas DataFrames of a ``quality_report`` for the notebook."""
    import pandas as pd

    summary = pd.DataFrame(
        [
            ("documents", report["n_docs"]),
            ("characters", report["n_chars"]),
            ("tokens", report["n_tokens"]),
            ("round trip exact", f"{report['round_trip']['checked'] - report['round_trip']['failures']} / {report['round_trip']['checked']}"),
            ("chars / token (all)", report["chars_per_token"]),
            ("chars / token (Chinese)", report["chinese"]["chars_per_token"]),
            ("chars / token (English)", report["english"]["chars_per_token"]),
            ("vocab used", f"{report['vocab_used']} / {report['vocab_size'] - len(SPECIAL_TOKENS)}"),
        ],
        columns=["metric", "value"],
    )
    cl = report["char_level"]
    compare = pd.DataFrame(
        [
            {"encoding": "character-level", "vocab": cl["vocab_needed"], "tokens": cl["tokens"], "chars/token": 1.0},
            {"encoding": "byte-level BPE", "vocab": report["vocab_size"], "tokens": cl["bpe_tokens"], "chars/token": cl["compression_vs_char"]},
        ]
    )
    return {
        "summary": summary,
        "char_level": compare,
        "longest_tokens": pd.DataFrame(report["longest_tokens"]),
        "top_tokens": pd.DataFrame(report["top_tokens"]),
    }
