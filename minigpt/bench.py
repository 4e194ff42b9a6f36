"""`make bench` / `python -m minigpt.bench [--quick]`: one table, every comparison measured in the same run.

- peak: the machine's achieved fp32 (bf16 on CUDA) matmul FLOP/s from large square matmuls — the MFU denominator.
- train: tokens/s of a full training step (forward, backward, AdamW) for minigpt and for
  `transformers.LlamaForCausalLM` with identical dims, batch, sequence length and optimizer; eager and compiled.
  FLOPs per token = 6*N + 12*L*d*T (N = non-embedding parameters plus the LM head, PaLM appendix B), so
  achieved FLOP/s = tokens/s * FLOPs per token and MFU = achieved / peak. Each case runs in its own
  subprocess so its peak RSS is its own. The optimizer is the trainer's own (`trainer.build_optimizer`)
  for both. On a shared machine the load changes from minute to minute, so each case also measures the
  matmul peak right after its steps (`mfu_local` = achieved / that peak, taken under the same load), and
  full mode runs the eager pairs twice in the order minigpt, HF, HF, minigpt and reports the mean of the
  two medians (a load that drifts during the pair then weighs on both sides alike).
- `--profile PRESET` prints a torch.profiler table (CPU, top ops by self time) of one minigpt training step.
- generate: greedy decode tokens/s at batch 1 and 8 against HF `generate` on the exported model.
- tokenizer: encode MB/s and training time; clean: cleaning MB/s.
- time to quality (full mode): val bits per character after 10 minutes of `tiny` training, with a PNG curve.

Results go to runs/bench/results.json; `--quick` (< 3 minutes) only checks that everything runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRAIN_SHAPES = {  # batch x seq for the training-step comparison (issue 11's reference measurements)
    "tiny": (8, 256),
    "small": (4, 512),
}


def peak_flops(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    import torch

    from .devices import measure_peak_flops, pick_device

    dev = pick_device("auto")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    flops = measure_peak_flops(dev, dtype, n=n, repeats=repeats)
    return {"device": str(dev), "dtype": str(dtype).replace("torch.", ""), "n": n, "threads": torch.get_num_threads(),
            "gflops": flops / 1e9}


def _hf_llama(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
    )
    hf_cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_cfg)


def _train_setup(preset: str, impl: str, compile_: bool):
    """(model, step function, config, batch, seq) for one training-step case."""
    import torch

    from .config import ModelConfig, TrainConfig
    from .devices import set_threads
    from .model.gpt import GPT
    from .train.trainer import build_optimizer

    set_threads(0)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset)
    batch, seq = TRAIN_SHAPES[preset]
    model = GPT(cfg) if impl == "minigpt" else _hf_llama(cfg)
    model.train()
    # The trainer's optimizer (AdamW, decay on matrices only; fused where the trainer fuses), for both impls.
    opt = build_optimizer(model, TrainConfig(learning_rate=1e-4), torch.device("cpu"))
    fwd = model
    if compile_:
        fwd = torch.compile(model)
    x = torch.randint(0, cfg.vocab_size, (batch, seq))
    y = torch.randint(0, cfg.vocab_size, (batch, seq))

    def step():
        if impl == "minigpt":
            _, loss = fwd(x, y)
        else:
            loss = fwd(input_ids=x, labels=y).loss  # HF shifts labels itself; the work is the same
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step, cfg, batch, seq


def train_step_case(preset: str, impl: str, compile_: bool, steps: int, warmup: int) -> dict[str, Any]:
    """Time `steps` full training steps in this process (called in a subprocess by `bench_train`)."""
    import torch

    from .devices import measure_peak_flops, peak_rss_mb
    from .train.trainer import flops_per_token

    model, step, cfg, batch, seq = _train_setup(preset, impl, compile_)
    t_compile = time.perf_counter()
    for _ in range(warmup):
        step()
    warm_s = time.perf_counter() - t_compile
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    tps = batch * seq / median
    fpt = flops_per_token(cfg, seq)
    rss = peak_rss_mb()  # VmHWM: ru_maxrss would include the parent bench process (kept across fork+exec)
    # The matmul peak under this moment's load (the machine may be shared): MFU's denominator, measured alike.
    local_peak = measure_peak_flops(torch.device("cpu"), torch.float32, n=2048, repeats=3) / 1e9
    return {"preset": preset, "impl": impl, "compile": compile_, "batch": batch, "seq": seq,
            "step_s": median, "step_s_min": times[0], "step_s_max": times[-1], "tokens_per_s": tps,
            "tokens_per_s_best": batch * seq / times[0],
            "gflops": tps * fpt / 1e9, "warmup_s": warm_s, "local_peak_gflops": local_peak,
            "mfu_local": tps * fpt / 1e9 / local_peak, "params": cfg.num_params(), "peak_rss_mb": rss}


def profile_step(preset: str, impl: str = "minigpt", rows: int = 20) -> str:
    """A torch.profiler table (CPU activities, sorted by self time) of one training step after two warm-ups."""
    from torch.profiler import ProfilerActivity, profile

    _, step, _, _, _ = _train_setup(preset, impl, False)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _subprocess_json(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "minigpt.bench", "--case", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr or r.stdout)[-500:]}
    return json.loads(lines[-1])


def _merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs of a case: mean of the medians; the per-round tokens/s are kept."""
    ok = [r for r in runs if "tokens_per_s" in r]
    if not ok:
        return runs[-1]
    out = dict(ok[0])
    if len(ok) > 1:
        n = len(ok)
        out["step_s"] = sum(r["step_s"] for r in ok) / n
        out["tokens_per_s"] = out["batch"] * out["seq"] / out["step_s"]
        out["gflops"] = sum(r["gflops"] for r in ok) / n
        out["mfu_local"] = sum(r["mfu_local"] for r in ok) / n
        out["local_peak_gflops"] = sum(r["local_peak_gflops"] for r in ok) / n
        out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
        out["rounds_tokens_per_s"] = [r["tokens_per_s"] for r in ok]
        if all("step_s_min" in r for r in ok):
            out["step_s_min"] = min(r["step_s_min"] for r in ok)
            out["tokens_per_s_best"] = out["batch"] * out["seq"] / out["step_s_min"]
    return out


