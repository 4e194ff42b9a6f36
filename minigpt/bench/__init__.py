"""`make bench` / `python -m minigpt.bench [--quick]`: one table, every comparison measured in the same run.

- peaks: the CPU's achieved matmul FLOP/s from large square matmuls in fp32 and in the dtype `dtype=auto` picks
  there (bf16 on CPUs with AVX512-BF16/AMX) — each training row's MFU is against the peak of its own dtype.
- train: tokens/s of a full training step (forward, backward, AdamW) for minigpt and for
  `transformers.LlamaForCausalLM` with identical dims, batch, sequence length and optimizer; eager and compiled;
  in fp32 and in the auto dtype (autocast, both libraries alike).
- memory: peak RSS of two Trainer steps of `tiny` and `medium` at their documented batches, before (reference
  loss, all activations kept), with the chunked LM-head loss, and after (chunked loss + activation checkpointing),
  with the trainer's estimate beside it and the largest loss difference between before and after.
  FLOPs per token = 6*N + 12*L*d*T (N = non-embedding parameters plus the LM head, PaLM appendix B), so
  achieved FLOP/s = tokens/s * FLOPs per token and MFU = achieved / peak. Each case runs in its own
  subprocess so its peak RSS is its own. The optimizer is the trainer's own (`train.optim.build_optimizer`)
  for both. On a shared machine the load changes from minute to minute, so each case also measures the
  matmul peak right after its steps (`mfu_local` = achieved / that peak, taken under the same load), and
  full mode runs the eager pairs twice in the order minigpt, HF, HF, minigpt and reports the mean of the
  two medians (a load that drifts during the pair then weighs on both sides alike).
- `--profile PRESET` prints a torch.profiler table (CPU, top ops by self time) of one minigpt training step.
- generate: greedy decode tokens/s at batch 1 and 8 against HF `generate` on the exported model.
- rollout: RL's rollout sampling (`TextGenerator.generate_ids` as `train.rl.RolloutBatches` calls it: temperature
  1.0, no top-k/top-p, each prompt repeated group_size times, C step) against HF `generate` with
  `num_return_sequences`, on `tiny`: 64 skill chat prompts of different lengths (left-padded) x 8 samples x 16 new
  tokens (8 x 4 x 8 with `--quick`), every row forced to the full length; rollout tokens/s of each side, the mean
  over the order minigpt, HF, HF, minigpt after one warm-up each, and the ratio (minigpt/rollout.py).
- serve: `python -m minigpt.serve` on `tiny` with 8 concurrent streaming clients, against one client alone
  and a baseline server calling HF `generate` per request (aggregate tokens/s, time to first token,
  inter-token latency p50/p99, errors).
- tokenizer: encode MB/s and training time; clean: cleaning MB/s.
- corpus: a generated MiniMind-style pretrain.jsonl (1 GB; 50 MB with `--quick`; `--corpus-mb`) with injected
  duplicates (minigpt/bench/corpus.py), cached in runs/bench/corpus, through 01's cleaning (near dedup off
  and on) and 02's tokenizer training and encoding: MB/s, CPU s/MB, peak RSS of the process tree, and dedup
  recall and precision against the injected truth.
- time to quality (full mode): val bits per character after 10 minutes of `tiny` training, with a PNG curve.

Results go to runs/bench/results.json; `--quick` (< 3 minutes) only checks that everything runs.
"""
from __future__ import annotations

import json
import logging
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


from .table import format_table
from .train import DTYPES, TRAIN_SHAPES, bench_memory, bench_train, memory_case, profile_step, time_to_quality, train_step_case
from .generate import bench_generation
from .rollout import bench_rollout
from .text import bench_text_tools
from .serve import bench_serving


def train_dtypes() -> list[str]:
    """The dtypes the training rows run in: fp32, and the one `dtype=auto` picks on this machine's CPU."""
    import torch

    from ..devices import pick_dtype

    auto = str(pick_dtype("auto", torch.device("cpu"))[0]).replace("torch.", "")
    return ["float32"] + ([auto] if auto != "float32" else [])


def peak_flops(n: int = 2048, repeats: int = 5, dtype_name: str = "float32") -> dict[str, Any]:
    """The CPU's achieved matmul FLOP/s in `dtype_name` (the training rows run on the CPU)."""
    import torch

    from ..devices import measure_peak_flops

    dev, dtype = torch.device("cpu"), getattr(torch, dtype_name)
    flops = measure_peak_flops(dev, dtype, n=n, repeats=repeats)
    return {"device": str(dev), "dtype": str(dtype).replace("torch.", ""), "n": n, "threads": torch.get_num_threads(),
            "gflops": flops / 1e9}


