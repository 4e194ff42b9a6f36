"""`python -m minigpt.bench --quick` runs and writes results.json (how fast is `make bench`'s job, not this test's)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minigpt.bench", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["quick"] is True and res["peak"]["gflops"] > 0
    train = {(t["preset"], t["impl"]): t for t in res["train"]}
    for impl in ("minigpt", "hf"):
        assert train[("tiny", impl)]["tokens_per_s"] > 0 and train[("tiny", impl)]["peak_rss_mb"] > 0
    assert train[("tiny", "minigpt")]["vs_hf"] > 0
    gen = res["generate"]["tiny"]
    assert set(map(str, gen["minigpt"])) == {"1", "8"} and all(v > 0 for v in gen["ratio"].values())
    assert res["text"]["tokenizer"]["encode_mb_per_s"] > 0 and res["text"]["clean"]["mb_per_s"] > 0
    assert "peak matmul" in r.stdout and "training step" in r.stdout


def _row(**kw):
    base = {"preset": "tiny", "impl": "minigpt", "compile": False, "batch": 8, "seq": 256, "step_s": 0.5, "step_s_min": 0.4,
            "tokens_per_s": 4096.0, "tokens_per_s_best": 5120.0, "gflops": 100.0, "mfu_local": 0.5, "local_peak_gflops": 200.0, "peak_rss_mb": 500.0}
    base.update(kw)
    return base


def test_merge_rounds_averages_step_times():
    from minigpt.bench.train import _merge_rounds

    merged = _merge_rounds([_row(), _row(step_s=1.0, step_s_min=0.8, tokens_per_s=2048.0, gflops=50.0, mfu_local=0.25,
                                          peak_rss_mb=600.0)])
    assert merged["step_s"] == 0.75 and merged["tokens_per_s"] == 8 * 256 / 0.75
    assert merged["rounds_tokens_per_s"] == [4096.0, 2048.0] and merged["peak_rss_mb"] == 600.0
    assert merged["mfu_local"] == 0.375
    assert merged["step_s_min"] == 0.4 and merged["tokens_per_s_best"] == 8 * 256 / 0.4
    assert _merge_rounds([{"error": "boom"}, _row()])["tokens_per_s"] == 4096.0
    assert "error" in _merge_rounds([{"error": "boom"}])


def test_format_table_shows_both_mfus():
    from minigpt.bench import format_table

    text = format_table({"peak": {"gflops": 250.0}, "train": [_row(mfu=0.4, vs_hf=1.1, vs_hf_best=1.2, vs_hf_eager_best=1.3)]})
    assert "MFU(local)" in text and "40%" in text and "50%" in text and "1.10x" in text
    assert "5120" in text and "1.20x, 1.30x" in text


def test_format_table_shows_every_generation_row():
    from minigpt.bench import format_table

    gen = {"tiny": {"minigpt": {1: 2000.0}, "hf": {1: 400.0}, "backend": {1: "native"}, "ratio": {1: 5.0},
                    "int8": {1: 3200.0}, "ratio_int8": {1: 8.0}, "model_step": {1: 600.0},
                    "sample": {1: 1500.0}, "hf_sample": {1: 300.0}, "ratio_sample": {1: 5.0}}}
    rows = [l.split() for l in format_table({"generate": gen}).splitlines() if l.startswith("  tiny")]
    assert [r[2:5] + r[-1:] for r in rows] == [["fp32", "native", "greedy", "5.00x"], ["int8", "native", "greedy", "8.00x"],
                                               ["fp32", "model", "greedy", "1.50x"], ["fp32", "native", "sampled", "5.00x"]]