def bench_train(presets: list[str], compile_modes: list[bool], steps: int, warmup: int, peak_gflops: float,
                timeout: float = 900, eager_rounds: int = 1) -> list[dict[str, Any]]:
    rows = []
    for preset in presets:
        for comp in compile_modes:
            # minigpt, HF, HF, minigpt, ...: a load that drifts over the pair weighs on both alike.
            order = ["minigpt", "hf"]
            for i in range(1, 1 if comp else eager_rounds):
                order += ["hf", "minigpt"] if i % 2 else ["minigpt", "hf"]
            runs: dict[str, list[dict[str, Any]]] = {"minigpt": [], "hf": []}
            for impl in order:
                runs[impl].append(_subprocess_json(["train", preset, impl, str(int(comp)), str(steps), str(warmup)], timeout))
            pair = {}
            for impl in ("minigpt", "hf"):
                res = _merge_rounds(runs[impl])
                res.setdefault("preset", preset)
                res.setdefault("impl", impl)
                res.setdefault("compile", comp)
                if "gflops" in res:
                    res["mfu"] = res["gflops"] / peak_gflops
                pair[impl] = res
                rows.append(res)
            if "tokens_per_s" in pair["minigpt"] and "tokens_per_s" in pair["hf"]:
                pair["minigpt"]["vs_hf"] = pair["minigpt"]["tokens_per_s"] / pair["hf"]["tokens_per_s"]
                if "tokens_per_s_best" in pair["minigpt"] and "tokens_per_s_best" in pair["hf"]:
                    pair["minigpt"]["vs_hf_best"] = pair["minigpt"]["tokens_per_s_best"] / pair["hf"]["tokens_per_s_best"]
    # the compile goal compares minigpt compiled against HF *eager*
    for preset in presets:
        hf_eager = next((r for r in rows if r["preset"] == preset and r["impl"] == "hf" and not r["compile"]
                         and "tokens_per_s" in r), None)
        for r in rows:
            if r["preset"] == preset and r["impl"] == "minigpt" and "tokens_per_s" in r and hf_eager:
                r["vs_hf_eager"] = r["tokens_per_s"] / hf_eager["tokens_per_s"]
                if "tokens_per_s_best" in r and "tokens_per_s_best" in hf_eager:
                    r["vs_hf_eager_best"] = r["tokens_per_s_best"] / hf_eager["tokens_per_s_best"]
    return rows


