"""Token files: layout, meta, resume equality, tokenizer hash check, dtype selection, foreign files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from minigpt.data import packing as P
from minigpt.bench.text import bench_tokenizer
from minigpt.data.packing import TokenizerMismatchError, load_tokens, pack_corpus, read_meta, token_dtype
from minigpt.data.tokenizer import EOS_ID, MiniTokenizer, TokenizerConfig, train_tokenizer

WORDS = ["北京", "上海", "经济", "发展", "人民", "模型", "hello", "world", "data", "😀", "，", "。", " ", "\n"]


def make_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "data"
    train, val = make_docs(300, 0), make_docs(37, 1)
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "val.jsonl", val)
    return d, train, val


@pytest.fixture(scope="module")
def tok(corpus) -> MiniTokenizer:
    return train_tokenizer(corpus[1], TokenizerConfig(tokenizer_vocab_size=320))


def split_docs(tok: MiniTokenizer, arr: np.ndarray) -> list[str]:
    """Inverse of the layout: EOS d0 EOS d1 ..."""
    ids = arr.tolist()
    assert ids[0] == EOS_ID
    docs, cur = [], []
    for i in ids[1:]:
        if i == EOS_ID:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    return docs + [tok.decode(cur)]


def test_pack_layout_and_meta(corpus, tok, tmp_path):
    data, train, val = corpus
    meta = pack_corpus(data, tok, tmp_path / "tokens", chunk_docs=64)
    assert meta == read_meta(tmp_path / "tokens")
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    assert meta["tokenizer_sha256"] == tok.sha256 and meta["eos_id"] == EOS_ID
    for split, docs in (("train", train), ("val", val)):
        arr = load_tokens(tmp_path / "tokens", split, tokenizer=tok)
        assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
        m = meta["splits"][split]
        assert m["num_tokens"] == arr.size == len(docs) + sum(len(tok.encode(t)) for t in docs)
        assert m["num_docs"] == len(docs)
        assert m["num_chars"] == sum(len(t) for t in docs)
        assert m["num_bytes"] == sum(len(t.encode("utf-8")) for t in docs)
        assert len(m["source_sha256"]) == 64
        assert split_docs(tok, arr) == docs
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_resume_after_interruption_gives_identical_files(corpus, tok, tmp_path, monkeypatch):
    data = corpus[0]
    ref = pack_corpus(data, tok, tmp_path / "ref", chunk_docs=32)

    real = P._write_chunk
    calls = {"n": 0}

    def flaky(f, arr):
        calls["n"] += 1
        if calls["n"] == 4:  # die halfway through writing the 4th chunk
            f.write(arr.tobytes()[: arr.nbytes // 2 + 1])
            f.flush()
            raise KeyboardInterrupt("simulated interruption")
        real(f, arr)

    monkeypatch.setattr(P, "_write_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        pack_corpus(data, tok, tmp_path / "out", chunk_docs=32)
    assert not (tmp_path / "out" / "train.bin").exists()  # nothing half-done under the final name
    state = json.loads((tmp_path / "out" / "train.progress.json").read_text())
    assert state["num_docs"] == 96

    monkeypatch.setattr(P, "_write_chunk", real)
    resumed_chunks = {"n": 0}

    def counting(f, arr):
        resumed_chunks["n"] += 1
        real(f, arr)

    monkeypatch.setattr(P, "_write_chunk", counting)
    meta = pack_corpus(data, tok, tmp_path / "out", chunk_docs=32)
    assert resumed_chunks["n"] == (300 - 96 + 31) // 32 + (37 + 31) // 32  # only the rest was encoded
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert meta["splits"]["train"]["num_tokens"] == ref["splits"]["train"]["num_tokens"]
    assert {k: v for k, v in meta["splits"]["train"].items() if k != "source"} == {
        k: v for k, v in ref["splits"]["train"].items() if k != "source"
    }
    assert not list((tmp_path / "out").glob("*.partial")) and not list((tmp_path / "out").glob("*.progress.json"))


def test_up_to_date_splits_are_skipped(corpus, tok, tmp_path, monkeypatch):
    pack_corpus(corpus[0], tok, tmp_path / "t")
    monkeypatch.setattr(P, "_write_chunk", lambda f, a: (_ for _ in ()).throw(AssertionError("re-encoded")))
    pack_corpus(corpus[0], tok, tmp_path / "t")


def test_hash_check_refuses_other_tokenizer(corpus, tok, tmp_path):
    pack_corpus(corpus[0], tok, tmp_path / "t")
    other = train_tokenizer(corpus[2], TokenizerConfig(tokenizer_vocab_size=300))
    assert other.sha256 != tok.sha256
    with pytest.raises(TokenizerMismatchError, match=tok.sha256[:16]) as e:
        load_tokens(tmp_path / "t", "train", tokenizer=other)
    assert "02_tokenizer" in str(e.value) and other.sha256[:16] in str(e.value)
    assert load_tokens(tmp_path / "t", "val").size > 0  # no tokenizer given: no check


def test_dtype_selection(corpus, tok, tmp_path):
    assert token_dtype(6400) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32
    assert token_dtype(151_936) == np.uint32
    # A real vocab over 65536: pad the tokenizer with unused added tokens.
    from tokenizers import Tokenizer

    big = Tokenizer.from_str(tok.to_json())
    big.add_tokens([f"<unused_{i}>" for i in range(65536 - tok.vocab_size + 10)])
    btok = MiniTokenizer(big)
    assert btok.vocab_size > 65536
    meta = pack_corpus(corpus[0], btok, tmp_path / "big", splits=("val",))
    assert meta["dtype"] == "uint32"
    arr = load_tokens(tmp_path / "big", "val", tokenizer=btok)
    assert arr.dtype == np.uint32
    assert (tmp_path / "big" / "val.bin").stat().st_size == 4 * arr.size
    pack_corpus(corpus[0], tok, tmp_path / "small", splits=("val",))
    small = load_tokens(tmp_path / "small", "val")
    assert small.dtype == np.uint16 and np.array_equal(arr.astype(np.int64), small.astype(np.int64))


def test_foreign_npy_and_raw_bin(tok, tmp_path):
    ids = np.arange(0, 300, dtype=np.int32) % tok.vocab_size
    np.save(tmp_path / "train.npy", ids)
    a = load_tokens(tmp_path / "train.npy")
    assert isinstance(a, np.memmap) and np.array_equal(a, ids)
    assert np.array_equal(load_tokens(tmp_path, "train", tokenizer=tok), ids)  # folder + split
    ids.astype(np.uint32).tofile(tmp_path / "val.bin")
    with pytest.raises(ValueError, match="dtype"):
        load_tokens(tmp_path / "val.bin")
    assert np.array_equal(load_tokens(tmp_path / "val.bin", dtype="uint32"), ids)
    bad = np.array([0, 1, 10_000], dtype=np.uint16)
    bad.tofile(tmp_path / "bad.bin")
    with pytest.raises(TokenizerMismatchError, match="10000"):
        load_tokens(tmp_path / "bad.bin", dtype="uint16", tokenizer=tok)


def test_missing_inputs_are_clear(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="01_data_clean"):
        pack_corpus(tmp_path / "runs" / "x" / "data", tok, tmp_path / "tokens")
    with pytest.raises(FileNotFoundError, match="02_tokenizer"):
        read_meta(tmp_path / "tokens")
    with pytest.raises(FileNotFoundError, match="02_tokenizer"):
        load_tokens(tmp_path / "nothing", "train")


def test_truncated_file_is_refused(corpus, tok, tmp_path):
    pack_corpus(corpus[0], tok, tmp_path / "t", splits=("val",))
    f = tmp_path / "t" / "val.bin"
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        load_tokens(tmp_path / "t", "val")


def test_bench_tokenizer(corpus):
    out = bench_tokenizer(corpus[1][:100], vocab_size=300)
    assert out["train_seconds"] > 0 and out["encode_mb_per_s"] > 0
    assert out["n_tokens"] > 0 and out["vocab_size"] <= 300


def test_progress_from_another_tokenizer_is_discarded(corpus, tok, tmp_path, monkeypatch):
    data = corpus[0]
    other = train_tokenizer(corpus[2], TokenizerConfig(tokenizer_vocab_size=300))
    pack_corpus(data, other, tmp_path / "ref", chunk_docs=50)
    real = P._write_chunk
    calls = {"n": 0}

    def flaky(f, arr):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("stop")
        real(f, arr)

    monkeypatch.setattr(P, "_write_chunk", flaky)
    with pytest.raises(RuntimeError):
        pack_corpus(data, tok, tmp_path / "out", chunk_docs=50)
    monkeypatch.setattr(P, "_write_chunk", real)
    meta = pack_corpus(data, other, tmp_path / "out", chunk_docs=50)
    assert meta["tokenizer_sha256"] == other.sha256
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def test_invalid_unicode_document_is_named(tok, tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "val.jsonl", ["fine"])
    (d / "train.jsonl").write_text('{"text": "ok"}\n{"text": "bad \\ud800 surrogate"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.jsonl: document 2: not valid Unicode"):
        pack_corpus(d, tok, tmp_path / "tokens")
