"""MiniTokenizer: a byte-level BPE ``tokenizers.Tokenizer`` with minigpt's special tokens and ChatML."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ...atomic import atomic_write_text
from .imported import IMPORT_KEY, ChatTemplate, special_token_ids
from .special import (
    BOS_ID, CHAT_ROLES, EOS_ID, IM_END_ID, IM_END_TOKEN, IM_START_ID, IM_START_TOKEN, PAD_ID, SPECIAL_TOKENS,
    hf_tokenizer_config, special_tokens_map,
)

logger = logging.getLogger(__name__)


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


def _recorded_version(config_file: Path) -> int:
    """The normalisation version tokenizer_config.json records (1 when it records none, or is missing)."""
    from ..normalize import version_of

    try:
        return version_of(json.loads(config_file.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return 1


def _canonical_json(s: str) -> str:
    return json.dumps(json.loads(s), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class MiniTokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` with minigpt's special tokens and ChatML."""

    def __init__(self, tokenizer: Any, source: str | None = None, normalize_version: int = 1,
                 imported: dict | None = None) -> None:
        """imported: the tokenizer_config.json of a tokenizer that came with a pretrained model (see
        imported.py): special tokens are found by name and its own chat template is used."""
        self._tok = tokenizer
        self.source = source  # folder it was loaded from / saved to, for messages
        # the text normalisation (minigpt.data.normalize) of the data it was trained on; 1 = not recorded, 0 = none
        self.normalize_version = normalize_version
        self.train_seconds: float | None = None  # set by train_tokenizer
        self.imported = imported
        if imported is None:
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
        self._chat: ChatTemplate | None = None
        if imported is None:
            self.eos_id, self.bos_id, self.pad_id = EOS_ID, BOS_ID, PAD_ID
            self.im_start_id, self.im_end_id = IM_START_ID, IM_END_ID
            self.special_ids = frozenset(range(len(SPECIAL_TOKENS)))
        else:  # ids by name; generation from an empty prompt starts from eos, as with minigpt's own
            where = source or "imported tokenizer"
            ids = special_token_ids(tokenizer, imported, where)
            self.eos_id = self.bos_id = ids["eos_id"]
            self.pad_id, self.im_start_id, self.im_end_id = ids["pad_id"], ids["im_start_id"], ids["im_end_id"]
            self.special_ids = ids["special_ids"]
            self._chat = ChatTemplate(imported.get("chat_template"), self._canonical, imported, ids, where)
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
        conf_file = f.parent / "tokenizer_config.json"
        imported = None
        if conf_file.is_file():
            try:
                conf = json.loads(conf_file.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{conf_file}: not valid JSON ({e})") from None
            if isinstance(conf, dict) and IMPORT_KEY in conf:
                imported = conf
        return cls(tok, source=str(p), normalize_version=_recorded_version(conf_file), imported=imported)

    def to_json(self) -> str:
        """Canonical tokenizer.json content (special tokens matched, as HF expects)."""
        return self._canonical

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", json.dumps(json.loads(self._canonical), ensure_ascii=False, indent=1))
        # an imported tokenizer keeps its own config (chat template, special tokens) as it came
        conf = self.imported if self.imported is not None else hf_tokenizer_config(self.normalize_version)
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(conf, ensure_ascii=False, indent=2))
        if self.imported is None:
            atomic_write_text(folder / "special_tokens_map.json", json.dumps(special_tokens_map(), ensure_ascii=False, indent=2))
        self.source = str(folder)
        logger.info("saved tokenizer (vocab %d, sha256 %s) to %s", self.vocab_size, self.sha256[:12], folder)

    # ---- encode / decode
    def encode(self, text: str) -> list[int]:
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except TypeError:
            _check_texts([text], "text")
            raise

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Parallel (Rust threads) encoding of many texts."""
        texts = list(texts)
        # encode_batch_fast skips offset tracking (faster); same ids.
        fast = getattr(self._tok, "encode_batch_fast", None)
        try:
            encs = fast(texts, add_special_tokens=False) if fast else self._tok.encode_batch(texts, add_special_tokens=False)
        except TypeError:  # tokenizers' message names no text: find the one and say what is wrong with it
            _check_texts(texts, "texts")
            raise
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
        if self._chat is not None:  # an imported tokenizer: its own template
            return self._chat.segments(messages, add_generation_prompt)
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
        """The ChatML string (what the Jinja template renders for content without ``<|``, which the
        template escapes; see ``special.CHAT_TEMPLATE``)."""
        self._check_messages(messages)
        if self._chat is not None:
            return self._chat.render(messages, add_generation_prompt)
        s = "".join(f"{IM_START_TOKEN}{m['role']}\n{m['content']}{IM_END_TOKEN}\n" for m in messages)
        return s + (f"{IM_START_TOKEN}assistant\n" if add_generation_prompt else "")


def _check_texts(texts: Sequence[object], name: str) -> None:
    """Raise a clear error for the first text tokenizers cannot take: not a string, or not encodable as UTF-8
    (a lone surrogate, e.g. from bytes decoded with errors='surrogateescape')."""
    for i, t in enumerate(texts):
        where = name if name == "text" else f"{name}[{i}]"
        if not isinstance(t, str):
            raise TypeError(f"{where}: expected a string, got {type(t).__name__}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where}: character {e.start} is a lone surrogate (U+{ord(t[e.start]):04X}), which is not "
                             "valid Unicode text; expected text that encodes as UTF-8 (decode bytes with "
                             "errors='replace' to keep such bytes as U+FFFD)") from None