def bench_generation(presets: list[str], new_tokens: int, repeats: int) -> dict[str, Any]:
    """minigpt vs HF generate on the same randomly initialised model, exported once per preset."""
    import torch

    from .train.checkpoint import save_checkpoint
    from .config import ModelConfig
    from .infer.export import export_hf
    from .infer.generate import bench_generate
    from .model.gpt import GPT
    from .data.tokenizer import TokenizerConfig, train_tokenizer

    out: dict[str, Any] = {}
    texts = _builtin_texts(2000)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts, TokenizerConfig(tokenizer_vocab_size=6400, min_frequency=2))
        tok.save(Path(tmp) / "tok")
        for preset in presets:
            torch.manual_seed(0)
            cfg = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size)
            model = GPT(cfg).eval()
            ck = Path(tmp) / preset
            save_checkpoint(ck, model, {"model": cfg.to_dict(), "tokenizer_sha256": tok.sha256}, tokenizer_dir=Path(tmp) / "tok")
            hf_dir = export_hf(ck, Path(tmp) / f"{preset}-hf")
            out[preset] = bench_generate(model, tok, hf_dir=hf_dir, new_tokens=new_tokens, repeats=repeats)
    return out


def _builtin_texts(limit: int) -> list[str]:
    """Raw built-in Chinese text (People's Daily with tags stripped, then reviews), one document a line."""
    from .data.sources import peoples_daily_path, review_paths, strip_pos_tags

    texts: list[str] = []
    for path, tagged in [(peoples_daily_path(), True)] + [(p, False) for p in review_paths()]:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                t = (strip_pos_tags(line) if tagged else line).strip()
                if t:
                    texts.append(t)
                if len(texts) >= limit:
                    return texts
    return texts


def bench_text_tools(quick: bool) -> dict[str, Any]:
    from .data.clean import bench_clean
    from .data.packing import bench_tokenizer

    texts = _builtin_texts(5000 if quick else 10 ** 9)
    return {"tokenizer": bench_tokenizer(texts, vocab_size=6400),
            "clean": bench_clean(n_mb=5 if quick else 50, near_dedup=False),
            "clean_near_dedup": bench_clean(n_mb=2 if quick else 10, near_dedup=True)}


def time_to_quality(minutes: float, out_dir: Path) -> dict[str, Any]:
    """Train `tiny` on the built-in corpus for `minutes` of wall clock; BPC against time, as a PNG."""
    from .demo import run_notebooks

    run_dir = out_dir / "ttq"
    run_notebooks("tiny", run_dir, notebooks=("01_data_clean", "02_tokenizer"))
    from .params import load_params
    from .train.pretrain import build_pretrain_trainer

    P = load_params("pretrain", {"config": "tiny", "run_dir": str(run_dir), "max_steps": 100000, "eval_interval": 25,
                                 "save_steps": 100000, "warmup_steps": 30, "plot_loss": False})
    trainer = build_pretrain_trainer(P)

    class Deadline:
        def __init__(self) -> None:
            self.t0 = time.perf_counter()

        def on_log(self, tr, rec):
            if time.perf_counter() - self.t0 > minutes * 60:
                tr.request_stop()

    trainer.callbacks.append(Deadline())
    trainer.fit()
    from .ui.plots import read_metrics

    evals = [r for r in read_metrics(trainer.metrics_path) if "val_bpc" in r]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["elapsed_s"] / 60 for r in evals], [r["val_bpc"] for r in evals], "o-")
    ax.set_xlabel("wall-clock minutes")
    ax.set_ylabel("val bits per character")
    ax.set_title(f"tiny on the built-in corpus ({minutes:g} min)")
    ax.grid(alpha=0.3)
    png = out_dir / "time_to_quality.png"
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    last = evals[-1] if evals else {}
    return {"minutes": minutes, "steps": trainer.step, "val_bpc": last.get("val_bpc"), "val_loss": last.get("val_loss"),
            "png": str(png)}