def run(quick: bool, out_dir: Path, skip: set[str], corpus_mb: float | None = None) -> dict[str, Any]:
    from ..devices import set_threads

    set_threads(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"quick": quick, "machine": _machine()}
    dtypes = train_dtypes()
    # one matmul peak per dtype the training rows use: each row's MFU is against its own dtype's peak
    results["peaks"] = {DTYPES[d]: peak_flops(n=1024 if quick else 2048, repeats=3 if quick else 7, dtype_name=d)
                        for d in dtypes}
    results["peak"] = results["peaks"]["fp32"]
    if "train" not in skip:
        presets = ["tiny"] if quick else ["tiny", "small"]
        results["train"] = bench_train(presets, [False] if quick else [False, True], steps=3 if quick else 8,
                                       warmup=1 if quick else 3, peaks={k: v["gflops"] for k, v in results["peaks"].items()},
                                       eager_rounds=1 if quick else 2, dtypes=tuple(dtypes))
    if "memory" not in skip:  # peak RSS of 2 trainer steps at the documented batch, before/after the memory switches
        results["memory"] = bench_memory(["tiny"] if quick else ["tiny", "medium"], dtypes[-1:] if quick else dtypes,
                                         steps=2, settings=("before", "after") if quick else ("before", "chunked", "after"))
    if "generate" not in skip:
        results["generate"] = bench_generation(["tiny"] if quick else ["tiny", "small"], new_tokens=16 if quick else 64,
                                               repeats=1 if quick else 3)
    if "rollout" not in skip:  # one RL round's sampling: what GRPO spends its time on
        results["rollout"] = bench_rollout("tiny", quick=quick)
    if "serve" not in skip:
        results["serve"] = bench_serving("tiny", clients=8, new_tokens=16 if quick else 64, rounds=1 if quick else 3)
    if "text" not in skip:
        results["text"] = bench_text_tools(quick)
    if "corpus" not in skip:  # the gigabyte corpus through cleaning, tokenizer training and encoding
        from .corpus import bench_corpus  # imported here: its steps run as `python -m minigpt.bench.corpus`

        results["corpus"] = bench_corpus(quick, out_dir, corpus_mb)
    if not quick and "ttq" not in skip:
        results["time_to_quality"] = time_to_quality(10, out_dir)
    results["total_s"] = time.perf_counter() - t0
    tmp = out_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, out_dir / "results.json")
    return results


def _machine() -> dict[str, Any]:
    from ..devices import system_info

    return system_info()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--case"]:
        kind, *rest = argv[1:]
        if kind == "train":
            preset, impl, comp, steps, warmup, *dtype = rest
            print(json.dumps(train_step_case(preset, impl, comp == "1", int(steps), int(warmup), *dtype)))
            return 0
        if kind == "memory":
            preset, dtype, chunked, ckpt, steps = rest
            print(json.dumps(memory_case(preset, dtype, chunked == "1", ckpt == "1", int(steps))))
            return 0
        raise SystemExit(f"unknown case {kind}")
    ap = argparse.ArgumentParser(prog="python -m minigpt.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a < 3 minute run that checks the bench works")
    ap.add_argument("--out", default="runs/bench", help="folder for results.json and PNGs")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: train,memory,generate,rollout,serve,text,corpus,ttq")
    ap.add_argument("--corpus-mb", type=float, default=None,
                    help="size of the generated corpus (default 1024, 50 with --quick)")
    ap.add_argument("--profile", metavar="PRESET", choices=sorted(TRAIN_SHAPES),
                    help="print a torch.profiler table of one minigpt training step of PRESET and exit")
    ap.add_argument("--profile-impl", default="minigpt", choices=["minigpt", "hf"], help="model for --profile")
    ap.add_argument("--profile-dtype", default="float32", choices=sorted(DTYPES), help="autocast dtype for --profile")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.profile:
        print(profile_step(args.profile, args.profile_impl, dtype=args.profile_dtype))
        return 0
    results = run(args.quick, Path(args.out), set(filter(None, args.skip.split(","))), args.corpus_mb)
    print(format_table(results))
    if "corpus" in results:
        from .corpus import corpus_lines

        print("\n".join(corpus_lines(results["corpus"])))
    print(f"\nresults: {Path(args.out) / 'results.json'} ({results['total_s']:.0f}s)")
    return 0
