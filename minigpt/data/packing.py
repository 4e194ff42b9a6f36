"""Encode the cleaned corpus into flat token files (``runs/R/tokens/{train,val}.bin`` + ``meta.json``).

Layout: every document is written as ``<|endoftext|> doc-tokens``, i.e. each document is
*preceded* by the eos id, so the stream reads ``EOS d0 EOS d1 EOS d2 ...``. Every document is
thereby conditioned on ``<|endoftext|>``, which is exactly what generation from an empty
prompt starts from, and every document but the last is terminated by it.

dtype: ``uint16`` when the vocabulary has fewer than 65536 ids, otherwise ``uint32``.

``meta.json`` (one file for both splits)::

    {"format_version": 1, "dtype": "uint16", "vocab_size": 6400, "eos_id": 0,
     "doc_separator": "eos_before_each_doc",
     "tokenizer_sha256": "...", "tokenizer_path": "runs/R/tokenizer",
     "splits": {"train": {"file": "train.bin", "num_tokens": N, "num_docs": D,
                          "num_chars": C, "num_bytes": B,
                          "source": ".../train.jsonl", "source_sha256": "..."}, "val": {...}}}

``num_chars`` is the number of characters of the source text (for bits per character:
``BPC = loss_nats * num_tokens / (num_chars * ln 2)``).

Resume: tokens are appended to ``{split}.bin.partial`` in chunks; after each chunk a small
``{split}.progress.json`` records how many documents/tokens are safely on disk. A rerun with
the same tokenizer and source continues from there (truncating a half-written chunk) and
produces byte-identical files; the finished file is moved into place with ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..atomic import atomic_write_text
from .tokenizer import MiniTokenizer
from .tokenizer.corpus import DATA_NOTEBOOK, count_lines, iter_texts, require_file
from .tokenizer.fast_encode import fast_encoder
from .normalize import VERSION_KEY, check_same_version
from .tokenizer.training import data_version

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
DOC_SEPARATOR = "eos_before_each_doc"


class TokenizerMismatchError(ValueError):
    """Token files were made by a different tokenizer than the one in use."""


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab under 65536), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


def file_sha256(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _write_chunk(f: Any, arr: np.ndarray) -> None:
    """Append one chunk and make it durable before progress is recorded (a test hook, too)."""
    f.write(arr.tobytes())
    f.flush()
    os.fsync(f.fileno())


def _encode_chunk(tok: MiniTokenizer, texts: Sequence[str], dtype: np.dtype) -> np.ndarray:
    """``EOS d0 EOS d1 ...`` for a chunk: by the native BPE encoder when it can be used (the same ids,
    see tokenizer/fast_encode.py), else by ``tok.encode_batch``."""
    enc = fast_encoder(tok)
    if enc is not None:
        return enc.encode_packed(texts, eos_id=tok.eos_id, dtype=dtype)[0]
    flat: list[int] = []
    for ids in tok.encode_batch(texts):
        flat.append(tok.eos_id)  # <|endoftext|>: id 0 in minigpt's tokenizers, by name in imported ones
        flat.extend(ids)
    return np.array(flat, dtype=dtype)


def _raise_bad_text(src: Path, texts: Sequence[str], first: int) -> None:
    """Name the document that can't be encoded (e.g. a lone surrogate from a JSON escape)."""
    for k, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{src}: document {first + k + 1}: not valid Unicode ({e.reason} at char {e.start}); "
                f"re-run {DATA_NOTEBOOK} to clean the data"
            ) from None


