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
