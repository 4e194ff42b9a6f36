"""`make bench` / `python -m minigpt.bench [--quick]`: one table, every comparison measured in the same run.

- peak: the machine's achieved fp32 (bf16 on CUDA) matmul FLOP/s from large square matmuls — the MFU denominator.
- train: tokens/s of a full training step (forward, backward, AdamW) for minigpt and for
  `transformers.LlamaForCausalLM` with identical dims, batch, sequence length and optimizer; eager and compiled.
  FLOPs per token = 6*N + 12*L*d*T (N = non-embedding parameters plus the LM head, PaLM appendix B), so
  achieved FLOP/s = tokens/s * FLOPs per token and MFU = achieved / peak. Each case runs in its own
  subprocess so its peak RSS is its own.
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
import resource
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


def train_step_case(preset: str, impl: str, compile_: bool, steps: int, warmup: int) -> dict[str, Any]:
    """Time `steps` full training steps in this process (called in a subprocess by `bench_train`)."""
    import torch

    from .config import ModelConfig
    from .devices import set_threads
    from .model import GPT
    from .trainer import flops_per_token, param_groups

    set_threads(0)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset)
    batch, seq = TRAIN_SHAPES[preset]
    model = GPT(cfg) if impl == "minigpt" else _hf_llama(cfg)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95))
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
    return {"preset": preset, "impl": impl, "compile": compile_, "batch": batch, "seq": seq,
            "step_s": median, "tokens_per_s": tps, "gflops": tps * fpt / 1e9, "warmup_s": warm_s,
            "params": cfg.num_params(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _subprocess_json(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "minigpt.bench", "--case", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"error": (r.stderr or r.stdout)[-500:]}
    return json.loads(lines[-1])


def bench_train(presets: list[str], compile_modes: list[bool], steps: int, warmup: int, peak_gflops: float,
                timeout: float = 900) -> list[dict[str, Any]]:
    rows = []
    for preset in presets:
        for comp in compile_modes:
            pair = {}
            for impl in ("minigpt", "hf"):
                res = _subprocess_json(["train", preset, impl, str(int(comp)), str(steps), str(warmup)], timeout)
                res.setdefault("preset", preset)
                res.setdefault("impl", impl)
                res.setdefault("compile", comp)
                if "gflops" in res:
                    res["mfu"] = res["gflops"] / peak_gflops
                pair[impl] = res
                rows.append(res)
            if "tokens_per_s" in pair["minigpt"] and "tokens_per_s" in pair["hf"]:
                pair["minigpt"]["vs_hf"] = pair["minigpt"]["tokens_per_s"] / pair["hf"]["tokens_per_s"]
    # the compile goal compares minigpt compiled against HF *eager*
    for preset in presets:
        hf_eager = next((r for r in rows if r["preset"] == preset and r["impl"] == "hf" and not r["compile"]
                         and "tokens_per_s" in r), None)
        for r in rows:
            if r["preset"] == preset and r["impl"] == "minigpt" and "tokens_per_s" in r and hf_eager:
                r["vs_hf_eager"] = r["tokens_per_s"] / hf_eager["tokens_per_s"]
    return rows


def bench_generation(presets: list[str], new_tokens: int, repeats: int) -> dict[str, Any]:
    """minigpt vs HF generate on the same randomly initialised model, exported once per preset."""
    import torch

    from .checkpoint import save_checkpoint
    from .config import ModelConfig
    from .export import export_hf
    from .generate import bench_generate
    from .model import GPT
    from .tokenizer import TokenizerConfig, train_tokenizer

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
    from .sources import peoples_daily_path, review_paths, strip_pos_tags

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
    from .clean import bench_clean
    from .packing import bench_tokenizer

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
    from .pretrain import build_pretrain_trainer

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
    from .plots import read_metrics

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


def format_table(results: dict[str, Any]) -> str:
    lines = []
    p = results.get("peak", {})
    lines.append(f"peak matmul: {p.get('gflops', 0):.1f} GFLOP/s ({p.get('dtype')}, {p.get('threads')} threads, {p.get('device')})")
    lines.append("")
    lines.append("training step          impl     compile  batch x seq   tokens/s   GFLOP/s    MFU   peak RSS MB  vs HF (same mode)  vs HF eager")
    for r in results.get("train", []):
        if "error" in r:
            lines.append(f"  {r['preset']:<20} {r['impl']:<8} {str(r['compile']):<8} ERROR {r['error'][-120:]!r}")
            continue
        lines.append(
            f"  {r['preset']:<20} {r['impl']:<8} {str(r['compile']):<8} {r['batch']:>3} x {r['seq']:<6} {r['tokens_per_s']:>9.0f} "
            f"{r['gflops']:>9.1f} {r.get('mfu', 0):>6.0%} {r['peak_rss_mb']:>12.0f}  "
            f"{(format(r['vs_hf'], '.2f') + 'x') if 'vs_hf' in r else '':>17}  {(format(r['vs_hf_eager'], '.2f') + 'x') if 'vs_hf_eager' in r else '':>11}")
    gen = results.get("generate", {})
    if gen:
        lines.append("")
        lines.append("generation (greedy)    batch   minigpt tok/s   HF tok/s   ratio")
        for preset, g in gen.items():
            for b, tps in g.get("minigpt", {}).items():
                hf = g.get("hf", {}).get(b)
                ratio = g.get("ratio", {}).get(b)
                lines.append(f"  {preset:<20} {b:>5} {tps:>15.0f} {hf or 0:>10.0f} {(format(ratio, '.2f') + 'x') if ratio else '':>7}")
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
                                       warmup=1 if quick else 3, peak_gflops=results["peak"]["gflops"])
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = run(args.quick, Path(args.out), set(filter(None, args.skip.split(","))))
    print(format_table(results))
    print(f"\nresults: {Path(args.out) / 'results.json'} ({results['total_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