def _ratios(same: float | None, eager: float | None) -> str:
    return ", ".join(f"{v:.2f}x" for v in (same, eager) if v is not None)


def format_table(results: dict[str, Any]) -> str:
    lines = []
    p = results.get("peak")
    if p:
        lines.append(f"peak matmul: {p.get('gflops', 0):.1f} GFLOP/s ({p.get('dtype')}, {p.get('threads')} threads, {p.get('device')})")
    if results.get("train"):
        lines.append("")
        lines.append("training step          impl     compile  batch x seq   tokens/s   GFLOP/s    MFU  MFU(local)  peak RSS MB  vs HF (same mode)  vs HF eager"
                     "   best tok/s  best vs HF (same, eager)")
    for r in results.get("train", []):
        if "error" in r:
            lines.append(f"  {r['preset']:<20} {r['impl']:<8} {str(r['compile']):<8} ERROR {r['error'][-120:]!r}")
            continue
        lines.append(
            f"  {r['preset']:<20} {r['impl']:<8} {str(r['compile']):<8} {r['batch']:>3} x {r['seq']:<6} {r['tokens_per_s']:>9.0f} "
            f"{r['gflops']:>9.1f} {r.get('mfu', 0):>6.0%} {r.get('mfu_local', 0):>10.0%} {r['peak_rss_mb']:>12.0f}  "
            f"{(format(r['vs_hf'], '.2f') + 'x') if 'vs_hf' in r else '':>17}  {(format(r['vs_hf_eager'], '.2f') + 'x') if 'vs_hf_eager' in r else '':>11}"
            f"  {r.get('tokens_per_s_best', 0):>11.0f}  {_ratios(r.get('vs_hf_best'), r.get('vs_hf_eager_best')):>12}")
    gen = results.get("generate", {})
    if gen:
        lines.append("")
        lines.append("generation             batch  weights  decode step  decoding   minigpt tok/s   HF tok/s   ratio")
        for preset, g in gen.items():
            for b, tps in g.get("minigpt", {}).items():
                hf_b = g.get("hf", {}).get(b)
                step = g.get("backend", {}).get(b) or ""
                rows = [("fp32", step, "greedy", tps, hf_b, g.get("ratio", {}).get(b))]
                if b in g.get("int8", {}):
                    rows.append(("int8", step, "greedy", g["int8"][b], hf_b, g.get("ratio_int8", {}).get(b)))
                if b in g.get("torch_step", {}):
                    t = g["torch_step"][b]
                    rows.append(("fp32", "torch", "greedy", t, hf_b, t / hf_b if hf_b else None))
                if b in g.get("sample", {}):
                    rows.append(("fp32", step, "sampled", g["sample"][b], g.get("hf_sample", {}).get(b),
                                 g.get("ratio_sample", {}).get(b)))
                for weights, kind, mode, t, hf, ratio in rows:
                    lines.append(f"  {preset:<20} {b:>5}  {weights:<7}  {kind:<11}  {mode:<8} {t:>15.0f} "
                                 f"{hf or 0:>10.0f} {(format(ratio, '.2f') + 'x') if ratio else '':>7}")
            if g.get("fp32_read_floor"):
                hf1 = g.get("hf", {}).get(1)
                lines.append(f"  {preset:<20} batch-1 fp32 ceiling, estimated (one read of the weights a token): "
                             f"{g['fp32_read_floor']:.0f} tok/s" + (f" = {g['fp32_read_floor'] / hf1:.2f}x HF" if hf1 else ""))
        from .infer.generate import BENCH_SAMPLING

        lines.append("  (sampled: " + ", ".join(f"{k} {v}" for k, v in BENCH_SAMPLING.items()) + " in both libraries)")
    tools = results.get("text", {})
    if tools:
        t = tools["tokenizer"]
        lines.append("")
        lines.append(f"tokenizer: train {t.get('train_seconds', 0):.1f}s (vocab 6400, {t.get('n_docs')} docs), encode {t.get('encode_mb_per_s', 0):.2f} MB/s")
        lines.append(f"cleaning: {tools['clean'].get('mb_per_s', 0):.1f} MB/s; with near-dup dedup {tools['clean_near_dedup'].get('mb_per_s', 0):.1f} MB/s")
    ttq = results.get("time_to_quality")
    if ttq:
        lines.append("")
        lines.append(f"time to quality: val {ttq['val_bpc']:.3f} bits/char after {ttq['minutes']:g} min ({ttq['steps']} steps) -> {ttq['png']}")
    if results.get("train"):
        lines.append("  (MFU: against the peak above; MFU(local): against a matmul peak measured in the case's own process"
                     " right after its steps, i.e. under the same machine load; tokens/s from the median step, best"
                     " tok/s from the fastest step: background load only ever adds time, so on a shared machine the"
                     " best step is the steadier estimate of the model's own speed)")
    return "\n".join(lines)


