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
    assert res["rollout"]["minigpt"]["generated_tokens"] == res["rollout"]["hf"]["generated_tokens"] == 8 * 4 * 8
    assert res["rollout"]["ratio"] > 0
    assert "peak matmul" in r.stdout and "training step" in r.stdout and "rollouts for RL" in r.stdout


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


def test_train_rows_name_the_peak_of_their_dtype(monkeypatch):
    """bench_train: a bf16 row's MFU is against the bf16 peak, an fp32 row's against the fp32 peak, and each ratio
    to HF compares rows of one dtype."""
    from minigpt.bench import train as bench_train_module

    calls = []

    def fake_case(args, timeout):  # the subprocess's JSON, as train_step_case prints it
        preset, impl, comp, steps, warmup, dtype = args[1:]
        calls.append((impl, dtype))
        tps = {"float32": 1000.0, "bfloat16": 3000.0}[dtype] * (1.2 if impl == "minigpt" else 1.0)
        return _row(impl=impl, dtype=bench_train_module.DTYPES[dtype], tokens_per_s=tps, gflops=tps / 10,
                    tokens_per_s_best=tps)

    monkeypatch.setattr(bench_train_module, "_subprocess_json", fake_case)
    rows = bench_train_module.bench_train(["tiny"], [False], 2, 1, {"fp32": 250.0, "bf16": 2000.0},
                                          dtypes=("float32", "bfloat16"))
    assert calls == [("minigpt", "float32"), ("hf", "float32"), ("minigpt", "bfloat16"), ("hf", "bfloat16")]
    by = {(r["impl"], r["dtype"]): r for r in rows}
    assert by[("minigpt", "fp32")]["peak_gflops"] == 250.0 and by[("minigpt", "fp32")]["mfu"] == 120.0 / 250.0
    assert by[("minigpt", "bf16")]["peak_gflops"] == 2000.0 and by[("minigpt", "bf16")]["mfu"] == 360.0 / 2000.0
    assert by[("minigpt", "bf16")]["vs_hf"] == pytest.approx(1.2) and by[("minigpt", "fp32")]["vs_hf_eager"] == pytest.approx(1.2)
    from minigpt.bench import format_table

    text = format_table({"peaks": {"fp32": {"gflops": 250.0, "dtype": "float32"}, "bf16": {"gflops": 2000.0, "dtype": "bfloat16"}},
                         "train": rows})
    assert "2,000.0 GFLOP/s (bfloat16" in text and "250.0 GFLOP/s (float32" in text
    bf16_line = next(l for l in text.splitlines() if l.startswith("  tiny") and "minigpt" in l and " bf16 " in l)
    assert "bf16 2,000" in bf16_line and "18%" in bf16_line


def test_memory_lines_show_each_setting_and_the_loss_check():
    from minigpt.bench import format_table

    rows = [{"preset": "medium", "dtype": "float32", "batch": 8, "seq": 1024, "setting": s, "chunked_loss": c,
             "activation_checkpointing": a, "peak_rss_mb": rss, "estimate_mb": est, **extra}
            for s, c, a, rss, est, extra in (("before", False, False, 11000.0, 10900.0, {}),
                                             ("after", True, True, 3100.0, 3200.0, {"max_loss_diff": 3e-6}))]
    rows.append({"preset": "medium", "setting": "before", "requested_dtype": "bfloat16", "error": "refused: needs 12 GB"})
    lines = [l for l in format_table({"memory": rows}).splitlines() if l.startswith("  medium")]
    assert len(lines) == 3
    assert lines[0].split()[:4] == ["medium", "fp32", "8", "x"] and "11000" in lines[0]
    assert "3100" in lines[1] and "3.0e-06" in lines[1] and "refused: needs 12 GB" in lines[2]


@pytest.mark.slow
def test_memory_case_losses_equal_before_and_after():
    """The bench's memory case on tiny in fp32: the memory switches leave the losses equal to 1e-5."""
    from minigpt.bench.train import memory_case

    before = memory_case("tiny", "float32", False, False, 2)
    after = memory_case("tiny", "float32", True, True, 2)
    assert len(before["losses"]) == 2 and before["dtype"] == "float32" and after["activation_checkpointing"] is True
    assert max(abs(a - b) for a, b in zip(before["losses"], after["losses"])) < 1e-5
    assert after["estimate_mb"] < before["estimate_mb"]


def test_rollout_bench_small_case_counts_every_token_on_both_sides():
    """The RL-rollout comparison on tiny, 8 skill prompts x 4 samples x 8 tokens: both sides make every row to the
    full length, the prompts differ in length (left padding), and the ratio is the quotient of the two speeds."""
    pytest.importorskip("transformers")
    from minigpt.bench import format_table
    from minigpt.bench.rollout import QUICK_ROLLOUT_CASE, bench_rollout

    r = bench_rollout("tiny", quick=True)
    P, G, N = (QUICK_ROLLOUT_CASE[k] for k in ("prompts", "group_size", "new_tokens"))
    assert (r["prompts"], r["group_size"], r["new_tokens"]) == (P, G, N) == (8, 4, 8)
    for side in ("minigpt", "hf"):
        assert r[side]["rows"] == P * G and r[side]["generated_tokens"] == P * G * N
        assert r[side]["tokens_per_s"] > 0 and len(r[side]["seconds"]) == 2
    assert r["ratio"] == pytest.approx(r["minigpt"]["tokens_per_s"] / r["hf"]["tokens_per_s"])
    assert r["prompt_tokens"][0] < r["prompt_tokens"][1] and r["backend"] == "native"
    text = format_table({"rollout": r})
    assert "rollouts for RL (tiny, 8 prompts x 4 samples x 8 new tokens" in text and f"{r['ratio']:.2f}x" in text


def test_rollout_minigpt_side_is_the_rl_sampling_call(monkeypatch):
    """minigpt's side repeats each prompt group_size times and samples with rollout_config (T 1.0, no top-k/top-p)."""
    from minigpt.bench.rollout import minigpt_rollouts

    class Gen:
        def generate_ids(self, prompts, cfg):
            self.prompts, self.cfg = prompts, cfg
            return [[7] * cfg.max_new_tokens for _ in prompts]

    gen = Gen()
    assert minigpt_rollouts(gen, [[1, 2], [3]], group_size=3, new_tokens=5, seed=4) == (6, 30)
    assert gen.prompts == [[1, 2]] * 3 + [[3]] * 3
    c = gen.cfg
    assert (c.do_sample, c.temperature, c.top_k, c.top_p, c.ignore_eos, c.seed) == (True, 1.0, 0, 1.0, True, 4)
