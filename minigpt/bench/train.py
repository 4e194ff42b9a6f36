"""Training-step speed: minigpt against `transformers.LlamaForCausalLM` with the same shapes and optimizer, each case
in its own subprocess; and time to quality (val bits per character after N minutes of `tiny`)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


TRAIN_SHAPES = {  # batch x seq for the training-step comparison
    "tiny": (8, 256),
    "small": (4, 512),
}


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


DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _train_setup(preset: str, impl: str, compile_: bool, dtype: str = "float32"):
    """(model, step function, config, batch, seq) for one training-step case; `dtype` other than float32 runs the
    forward under autocast in it (both impls alike), as the trainer does."""
    import contextlib

    import torch

    from ..config import ModelConfig, TrainConfig
    from ..devices import keep_freed_memory, set_threads
    from ..model.gpt import GPT
    from ..train.optim import build_optimizer

    set_threads(0)
    keep_freed_memory()  # as the trainer does on the CPU; for both impls (a process setting, not the model's)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset)
    batch, seq = TRAIN_SHAPES[preset]
    model = GPT(cfg) if impl == "minigpt" else _hf_llama(cfg)
    model.train()
    if impl == "minigpt":  # the trainer's default speed and memory switches for this dtype (chunked loss, attention)
        from ..train.memory import plan_memory

        plan_memory(model, TrainConfig.from_flat(check_memory=False).machine, batch, seq, 1, "adamw",
                    torch.device("cpu"), getattr(torch, dtype))
    # The trainer's optimizer (AdamW, decay on matrices only; fused where the trainer fuses), for both impls.
    opt = build_optimizer(model, TrainConfig.from_flat(learning_rate=1e-4), torch.device("cpu"))
    fwd = model
    if compile_:
        fwd = torch.compile(model)
    x = torch.randint(0, cfg.vocab_size, (batch, seq))
    y = torch.randint(0, cfg.vocab_size, (batch, seq))

    def autocast():
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=getattr(torch, dtype))

    def step():
        with autocast():
            if impl == "minigpt":
                _, loss = fwd(x, y)
            else:
                loss = fwd(input_ids=x, labels=y).loss  # HF shifts labels itself; the work is the same
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step, cfg, batch, seq


def train_step_case(preset: str, impl: str, compile_: bool, steps: int, warmup: int,
                    dtype: str = "float32") -> dict[str, Any]:
    """Time `steps` full training steps in this process (called in a subprocess by `bench_train`)."""
    import torch

    from ..devices import measure_peak_flops, peak_rss_mb
    from ..train.metrics import flops_per_token

    model, step, cfg, batch, seq = _train_setup(preset, impl, compile_, dtype)
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
    # The matmul peak of this case's dtype under this moment's load (the machine may be shared), measured alike.
    local_peak = measure_peak_flops(torch.device("cpu"), getattr(torch, dtype), n=2048, repeats=3) / 1e9
    return {"preset": preset, "impl": impl, "compile": compile_, "dtype": DTYPES[dtype], "batch": batch, "seq": seq,
            "step_s": median, "step_s_min": times[0], "step_s_max": times[-1], "tokens_per_s": tps,
            "tokens_per_s_best": batch * seq / times[0],
            "gflops": tps * fpt / 1e9, "warmup_s": warm_s, "local_peak_gflops": local_peak,
            "mfu_local": tps * fpt / 1e9 / local_peak, "params": cfg.num_params(), "peak_rss_mb": rss}


MEMORY_CASES = {  # preset -> (batch, seq): the presets' documented pretraining batches (params/<preset>.yaml)
    "tiny": (8, 256),
    "medium": (8, 1024),
}


def memory_case(preset: str, dtype: str, chunked: bool, checkpointing: bool, steps: int) -> dict[str, Any]:
    """Peak RSS of `steps` Trainer steps of `preset` at its documented batch (random tokens, AdamW), with the
    memory switches as given; the losses too, so runs with and without the switches can be compared.

    Run in its own process (`python -m minigpt.bench --case memory ...`): VmHWM is then this run's peak alone.
    """
    import tempfile

    import numpy as np
    import torch

    from ..config import ModelConfig, TrainConfig
    from ..data.datasets import WindowSampler
    from ..devices import peak_rss_mb
    from ..model.gpt import GPT
    from ..train.trainer import Trainer

    batch, seq = MEMORY_CASES[preset]
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset(preset))
    cfg = TrainConfig.from_flat(learning_rate=1e-4, min_lr=1e-5, max_steps=steps, warmup_steps=1, batch_size=batch,
                                seq_len=seq, log_interval=1, eval_interval=10 ** 6, save_interval=10 ** 6,
                                plot_loss=False, progress_bar=False, dtype=dtype, device="cpu", optimizer_type="adamw",
                                chunked_loss=chunked, activation_checkpointing=checkpointing)
    data = np.random.default_rng(0).integers(0, model.config.vocab_size, 200_000).astype(np.uint16)
    from ..train.memory import InsufficientMemory

    with tempfile.TemporaryDirectory() as tmp:
        try:
            trainer = Trainer(model, cfg, WindowSampler(data, batch, seq, seed=0), None, Path(tmp) / "run")
        except InsufficientMemory as e:  # the trainer's own check: not run where it would not fit
            return {"preset": preset, "error": f"refused: {e}"}
        estimate = trainer.memory_estimate or {}
        trainer.fit()
        losses = [json.loads(line)["loss"] for line in open(trainer.metrics_path) if '"loss"' in line]
    return {"preset": preset, "batch": batch, "seq": seq, "dtype": str(trainer.dtype).replace("torch.", ""),
            "chunked_loss": chunked, "activation_checkpointing": checkpointing, "steps": steps, "losses": losses,
            "peak_rss_mb": peak_rss_mb(), "estimate_mb": estimate.get("total", 0) / 2 ** 20}


MEMORY_SETTINGS = {"before": (False, False), "chunked": (True, False), "after": (True, True)}  # (chunked, checkpointing)


def bench_memory(presets: list[str], dtypes: list[str], steps: int, timeout: float = 1800,
                 settings: tuple[str, ...] = ("before", "chunked", "after")) -> list[dict[str, Any]]:
    """Peak RSS before (reference loss, every activation kept), with the chunked loss, and after (chunked loss +
    activation checkpointing), per preset and dtype; the largest loss difference between before and after is kept
    as a check (equal to 1e-5 in fp32). A setting the trainer's memory check refuses here is reported, not run."""
    rows = []
    for preset in presets:
        for dtype in dtypes:
            pair = {}
            for name in settings:
                chunked, ckpt = MEMORY_SETTINGS[name]
                res = _subprocess_json(["memory", preset, dtype, str(int(chunked)), str(int(ckpt)), str(steps)], timeout)
                res.update(setting=name, preset=preset, requested_dtype=dtype)
                pair[name] = res
                rows.append(res)
            if "losses" in pair.get("before", {}) and "losses" in pair.get("after", {}):
                pair["after"]["max_loss_diff"] = max(abs(a - b) for a, b in zip(pair["before"]["losses"], pair["after"]["losses"]))
    return rows