def _batches(it: Iterable[str], n: int, skip: int) -> Iterable[list[str]]:
    buf: list[str] = []
    for k, t in enumerate(it):
        if k < skip:
            continue
        buf.append(t)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def _pack_split(
    src: Path, tok: MiniTokenizer, tokens_dir: Path, split: str, chunk_docs: int, resume: bool, source_sha: str
) -> dict:
    from tqdm.auto import tqdm

    dtype = token_dtype(tok.vocab_size)
    final = tokens_dir / f"{split}.bin"
    partial = tokens_dir / f"{split}.bin.partial"
    state_path = tokens_dir / f"{split}.progress.json"
    ident = {"tokenizer_sha256": tok.sha256, "source_sha256": source_sha, "dtype": dtype.name}

    done = {"num_docs": 0, "num_tokens": 0, "num_chars": 0, "num_bytes": 0}
    if resume and state_path.is_file() and partial.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            state = {}
        on_disk = partial.stat().st_size
        if all(state.get(k) == v for k, v in ident.items()) and on_disk >= int(state.get("num_tokens", 0)) * dtype.itemsize:
            done = {k: int(state[k]) for k in done}
            logger.info("%s: resuming after %d documents (%d tokens)", split, done["num_docs"], done["num_tokens"])
        else:
            logger.info("%s: progress file is for another tokenizer/source; starting over", split)

    n_docs_total = count_lines(src)
    with open(partial, "ab" if done["num_docs"] else "wb") as f:
        # Drop a chunk that was half written when the previous run stopped.
        f.truncate(done["num_tokens"] * dtype.itemsize)
        f.seek(0, os.SEEK_END)
        bar = tqdm(total=n_docs_total, initial=done["num_docs"], desc=f"pack {split}", unit="doc")
        try:
            for texts in _batches(iter_texts(src), chunk_docs, skip=done["num_docs"]):
                try:
                    arr = _encode_chunk(tok, texts, dtype)
                except Exception:
                    _raise_bad_text(src, texts, done["num_docs"])
                    raise
                _write_chunk(f, arr)
                done["num_docs"] += len(texts)
                done["num_tokens"] += int(arr.size)
                done["num_chars"] += sum(len(t) for t in texts)
                done["num_bytes"] += sum(len(t.encode("utf-8")) for t in texts)
                atomic_write_text(state_path, json.dumps({**ident, **done}))
                bar.update(len(texts))
        finally:
            bar.close()
    os.replace(partial, final)
    state_path.unlink(missing_ok=True)
    return {"file": final.name, **done, "source": str(src), "source_sha256": source_sha}


def pack_corpus(
    data_dir: str | os.PathLike,
    tok: MiniTokenizer,
    tokens_dir: str | os.PathLike,
    chunk_docs: int = 4096,
    resume: bool = True,
    splits: Sequence[str] = SPLITS,
) -> dict:
    """Encode ``data_dir/{split}.jsonl`` to ``tokens_dir/{split}.bin`` and write ``meta.json``.

    Splits already packed with the same tokenizer and the same source bytes are kept as they
    are (when ``resume``); an interrupted split continues where it stopped.
    """
    if chunk_docs < 1:
        raise ValueError(f"chunk_docs: expected an int >= 1, got {chunk_docs!r}")
    data_dir, tokens_dir = Path(data_dir), Path(tokens_dir)
    srcs = {s: require_file(data_dir / f"{s}.jsonl") for s in splits}
    tokens_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    header = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "doc_separator": DOC_SEPARATOR,
        "tokenizer_sha256": tok.sha256,
        "tokenizer_path": tok.source,
        # text normalisation of the data and of the tokenizer's training text (1 = not recorded)
        VERSION_KEY: data_version(data_dir),
        "tokenizer_" + VERSION_KEY: tok.normalize_version,
    }
    check_same_version(tok.normalize_version, header[VERSION_KEY], str(tok.source), str(data_dir))
    meta = {**header, "splits": _reusable_splits(tokens_dir, tok, dtype)}

    t0 = time.perf_counter()
    for split, src in srcs.items():
        sha = file_sha256(src)
        prev = meta["splits"].get(split)
        f = tokens_dir / f"{split}.bin"
        if (
            resume and prev and prev.get("source_sha256") == sha and f.is_file()
            and f.stat().st_size == prev["num_tokens"] * dtype.itemsize
        ):
            logger.info("%s: %s is up to date (%d tokens); skipping", split, f, prev["num_tokens"])
            continue
        meta["splits"][split] = _pack_split(src, tok, tokens_dir, split, chunk_docs, resume, sha)
        # Record each finished split at once, so a stop during the next split keeps this one.
        atomic_write_text(tokens_dir / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2))
    atomic_write_text(tokens_dir / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2))
    logger.info(
        "packed %s in %.1fs: %s", tokens_dir, time.perf_counter() - t0,
        ", ".join(f"{s}={m['num_tokens']:,} tokens" for s, m in meta["splits"].items()),
    )
    return meta