def run(quick: bool, out_dir: Path, skip: set[str]) -> dict[str, Any]:
    from .devices import set_threads

    set_threads(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"quick": quick, "machine": _machine()}
    results["peak"] = peak_flops(n=1024 if quick else 2048, repeats=3 if quick else 7)
    if "train" not in skip:
        presets = ["tiny"] if quick else ["tiny", "small"]
        results["train"] = bench_train(presets, [False] if quick else [False, True], steps=3 if quick else 8,
                                       warmup=1 if quick else 3, peak_gflops=results["peak"]["gflops"],
                                       eager_rounds=1 if quick else 2)
    if "generate" not in skip:
        results["generate"] = bench_generation(["tiny"] if quick else ["tiny", "small"], new_tokens=16 if quick else 64,
                                               repeats=1 if quick else 3)
    if "text" not in skip:
        results["text"] = bench_text_tools(quick)
    if not quick and "ttq" not in skip:
        results["time_to_quality"] = time_to_quality(10, out_dir)
    results["total_s"] = time.perf_counter() - t0
    tmp = out_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, out_dir / "results.json")
    return results


def _machine() -> dict[str, Any]:
    from .report import system_info

    return system_info()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--case"]:
        kind, *rest = argv[1:]
        if kind == "train":
            preset, impl, comp, steps, warmup = rest
            print(json.dumps(train_step_case(preset, impl, comp == "1", int(steps), int(warmup))))
            return 0
        raise SystemExit(f"unknown case {kind}")
    ap = argparse.ArgumentParser(prog="python -m minigpt.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a < 3 minute run that checks the bench works")
    ap.add_argument("--out", default="runs/bench", help="folder for results.json and PNGs")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: train,generate,text,ttq")
    ap.add_argument("--profile", metavar="PRESET", choices=sorted(TRAIN_SHAPES),
                    help="print a torch.profiler table of one minigpt training step of PRESET and exit")
    ap.add_argument("--profile-impl", default="minigpt", choices=["minigpt", "hf"], help="model for --profile")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.profile:
        print(profile_step(args.profile, args.profile_impl))
        return 0
    results = run(args.quick, Path(args.out), set(filter(None, args.skip.split(","))))
    print(format_table(results))
    print(f"\nresults: {Path(args.out) / 'results.json'} ({results['total_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