def profile_step(preset: str, impl: str = "minigpt", rows: int = 20, dtype: str = "float32") -> str:
    """A torch.profiler table (CPU activities, sorted by self time) of one training step after two warm-ups."""
    from torch.profiler import ProfilerActivity, profile

    _, step, _, _, _ = _train_setup(preset, impl, False, dtype)
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


def bench_train(presets: list[str], compile_modes: list[bool], steps: int, warmup: int, peaks: dict[str, float],
                timeout: float = 900, eager_rounds: int = 1, dtypes: tuple[str, ...] = ("float32",)) -> list[dict[str, Any]]:
    """Each preset x compile mode x dtype: minigpt and HF in that same dtype. `peaks`: GFLOP/s by dtype name
    (fp32, bf16, fp16); each row's MFU is against its own dtype's peak, which the row keeps (`peak_gflops`)."""
    rows = []
    for preset, comp, dtype in [(p, c, d) for p in presets for d in dtypes for c in compile_modes]:
        # minigpt, HF, HF, minigpt, ...: a load that drifts over the pair weighs on both alike.
        order = ["minigpt", "hf"]
        for i in range(1, 1 if comp else eager_rounds):
            order += ["hf", "minigpt"] if i % 2 else ["minigpt", "hf"]
        runs: dict[str, list[dict[str, Any]]] = {"minigpt": [], "hf": []}
        for impl in order:
            runs[impl].append(_subprocess_json(["train", preset, impl, str(int(comp)), str(steps), str(warmup), dtype],
                                               timeout))
        pair = {}
        for impl in ("minigpt", "hf"):
            res = _merge_rounds(runs[impl])
            res.setdefault("preset", preset)
            res.setdefault("impl", impl)
            res.setdefault("compile", comp)
            res.setdefault("dtype", DTYPES[dtype])
            res["peak_gflops"] = peaks.get(DTYPES[dtype])
            if "gflops" in res and res["peak_gflops"]:
                res["mfu"] = res["gflops"] / res["peak_gflops"]
            pair[impl] = res
            rows.append(res)
        if "tokens_per_s" in pair["minigpt"] and "tokens_per_s" in pair["hf"]:
            pair["minigpt"]["vs_hf"] = pair["minigpt"]["tokens_per_s"] / pair["hf"]["tokens_per_s"]
            if "tokens_per_s_best" in pair["minigpt"] and "tokens_per_s_best" in pair["hf"]:
                pair["minigpt"]["vs_hf_best"] = pair["minigpt"]["tokens_per_s_best"] / pair["hf"]["tokens_per_s_best"]
    # the compile goal compares minigpt compiled against HF *eager* (in the same dtype)
    for preset, dtype in [(p, DTYPES[d]) for p in presets for d in dtypes]:
        hf_eager = next((r for r in rows if r["preset"] == preset and r["impl"] == "hf" and not r["compile"]
                         and r["dtype"] == dtype and "tokens_per_s" in r), None)
        for r in rows:
            if r["preset"] == preset and r["dtype"] == dtype and r["impl"] == "minigpt" and "tokens_per_s" in r and hf_eager:
                r["vs_hf_eager"] = r["tokens_per_s"] / hf_eager["tokens_per_s"]
                if "tokens_per_s_best" in r and "tokens_per_s_best" in hf_eager:
                    r["vs_hf_eager_best"] = r["tokens_per_s_best"] / hf_eager["tokens_per_s_best"]
    return rows


def time_to_quality(minutes: float, out_dir: Path) -> dict[str, Any]:
    """Train `tiny` on the built-in corpus for `minutes` of training time (max_minutes); BPC against time, as a PNG."""
    from ..demo import run_notebooks

    run_dir = out_dir / "ttq"
    run_notebooks("tiny", run_dir, notebooks=("01_data_clean", "02_tokenizer"))
    from ..params import load_params
    from ..train.pretrain import build_pretrain_trainer

    # the budget is training time (evaluation excluded) and the learning rate decays against it
    P = load_params("pretrain", {"config": "tiny", "run_dir": str(run_dir), "max_steps": 0, "max_minutes": minutes,
                                 "eval_interval": 100, "save_steps": 100000, "plot_loss": False})
    trainer = build_pretrain_trainer(P)
    trainer.fit()
    from ..ui.plots import read_metrics

    evals = [r for r in read_metrics(trainer.metrics_path) if "val_bpc" in r]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r.get("train_s", r["elapsed_s"]) / 60 for r in evals], [r["val_bpc"] for r in evals], "o-")
    ax.set_xlabel("training minutes (evaluation excluded)")
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
