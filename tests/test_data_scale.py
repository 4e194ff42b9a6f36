"""Corpora of a gigabyte, at tiny sizes: the generated corpus and its truth, cleaning with worker processes
(identical output), verified near dedup (recall and precision against the truth), resume after SIGKILL,
and the tokenizer's sampling of a large corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt.bench.corpus import CorpusSpec, dedup_scores, edit_text, generate_corpus, read_truth, truth_path_for
from minigpt.data.clean import CleanConfig, MinHashLSH, dedup_key, run_cleaning
from minigpt.data.clean import pipeline
from minigpt.data.clean.dedup import lsh_verified_params, verify_margin
from minigpt.data.clean.near import NearDedup
from minigpt.data.tokenizer import TokenizerConfig
from minigpt.data.tokenizer.corpus import line_sampled
from minigpt.data.tokenizer.training import training_texts

ROOT = Path(__file__).resolve().parents[1]


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in pipeline.OUTPUTS.values()}


def _comparable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("elapsed_s", "mb_per_s", "config")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pretrain.jsonl"
    generate_corpus(path, CorpusSpec(size_mb=2.0, seed=1))
    with open(path, "ab") as f:  # malformed lines: the reader's rejects are part of every comparison
        f.write(b'{"text": "a\x00b"}\n\xff\xfe\n{"text": 5}\n')
    return path


def test_generator_is_deterministic_and_its_truth_is_right(tmp_path):
    spec = CorpusSpec(size_mb=0.5, seed=7)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    counts = generate_corpus(a, spec)
    generate_corpus(b, spec)
    assert a.read_bytes() == b.read_bytes() and truth_path_for(a).read_bytes() == truth_path_for(b).read_bytes()
    assert not list(tmp_path.glob("*.partial"))
    assert 0.5e6 <= a.stat().st_size < 0.5e6 + 60_000 and counts["bytes"] == a.stat().st_size
    texts = [json.loads(ln)["text"] for ln in a.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == counts["lines"]
    truth = read_truth(truth_path_for(a))
    assert len(truth) == counts["exact"] + counts["near"]
    # injected at the spec's rates (3% each), give or take the sampling noise of ~450 lines
    assert 0.01 < counts["exact"] / counts["lines"] < 0.06 and 0.01 < counts["near"] / counts["lines"] < 0.06
    for line, (kind, of) in truth.items():
        assert of < line and of not in truth  # a duplicate always copies an earlier original
        if kind == "exact":
            assert texts[line - 1] == texts[of - 1]
        else:
            assert texts[line - 1] != texts[of - 1]
    originals = [t for i, t in enumerate(texts, 1) if i not in truth]
    assert len(set(originals)) >= len(originals) - 2  # recombined originals are (nearly always) distinct
    short = [t for t in originals if len(t) < 200]
    assert len(short) > 0.15 * len(originals)  # short documents are part of the mix
    assert generate_corpus(tmp_path / "c.jsonl", CorpusSpec(size_mb=0.5, seed=8))["lines"] > 0
    assert (tmp_path / "c.jsonl").read_bytes() != a.read_bytes()


def test_edit_text_applies_the_stated_number_of_edits():
    import random

    rng = random.Random(0)
    text = "中华人民共和国" * 30
    out, n = edit_text(rng, text, 0.01, "甲乙丙")
    assert n == 2 and out != text and abs(len(out) - len(text)) <= 2
    assert edit_text(rng, "短文本", 0.01, "甲")[1] == 1  # at least one edit


def test_lsh_verified_params_find_pairs_at_the_threshold():
    for t in (0.7, 0.8, 0.9):
        b, r = lsh_verified_params(128, t)
        assert b * r <= 128
        bar = t - verify_margin(128, t)
        assert 1 - (1 - bar ** r) ** b >= 0.99  # a pair at the verification bar is a candidate
    assert lsh_verified_params(128, 0.8) == (14, 4)


def test_verification_rejects_dissimilar_candidates():
    rng = np.random.default_rng(0)

    def doc(n: int) -> str:
        return "".join(chr(0x4E00 + int(x)) for x in rng.integers(0, 3000, size=n))

    base = doc(600)
    close = base[:300] + "乙" + base[301:]  # one substitution: Jaccard ~0.98
    half = base[:300] + doc(300)  # Jaccard ~0.33
    lsh = MinHashLSH(128, 0.8, 5)
    sig = lsh.signatures([base, close, half])
    sk = lsh.sketch(sig)
    assert sk.dtype == np.uint8 and sk.shape == (3, 128)
    assert lsh.similarity(sk[0], sk[1]) > 0.9 and lsh.similarity(sk[0], sk[2]) < 0.5
    near = NearDedup(lsh)
    near.start_batch(lsh.band_keys(sig[:1]), sk[:1])
    near.keep(0, 11)
    near.end_batch({k: open(os.devnull, "wb") for k in ("lsh", "lsh_sketch", "lsh_where", "lsh_exact", "lsh_exact_len")})
    near.start_batch(lsh.band_keys(sig[1:]), sk[1:])
    assert near.duplicate_of(0) == 11  # the close copy, found through the table and verified
    assert near.duplicate_of(1) == 0  # the half copy shares bands now and then but fails verification


def test_exact_jaccard_by_hand():
    from minigpt.data.clean.dedup import exact_jaccard

    # 6 characters: 2-character shingles {ab bc cd de ef} against {ab bc cd de eg}: 4 shared of 6
    assert exact_jaccard("abcdef", "abcdeg", 5) == pytest.approx(4 / 6)
    assert exact_jaccard("abc", "abc", 5) == 1.0
    # 47 characters take 2-grams, 48 take 3-grams: different sizes share nothing (as in MinHash)
    assert exact_jaccard("a" * 47, "a" * 48, 5) == 0.0


def test_short_documents_are_compared_exactly(tmp_path):
    """A short pair below the threshold that the sketch estimate would pass is kept; one above is flagged."""
    rng = np.random.default_rng(7)
    base = "".join(chr(0x4E00 + int(x)) for x in rng.integers(0, 3000, size=100))

    def edit(positions: list[int]) -> str:
        return "".join("乙" if i in positions else c for i, c in enumerate(base))

    lsh = MinHashLSH(128, 0.8, 5)
    from minigpt.data.clean.dedup import exact_jaccard

    three, one = edit([37, 62, 65]), edit([50])
    sig = lsh.signatures([base, three])
    assert (lsh.band_keys(sig)[0] == lsh.band_keys(sig)[1]).any()  # an LSH candidate
    assert lsh.similarity(lsh.sketch(sig)[0], lsh.sketch(sig)[1]) >= lsh.accept  # the estimate would flag it
    assert exact_jaccard(base, three, 5) == pytest.approx(0.761, abs=1e-3) and exact_jaccard(base, one, 5) > 0.8
    src = tmp_path / "short.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (base, three, one)),
                   encoding="utf-8")
    stats = run_cleaning(CleanConfig(data_files=[str(src)], progress=False), tmp_path / "out")
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(3, "near_duplicate")]
    assert f"{src}:1" in rejects[0]["detail"] and "exact for texts of up to 256 characters" in rejects[0]["detail"]
    assert stats["near_duplicates"] == 1


def test_workers_give_byte_identical_output(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "MIN_POOL_BYTES", 0)  # use the pool even on a small input
    cfg = dict(data_files=[str(corpus)], progress=False, checkpoint_every=1000)
    one = run_cleaning(CleanConfig(workers=1, **cfg), tmp_path / "w1")
    two = run_cleaning(CleanConfig(workers=2, **cfg), tmp_path / "w2")
    assert two["config"]["workers"] == 2
    assert _outputs(tmp_path / "w1") == _outputs(tmp_path / "w2")
    assert _comparable(one) == _comparable(two)
    assert one["near_duplicates"] > 0 and one["exact_duplicates"] > 0 and one["rejected"]["nul_byte"] == 1


def test_near_dedup_recall_and_precision_against_the_truth(corpus, tmp_path):
    run_cleaning(CleanConfig(data_files=[str(corpus)], progress=False), tmp_path / "out")
    scores = dedup_scores(truth_path_for(corpus), tmp_path / "out" / "rejects.jsonl", str(corpus))
    assert scores["near"]["injected"] > 30 and scores["exact"]["injected"] > 30
    assert scores["near"]["recall"] >= 0.95
    assert scores["near"]["precision"] >= 0.99
    assert scores["exact"]["recall"] == 1.0 and scores["exact"]["precision"] >= 0.99


def test_sigkill_mid_run_resumes_to_identical_output(tmp_path):
    """A real subprocess cleaning with two worker processes, killed by SIGKILL after its first checkpoints;
    the resumed output is byte-identical to an uninterrupted run."""
    corpus = tmp_path / "big.jsonl"
    generate_corpus(corpus, CorpusSpec(size_mb=6.0, seed=2))  # ~5000 lines: the kill lands well before the end
    script = (
        "import sys\n"
        "from minigpt.data.clean import CleanConfig, pipeline, run_cleaning\n"
        "pipeline.MIN_POOL_BYTES = 0\n"
        "run_cleaning(CleanConfig(data_files=[sys.argv[1]], progress=False, checkpoint_every=512, workers=2),"
        " sys.argv[2])\n"
    )
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script, str(corpus), str(out)], cwd=ROOT,
                            start_new_session=True, stderr=subprocess.DEVNULL)
    state_file = out / pipeline.STATE_FILE
    deadline = time.time() + 60
    line = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            state = json.loads(state_file.read_text())
            line = state.get("line", 0) if state.get("phase") == "running" else 0
        except (OSError, ValueError):
            line = 0
        if line >= 1024:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers
    proc.wait()
    assert line >= 1024, "the run finished before it could be killed mid-way"
    assert not (out / "train.jsonl").exists()  # nothing looks complete
    resumed = run_cleaning(CleanConfig(data_files=[str(corpus)], progress=False, checkpoint_every=512, workers=1),
                           out)
    full = run_cleaning(CleanConfig(data_files=[str(corpus)], progress=False), tmp_path / "full")
    assert _outputs(out) == _outputs(tmp_path / "full")
    assert _comparable(resumed) == _comparable(full)


def _data_dir(tmp_path: Path, n: int) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"第{i}篇文档，内容是编号{i * 7919 % 10007}的测试文本。"}, ensure_ascii=False) + "\n")
    return d


def test_tokenizer_train_mb_samples_the_whole_file_by_line_hash(tmp_path):
    d = _data_dir(tmp_path, 4000)
    size = (d / "train.jsonl").stat().st_size
    everything = list(training_texts(d, TokenizerConfig(tokenizer_train_mb=0)))
    assert len(everything) == 4000
    assert list(training_texts(d, TokenizerConfig(tokenizer_train_mb=1.0))) == everything  # file under the budget
    cfg = TokenizerConfig(tokenizer_train_mb=size / 4 / 1e6)
    sample = list(training_texts(d, cfg))
    assert sample == list(training_texts(d, cfg))  # deterministic
    assert 850 < len(sample) < 1150  # a quarter of the lines, give or take the hash's spread
    numbers = [int(t[1:t.index("篇")]) for t in sample]
    assert min(numbers) < 400 and max(numbers) > 3600  # spread over the whole file, not its first quarter
    assert numbers == sorted(numbers)  # in file order
    assert line_sampled(b"x", 1.0) and not line_sampled(b"x", 0.0)
    with pytest.raises(ValueError, match="tokenizer_train_mb"):
        TokenizerConfig(tokenizer_train_mb=-1).validate()


def test_workers_validation():
    with pytest.raises(ValueError, match="workers"):
        CleanConfig(workers=-1).validate()
    assert dedup_key("A b") == "ab"


def test_dedup_scores_counts_only_dissimilar_unexpected_flags_as_false_positives(tmp_path):
    a = "今天天气很好，我们一起去公园散步，看见很多人在跑步。"
    c = "会议讨论了明年的经济工作安排，提出了五项主要任务。"
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (a, a, a, c, a + "啊")),
                   encoding="utf-8")
    truth_path_for(src).write_text('{"line": 2, "kind": "exact", "of": 1, "edits": 0}\n'
                                   '{"line": 5, "kind": "near", "of": 1, "edits": 1}\n', encoding="utf-8")
    rej = tmp_path / "rejects.jsonl"
    rows = [(2, "exact_duplicate", f"same text (after cleaning) as {src}:1"),
            (3, "exact_duplicate", f"same text (after cleaning) as {src}:1"),  # identical by chance: right
            (4, "near_duplicate", f"near duplicate of {src}:1 (estimated ...)")]  # not similar: wrong
    rej.write_text("".join(json.dumps({"file": str(src), "line": ln, "reason": r, "detail": d}) + "\n"
                           for ln, r, d in rows), encoding="utf-8")
    s = dedup_scores(truth_path_for(src), rej, str(src))
    assert s["exact"] == {"injected": 1, "flagged": 2, "recall": 1.0, "not_injected": 1, "false_positives": 0,
                          "precision": 1.0}
    assert s["near"] == {"injected": 1, "flagged": 1, "recall": 0.0, "not_injected": 1, "false_positives": 1,
                         "precision": 0.0}
