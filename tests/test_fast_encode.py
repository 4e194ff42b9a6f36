"""fast_encode.py: the native BPE encoder gives exactly tokenizers' ids; packing falls back cleanly and the token files do not change."""
from __future__ import annotations

import json
import logging
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from minigpt.data import packing as P
from minigpt.data.packing import pack_corpus
from minigpt.data.sources import review_paths
from minigpt.data.tokenizer import EOS_ID, TokenizerConfig, train_tokenizer
from minigpt.data.tokenizer import fast_encode as F
from minigpt import native as kernels

EDGE_CASES = [
    "", "a", "中", " ", "\n", "'", "😀",
    "word   spaced    words", "  leading", "trailing  ", "   ", " \t \n ",
    "tabs\tand\ttabs\t\tx", "line\nbreaks\n\nand\r\nwindows\r\n\r\nends\r", "\n\n\n文", " \u3000全角空格\u3000 x",
    "it's we're they'll I've I'm he'd don't", "IT'S WE'RE 'S 'T 'Re 'rE", "''s '''t 'x ' s '", "rock'n'roll 'll'll",
    "0123456789 12.5% 3,000 ½ Ⅻ ①②③ ٣٤ १२", "abc123def 中文123 x1y2", "mixed中文English日本語한국어Русский العربية",
    "全角标点，。！？；：“”‘’（）【】《》——……", "ＡＢＣ ｆｕｌｌ ｗｉｄｔｈ １２３",
    "emoji 😀👍🏽 👨‍👩‍👧 🇨🇳 astral 𝔘𝔫𝔦 𠀀𠀁 𝟘𝟙", "combining e\u0301 a\u0308\u0304 ก\u0e31 क\u094d\u0937 \u0301lead",
    "mark\ufdd0inside wo\ufdd0rd \ufdd0 \ufdd0\ufdd0", "\ufdd0", "a\ufdd0 \ufdd0b",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|pad|>", "control \x00\x01\x07\x1b[31m\x7f\x1c\x1d\x1e\x1f end",
    "spaces \u00a0nbsp \u2009thin \u200bzwsp \u2028ls \u2029ps \x85nel \x0b\x0c vt", "\u200d\ufeff\u00ad soft",
    "x" * 3000, "中" * 2000, " " * 500 + "y", "ab" * 1500 + "!" * 700, "a'" * 400,
]


def _docs(path: Path, limit: int | None = None) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return lines[:limit] if limit else lines


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    """Every document of the built-in product-review corpus (a few MB of Chinese text)."""
    return [d for p in review_paths() for d in _docs(p)]


@pytest.fixture(scope="module")
def tok(reviews):
    ascii_text = ["Hello, how are you today? It's a fine day; we're going to the park at 10:30."] * 50
    return train_tokenizer(reviews[::20] + ascii_text, TokenizerConfig(tokenizer_vocab_size=2000, min_frequency=2))


@pytest.fixture(scope="module")
def enc(tok):
    F._encoders.clear()
    e = F.fast_encoder(tok)
    if e is None:
        pytest.skip("the native BPE encoder could not be built here (no C compiler)")
    return e


def check_equal(enc, tok, texts: list[str]) -> None:
    got, want = enc.encode_batch(texts), tok.encode_batch(texts)
    bad = [(t, g, w) for t, g, w in zip(texts, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0][0][:80]!r}\n{bad[0][1][:30]}\n{bad[0][2][:30]}"
    assert len(got) == len(texts)


def check_pretokens(enc, texts: list[str]) -> int:
    """The kernel's pre-tokens equal ByteLevel's (a stricter check than ids, which a tiny vocabulary can
    leave equal across a wrong split); returns how many texts were safe to compare."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    n = 0
    for t in texts:
        t = t.replace("\ufdd0", "")
        got = enc.pretokenize(t)
        if got is not None:
            assert got == [t[a:b] for _, (a, b) in byte_level.pre_tokenize_str(t)], t[:80]
            n += 1
    return n


def test_builtin_reviews_encode_exactly_as_tokenizers(enc, tok, reviews):
    assert len(reviews) > 10_000
    check_equal(enc, tok, reviews)
    assert sum(map(len, tok.encode_batch(reviews[:100]))) < sum(len(r.encode()) for r in reviews[:100]) / 2  # merges ran


def test_edge_cases(enc, tok):
    check_equal(enc, tok, EDGE_CASES)
    assert check_pretokens(enc, EDGE_CASES) == len(EDGE_CASES)
    assert enc.encode_batch(["<|im_start|>"]) == [tok.encode("<|im_start|>")] and tok.im_start_id not in tok.encode("<|im_start|>")
    assert enc.encode_batch([]) == [] and enc.encode_batch([""]) == [[]]


def _fuzz_text(rng: random.Random) -> str:
    pools = [
        lambda: rng.choice("abcxyzABCXYZ0123456789"), lambda: chr(rng.randint(0x4E00, 0x9FFF)),
        lambda: rng.choice("，。！？、；：“”‘’（）.,!?;:'\"()-_/\\<>|@#$%^&*~`"), lambda: rng.choice(" \t\n\r\u3000\u00a0\x0b\x85"),
        lambda: rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", " '", "<|im_end|>", "\ufdd0"]),
        lambda: chr(rng.randint(0x20, 0x2FFF)), lambda: chr(rng.choice([rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])),
    ]
    weights = [30, 30, 12, 12, 6, 6, 4]
    return "".join(rng.choices(pools, weights)[0]() for _ in range(rng.randint(0, 40)))


def test_seeded_fuzz(enc, tok):
    rng = random.Random(1234)
    texts = [_fuzz_text(rng) for _ in range(4000)]
    check_equal(enc, tok, texts)
    assert check_pretokens(enc, texts) > 2000  # the rest hold an unassigned code point
    ids, counts = enc.encode_packed(texts)
    assert (counts >= 0).all() and ids.size == counts.sum()


def _probe_code_points() -> list[int]:
    """Every assigned code point below U+3400 and in U+A000..U+FFFF, and every 7th elsewhere."""
    cps = [*range(0x3400), *range(0xA000, 0x10000), *range(0x3400, 0xA000, 7), *range(0x10000, 0x110000, 7)]
    return [c for c in cps if unicodedata.category(chr(c)) not in ("Cn", "Cs")]


def test_pretokens_match_bytelevel_for_assigned_code_points(enc):
    """The kernel's classes (letter, number, space, other) of each code point agree with the regex engine
    of tokenizers: each one after a letter, a digit and a symbol, against ByteLevel's own split."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    cps = _probe_code_points()
    assert len(cps) > 60_000
    for start in range(0, len(cps), 8000):
        text = "".join(f"a{c}\n1{c}\n!{c}\n {c}  {c}" for c in map(chr, cps[start:start + 8000])) + " x"
        want = [text[a:b] for _, (a, b) in byte_level.pre_tokenize_str(text)]
        got = enc.pretokenize(text)
        assert got == want, next((g, w) for g, w in zip(got, want) if g != w)


def test_unassigned_code_point_goes_through_tokenizers(enc, tok):
    """U+1C89 is unassigned in Python's Unicode data but a letter in newer versions: the kernel can't vouch
    for its class, leaves the document to tokenizers, and the ids still match."""
    docs = ["前文 ok", "x\u1c89y 中文", "安全的文本", "\u0378 and \U000e0080 unassigned", ""]
    assert enc.pretokenize(docs[1]) is None and enc.pretokenize(docs[0]) == ["前文", " ok"]
    ids, counts = enc.encode_packed(docs, eos_id=EOS_ID, dtype=np.uint16)
    want = tok.encode_batch(docs)
    assert counts.tolist() == [len(w) for w in want]
    assert ids.tolist() == [i for w in want for i in [EOS_ID, *w]] and ids.dtype == np.uint16


def test_thread_count_does_not_change_ids(tok, reviews):
    one, two = F.FastEncoder(tok, n_threads=1), F.FastEncoder(tok, n_threads=2)
    docs = reviews[:3000]
    a, b = one.encode_packed(docs, eos_id=EOS_ID), two.encode_packed(docs, eos_id=EOS_ID)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[0].dtype == np.uint32


def _write_split(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_packed_files_are_byte_identical_with_and_without_the_native_path(enc, tok, reviews, tmp_path, monkeypatch,
                                                                           caplog):
    data = tmp_path / "data"
    _write_split(data / "train.jsonl", reviews[:1500] + EDGE_CASES + ["x\u1c89y unsafe"])
    _write_split(data / "val.jsonl", reviews[-200:])
    calls = []
    real = F.FastEncoder.encode_packed

    def counted(self, *args, **kwargs):
        calls.append(len(args[0]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(F.FastEncoder, "encode_packed", counted)
    pack_corpus(data, tok, tmp_path / "native", chunk_docs=256)
    assert calls, "the native encoder was not used"

    monkeypatch.setenv(F.OPT_OUT_ENV, "1")
    calls.clear()
    with caplog.at_level(logging.INFO, logger=F.__name__):
        pack_corpus(data, tok, tmp_path / "optout", chunk_docs=256)
    assert not calls and "MINIGPT_NO_NATIVE is set" in caplog.text

    monkeypatch.delenv(F.OPT_OUT_ENV)
    monkeypatch.setattr(F, "_encoders", {})
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    monkeypatch.setattr(F, "load_library", F.load_library.__wrapped__)  # no cached build: must compile, and can't
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=F.__name__):
        pack_corpus(data, tok, tmp_path / "nocc", chunk_docs=256)
    assert not calls and "no C compiler found" in caplog.text

    native = _files(tmp_path / "native")
    assert set(native) == {"meta.json", "train.bin", "val.bin"}
    assert native == _files(tmp_path / "optout") == _files(tmp_path / "nocc")
    assert P.load_tokens(tmp_path / "native", "train", tokenizer=tok).size == json.loads(native["meta.json"])["splits"]["train"]["num_tokens"]



def test_unsupported_tokenizer_is_refused(tok):
    from tokenizers import Tokenizer, pre_tokenizers

    other = Tokenizer.from_str(tok.backend.to_str())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    cfg = json.loads(other.to_str())
    with pytest.raises(F.UnsupportedTokenizer, match="pre_tokenizer"):
        F._check_pipeline(cfg)
    F._check_pipeline(json.loads(tok.to_json()))
    cut = json.loads(tok.to_json())
    cut["truncation"] = {"max_length": 8, "stride": 0, "strategy": "LongestFirst", "direction": "Right"}
    with pytest.raises(F.UnsupportedTokenizer, match="truncation"):
        F._check_pipeline(cut)
