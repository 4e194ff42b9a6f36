"""The bench's one printed table, from the results dictionary: training, generation, RL rollouts, serving, text tools,
time to quality."""
from __future__ import annotations

from typing import Any


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v else ""


def _ratios(same: float | None, eager: float | None) -> str:
    return ", ".join(f"{v:.2f}x" for v in (same, eager) if v is not None)


def train_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "training step          impl     compile  dtype  batch x seq   tokens/s   GFLOP/s  peak used         MFU"
             "  MFU(local)  peak RSS MB  vs HF (same mode)  vs HF eager   best tok/s  best vs HF (same, eager)"]
    for r in rows:
        dtype = r.get("dtype", "fp32")
        if "error" in r:
            lines.append(f"  {r['preset']:<20} {r['impl']:<8} {str(r['compile']):<8} {dtype:<5}  ERROR {r['error'][-120:]!r}")
            continue
        peak = f"{dtype} {r['peak_gflops']:,.0f}" if r.get("peak_gflops") else ""
        lines.append(
            f"  {r['preset']:<20} {r['impl']:<8} {str(r['compile']):<8} {dtype:<5}  {r['batch']:>3} x {r['seq']:<6} "
            f"{r['tokens_per_s']:>9.0f} {r['gflops']:>9.1f}  {peak:<14} {r.get('mfu', 0):>6.0%} "
            f"{r.get('mfu_local', 0):>10.0%} {r['peak_rss_mb']:>12.0f}  "
            f"{_x(r.get('vs_hf')):>17}  {_x(r.get('vs_hf_eager')):>11}"
            f"  {r.get('tokens_per_s_best', 0):>11.0f}  {_ratios(r.get('vs_hf_best'), r.get('vs_hf_eager_best')):>12}")
    lines.append("  (MFU: against the measured matmul peak of the row's own dtype, named in 'peak used' (GFLOP/s);"
                 " MFU(local): against a matmul peak of that dtype measured in the case's own process"
                 " right after its steps, i.e. under the same machine load; tokens/s from the median step, best"
                 " tok/s from the fastest step: background load only ever adds time, so on a shared machine the"
                 " best step is the steadier estimate of the model's own speed)")
    return lines


def memory_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Peak RSS of two trainer steps per preset, dtype and memory setting, with the estimate and the loss check."""
    lines = ["", "training memory        dtype  batch x seq   setting   chunked loss  act. checkpointing  peak RSS MB"
                 "  estimate MB  max |loss diff| vs before"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['preset']:<20} {r.get('requested_dtype', ''):<6} {r.get('setting', ''):<9} "
                         f"{r['error'][-160:]}")
            continue
        diff = f"{r['max_loss_diff']:.1e}" if "max_loss_diff" in r else ""
        lines.append(f"  {r['preset']:<20} {DTYPE_SHORT.get(r['dtype'], r['dtype']):<6} {r['batch']:>3} x {r['seq']:<7} "
                     f"{r['setting']:<9} {str(r['chunked_loss']):<13} {str(r['activation_checkpointing']):<19} "
                     f"{r['peak_rss_mb']:>11.0f} {r['estimate_mb']:>12.0f}  {diff}")
    lines.append("  (before: the reference loss with every activation kept; chunked: chunked_loss; after: chunked_loss"
                 " + activation_checkpointing. Peak RSS is VmHWM of a process running 2 steps; the estimate is the"
                 " trainer's, minigpt/train/memory.py)")
    return lines


DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _generation_rows(g: dict[str, Any], b: int) -> list[tuple]:
    """(weights, decode step, decoding, minigpt tok/s, HF tok/s, ratio) rows for one preset and batch size."""
    hf_b = g.get("hf", {}).get(b)
    step = g.get("backend", {}).get(b) or ""
    rows = [("fp32", step, "greedy", g["minigpt"][b], hf_b, g.get("ratio", {}).get(b))]
    if b in g.get("int8", {}):
        rows.append(("int8", step, "greedy", g["int8"][b], hf_b, g.get("ratio_int8", {}).get(b)))
    if b in g.get("model_step", {}):
        t = g["model_step"][b]
        rows.append(("fp32", "model", "greedy", t, hf_b, t / hf_b if hf_b else None))
    if b in g.get("sample", {}):
        rows.append(("fp32", step, "sampled", g["sample"][b], g.get("hf_sample", {}).get(b), g.get("ratio_sample", {}).get(b)))
    return rows


def generation_lines(gen: dict[str, Any]) -> list[str]:
    from .generate import BENCH_SAMPLING

    lines = ["", "generation             batch  weights  decode step  decoding   minigpt tok/s   HF tok/s   ratio"]
    for preset, g in gen.items():
        for b in g.get("minigpt", {}):
            for weights, kind, mode, t, hf, ratio in _generation_rows(g, b):
                lines.append(f"  {preset:<20} {b:>5}  {weights:<7}  {kind:<11}  {mode:<8} {t:>15.0f} {hf or 0:>10.0f} {_x(ratio):>7}")
        if g.get("fp32_read_floor"):
            hf1 = g.get("hf", {}).get(1)
            lines.append(f"  {preset:<20} batch-1 fp32 ceiling, estimated (one read of the weights a token): "
                         f"{g['fp32_read_floor']:.0f} tok/s" + (f" = {g['fp32_read_floor'] / hf1:.2f}x HF" if hf1 else ""))
    lines.append("  (sampled: " + ", ".join(f"{k} {v}" for k, v in BENCH_SAMPLING.items()) + " in both libraries;"
                 " decode step 'native' = the C step, 'model' = GPT.forward with the KV cache)")
    return lines


def rollout_lines(r: dict[str, Any]) -> list[str]:
    """minigpt's RL sampling call against HF generate: rows, generated tokens and tokens/s of each, and the ratio."""
    lo, hi = r["prompt_tokens"]
    lines = ["", f"rollouts for RL ({r['preset']}, {r['prompts']} prompts x {r['group_size']} samples x "
                 f"{r['new_tokens']} new tokens, temperature 1.0)",
             f"  {'':<62} {'rows':>5} {'generated':>10} {'tokens/s':>10}"]
    for key, label in (("minigpt", f"minigpt generate_ids (decode step {r.get('backend')})"),
                       ("hf", f"HF generate (num_return_sequences {r['group_size']})")):
        c = r.get(key)
        if c:
            lines.append(f"  {label:<62} {c['rows']:>5} {c['generated_tokens']:>10} {c['tokens_per_s']:>10.0f}")
    lines.append(f"  minigpt / HF: {_x(r.get('ratio')) or 'n/a'}  (skill chat prompts of {lo}-{hi} tokens, left-padded;"
                 " no top-k/top-p; every row made the full length; tokens/s over the mean time of the runs minigpt, HF, HF,"
                 " minigpt)")
    return lines