def _reusable_splits(tokens_dir: Path, tok: MiniTokenizer, dtype: np.dtype) -> dict:
    """The splits of an existing meta.json written with this tokenizer and dtype (else none)."""
    old: dict = {}
    if (tokens_dir / "meta.json").is_file():
        try:
            old = read_meta(tokens_dir)
        except ValueError:
            old = {}
    same_tok = old.get("tokenizer_sha256") == tok.sha256 and old.get("dtype") == dtype.name
    return dict(old.get("splits", {})) if same_tok else {}


def read_meta(tokens_dir: str | os.PathLike) -> dict:
    p = Path(tokens_dir)
    f = p if p.name == "meta.json" else p / "meta.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: run notebooks/02_tokenizer first to write the token files")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: invalid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{f}: expected a JSON object, got {type(meta).__name__}")
    for key in ("dtype", "vocab_size", "tokenizer_sha256", "splits"):
        if key not in meta:
            raise ValueError(f"{f}: missing key {key!r}")
    vocab = meta["vocab_size"]
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        raise ValueError(f"{f}: vocab_size {vocab!r}; expected a positive integer")
    if not isinstance(meta["splits"], dict):
        raise ValueError(f"{f}: splits: expected a mapping of split name to file entry")
    dt = unsigned_dtype(meta["dtype"], f)
    if vocab > np.iinfo(dt).max + 1:
        raise ValueError(f"{f}: vocab_size {vocab} does not fit in dtype {dt.name}; expected uint32 above 65536")
    return meta


def unsigned_dtype(name: Any, where: Path) -> np.dtype:
    """The numpy dtype a token file's meta.json names: an unsigned integer of 16 bits or more."""
    try:
        dt = np.dtype(name)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "u" or dt.itemsize < 2:
        raise ValueError(f"{where}: dtype {name!r} is not a token dtype; token files are uint16 or uint32 (unsigned integers)")
    return dt


def check_token_ids(arr: np.ndarray, vocab_size: int, path: Path, chunk: int = 1 << 24) -> None:
    """Every id of a token file is < vocab_size (and >= 0), read once in chunks; the error names the first bad one."""
    for start in range(0, len(arr), chunk):
        block = np.asarray(arr[start:start + chunk])
        if block.size and (int(block.max()) >= vocab_size or int(block.min()) < 0):
            bad = np.flatnonzero((block >= vocab_size) | (block < 0))[0]
            raise ValueError(f"{path}: token id {int(block[bad])} at position {start + int(bad)} is outside the "
                             f"vocabulary (0..{vocab_size - 1}); re-run notebooks/02_tokenizer to re-pack the tokens")