def serving_lines(s: dict[str, Any]) -> list[str]:
    lines = ["", f"serving ({s['preset']}, {s['new_tokens']} tokens a request, streamed)   clients  requests"
                 "   tokens/s  TTFT p50 ms  ITL p50 ms  ITL p99 ms  errors"]
    for key, label in (("minigpt", "minigpt.serve (continuous batching)"), ("minigpt_alone", "minigpt.serve, one client"),
                       ("hf", "HF generate per request")):
        c = s.get(key)
        if c:
            lines.append(f"  {label:<44} {c['clients']:>7} {c['requests']:>9} {c['tokens_per_s']:>10.0f} "
                         f"{c['ttft_p50_ms']:>12.1f} {c['itl_p50_ms']:>11.1f} {c['itl_p99_ms']:>11.1f} {c['errors']:>7}")
    lines.append(f"  {s['clients']} clients vs one alone: {_x(s.get('vs_alone'))}"
                 + (f"; vs the HF baseline: {_x(s.get('vs_hf'))}" if s.get("vs_hf") else ""))
    return lines


def format_table(results: dict[str, Any]) -> str:
    lines = []
    peaks = results.get("peaks") or ({"": results["peak"]} if results.get("peak") else {})
    for p in peaks.values():
        lines.append(f"peak matmul: {p.get('gflops', 0):,.1f} GFLOP/s ({p.get('dtype')}, {p.get('threads')} threads, {p.get('device')})")
    if results.get("train"):
        lines += train_lines(results["train"])
    if results.get("memory"):
        lines += memory_lines(results["memory"])
    if results.get("generate"):
        lines += generation_lines(results["generate"])
    if results.get("rollout"):
        lines += rollout_lines(results["rollout"])
    if results.get("serve"):
        lines += serving_lines(results["serve"])
    tools = results.get("text", {})
    if tools:
        t = tools["tokenizer"]
        lines += ["", f"tokenizer: train {t.get('train_seconds', 0):.1f}s (vocab 6400, {t.get('n_docs')} docs), "
                      f"encode {t.get('encode_mb_per_s', 0):.2f} MB/s",
                  f"cleaning: {tools['clean'].get('mb_per_s', 0):.1f} MB/s; "
                  f"with near-dup dedup {tools['clean_near_dedup'].get('mb_per_s', 0):.1f} MB/s"]
    ttq = results.get("time_to_quality")
    if ttq:
        lines += ["", f"time to quality: val {ttq['val_bpc']:.3f} bits/char after {ttq['minutes']:g} min "
                      f"({ttq['steps']} steps) -> {ttq['png']}"]
    return "\n".join(lines)