def _split_entry(meta_path: Path, split: str, entry: Any) -> tuple[str, int]:
    """(file name, token count) of a split's entry in meta.json; the file must be a name inside the folder."""
    if not isinstance(entry, dict):
        raise ValueError(f"{meta_path}: splits.{split}: expected an object with file and num_tokens, got {entry!r}")
    name, n = entry.get("file"), entry.get("num_tokens")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"{meta_path}: splits.{split}.file {name!r}: expected a file name inside {meta_path.parent}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{meta_path}: splits.{split}.num_tokens {n!r}: expected a whole number >= 0")
    return name, n


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"{path}: size {size} bytes is not a multiple of {dtype.name} ({dtype.itemsize} bytes)")
    if size == 0:  # np.memmap can't map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def load_tokens(
    tokens_dir: str | os.PathLike,
    split: str = "train",
    tokenizer: MiniTokenizer | None = None,
    dtype: str | None = None,
) -> np.ndarray:
    """Memory-map a token file (read-only).

    ``tokens_dir`` is a folder with ``meta.json`` (minigpt's own files), or a folder / path with
    ``{split}.npy`` (``np.save`` of an int array) or a raw ``{split}.bin`` (then pass ``dtype``).
    With ``tokenizer`` given, files whose recorded tokenizer hash differs are refused.
    """
    p = Path(tokens_dir)
    if p.is_dir() and (p / "meta.json").is_file():
        return _load_packed(p, split, tokenizer, dtype)
    return _load_foreign(p, split, tokenizer, dtype)


def _load_packed(p: Path, split: str, tokenizer: MiniTokenizer | None, dtype: str | None) -> np.ndarray:
    """A split of minigpt's own token files, checked against meta.json (and the tokenizer's hash)."""
    meta = read_meta(p)
    if split not in meta["splits"]:
        raise KeyError(f"{p / 'meta.json'}: no split {split!r} (have {sorted(meta['splits'])})")
    name, num_tokens = _split_entry(p / "meta.json", split, meta["splits"][split])
    path = p / name
    if tokenizer is not None and meta["tokenizer_sha256"] != tokenizer.sha256:
        raise TokenizerMismatchError(
            f"{path} was made by tokenizer sha256 {meta['tokenizer_sha256'][:16]}… "
            f"(from {meta.get('tokenizer_path')}, vocab {meta['vocab_size']}), but the tokenizer in use "
            f"is sha256 {tokenizer.sha256[:16]}… (from {tokenizer.source}, vocab {tokenizer.vocab_size}); "
            f"re-run notebooks/02_tokenizer to re-pack the tokens with this tokenizer"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (listed in {p / 'meta.json'}): re-run notebooks/02_tokenizer")
    dt = unsigned_dtype(meta["dtype"], p / "meta.json")
    if dtype is not None and np.dtype(dtype) != dt:
        raise ValueError(f"{path}: dtype={dtype} given but meta.json says {dt.name}")
    arr = _memmap(path, dt)
    if arr.size != num_tokens:
        raise ValueError(f"{path}: {arr.size} tokens on disk but meta.json says {num_tokens} (truncated?)")
    vocab = min(meta["vocab_size"], tokenizer.vocab_size) if tokenizer is not None else meta["vocab_size"]
    check_token_ids(arr, vocab, path)
    return arr


def _load_foreign(p: Path, split: str, tokenizer: MiniTokenizer | None, dtype: str | None) -> np.ndarray:
    """Token files without meta.json: a ``.npy`` array or a raw ``.bin`` of ``dtype``."""
    if p.is_dir():
        cands = [p / f"{split}.npy", p / f"{split}.bin"]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{p}: no meta.json, {split}.npy or {split}.bin: run notebooks/02_tokenizer first")
        path = found[0]
    elif p.is_file():
        path = p
    else:
        raise FileNotFoundError(f"{p} not found: run notebooks/02_tokenizer first")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: expected a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    else:
        if dtype is None:
            raise ValueError(f"{path}: raw token file without meta.json: pass dtype='uint16' or 'uint32'")
        dt = np.dtype(dtype)
        if not np.issubdtype(dt, np.integer):
            raise ValueError(f"dtype={dtype!r}: expected an integer dtype such as 'uint16' or 'uint32'")
        arr = _memmap(path, dt)
    if tokenizer is not None and arr.size:
        # No recorded hash to compare: at least every id must exist in this tokenizer.
        try:
            check_token_ids(arr, tokenizer.vocab_size, path)
        except ValueError as e:
            raise TokenizerMismatchError(f"{e} (the tokenizer in use has vocab {tokenizer.vocab_size})") from None
        logger.warning("%s has no meta.json: can't verify which tokenizer made it", path)
    return arr
