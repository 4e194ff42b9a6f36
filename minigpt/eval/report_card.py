"""The report card: one page per run (RUN_DIR/report.md, PNGs beside it), and two runs side by side.

    python -m minigpt.report RUN_DIR            # evaluates the run if it has no eval/results.json yet
    python -m minigpt.report RUN_A RUN_B        # RUN_B/compare.md: both runs' numbers and their differences

A stage that did not run gets its section with "not run" and what would fill it, never a silent gap.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .facts import collect, headline

logger = logging.getLogger(__name__)

REPORT = "report.md"


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}")
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows] + [""]


def _not_run(what: str, how: str) -> list[str]:
    return [f"*Not run: {what}. {how}*", ""]


def benchmark_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: accuracy with its 95% interval against the random baseline, one row per benchmark and model."""
    body = [[r["benchmark"], r["model"], r["n"], f"{r['accuracy']:.3f}",
             f"{r['ci95'][0]:.3f}–{r['ci95'][1]:.3f}", f"{r['accuracy_norm']:.3f}", f"{r['random']:.3f}",
             f"{r['accuracy'] - r['random']:+.3f}", f"{r['num_fewshot']}-shot" + (", chat" if r["chat"] else "")]
            for r in rows]
    return "\n".join(_table(["benchmark", "model", "items", "accuracy", "95% CI", "acc (per char)", "random",
                             "vs random", "setting"], body))


def _section_environment(f: dict, lines: list[str]) -> None:
    from ..devices import system_info

    lines += ["## Environment", "", f"Code: git commit `{f['git']}`. Machine (the one that wrote this report):", ""]
    lines += _table(["", "value"], [[k, v] for k, v in system_info("cpu").items()])


def _section_data(f: dict, lines: list[str]) -> None:
    lines += ["## Data", ""]
    d = f["data"]
    if d is None:
        lines += _not_run("no data/stats.json", "Notebook 01 cleans the corpus and writes it.")
        return
    lines += _table(["split", "documents", "characters"], [[s, d["kept"].get(s), d["chars"].get(s)] for s in d["kept"]])
    rejected = sorted(d["rejected"].items(), key=lambda kv: -kv[1])
    lines += [f"Rejected: {d['rejected_total']:,} of {d['records']:,} records, by reason:", ""]
    lines += _table(["reason", "records"], rejected) if rejected else ["(none)", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in d["plots"]] + [""]


def _section_tokenizer_model(f: dict, lines: list[str]) -> None:
    lines += ["## Tokenizer", ""]
    t = f["tokenizer"]
    if t is None:
        lines += _not_run("no tokens/meta.json", "Notebook 02 trains the tokenizer and writes the token files.")
    else:
        lines += [f"Vocabulary: {t['vocab_size']:,} tokens.", ""]
        lines += _table(["split", "tokens", "characters", "chars/token"],
                        [[s, v["tokens"], v["chars"], v["chars_per_token"]] for s, v in t["splits"].items()])
    lines += ["## Model", ""]
    m = f["model"]
    if m is None:
        lines += _not_run("no trained model", "Notebook 03 pretrains one.")
    else:
        lines += _table(["parameters", "d_model", "layers", "heads / KV heads", "d_ff", "context", "vocab"],
                        [[m["parameters"], m["d_model"], m["n_layers"], f"{m['n_heads']} / {m['n_kv_heads']}",
                          m["d_ff"], m["max_seq_len"], m["vocab_size"]]])


def _loss_png(run_dir: Path, stage: str) -> str | None:
    from ..ui.plots import loss_figure, plt, read_metrics

    records = read_metrics(run_dir / stage / "metrics.jsonl")
    if not records:
        return None
    fig = loss_figure(records, title=f"{stage} loss")
    name = f"report_{stage}_loss.png"
    fig.savefig(run_dir / name, dpi=80)
    plt.close(fig)
    return name


def _section_training(f: dict, run_dir: Path, lines: list[str]) -> None:
    lines += ["## Training", ""]
    rows = []
    for stage in ("pretrain", "sft"):
        t = f[stage]
        if t is None:
            lines += _not_run(f"no {stage}/metrics.jsonl", f"Notebook {'03' if stage == 'pretrain' else '04'} writes it.")
            continue
        rows.append([stage, t["steps"], t["tokens_seen"], t["first_loss"], t["final_loss"], t.get("first_val_loss"),
                     t.get("val_loss"), t.get("val_bpc"), t.get("tokens_per_s"),
                     f"{t['mfu']:.2%}" if t.get("mfu") is not None else None, t["elapsed_s"]])
    if rows:
        lines += _table(["stage", "steps", "tokens", "first loss", "final loss", "first val loss", "val loss",
                         "val bits/char", "tokens/s", "MFU", "seconds"], rows)
    for stage in ("pretrain", "sft"):
        png = _loss_png(run_dir, stage) if f[stage] else None
        if png:
            lines += [f"![{stage} loss]({png})", ""]


def _section_validation(f: dict, lines: list[str]) -> None:
    lines += ["## Validation: loss, bits per character, perplexity", ""]
    val = (f["eval"] or {}).get("val") or {}
    rows = [[name, m["loss"], m.get("bpc"), m["perplexity"]] for name, m in val.items() if m]
    if not rows:
        lines += _not_run("no validation measured", "Notebook 06 (or `python -m minigpt.report RUN_DIR`) measures it "
                          "on tokens/val.bin.")
        return
    lines += _table(["model", "val loss (nats/token)", "bits/char", "perplexity"], rows)


def _benchmark_png(rows: list[dict], run_dir: Path) -> str:
    from ..ui.plots import plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    labels = [f"{r['benchmark']} · {r['model']}" for r in rows]
    acc = [r["accuracy"] for r in rows]
    err = [[a - r["ci95"][0] for a, r in zip(acc, rows)], [r["ci95"][1] - a for a, r in zip(acc, rows)]]
    ax.barh(labels, acc, xerr=err, color="#4c72b0", capsize=3)
    for i, r in enumerate(rows):
        ax.plot([r["random"]] * 2, [i - 0.4, i + 0.4], color="#c44e52", lw=2, label="random" if i == 0 else None)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (95% interval)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    name = "report_benchmarks.png"
    fig.savefig(run_dir / name, dpi=80)
    plt.close(fig)
    return name


def _section_benchmarks(f: dict, run_dir: Path, lines: list[str]) -> None:
    lines += ["## Benchmarks", ""]
    rows = (f["eval"] or {}).get("benchmarks") or []
    if not rows:
        lines += _not_run("no benchmark results", "Notebook 06 (or `python -m minigpt.report RUN_DIR`) scores the "
                          "built-in cloze and any `eval_data` benchmarks.")
        return
    lines += ["Each choice is scored by the log-likelihood of its continuation; *accuracy* picks the highest total, "
              "*per char* the highest per character. `untrained` is a freshly initialised model of the same shape.", ""]
    lines += [benchmark_table(rows), f"![benchmarks]({_benchmark_png(rows, run_dir)})", ""]


def _section_answers(f: dict, lines: list[str]) -> None:
    lines += ["## SFT: answers before and after", ""]
    answers = (f["eval"] or {}).get("sft_answers") or []
    if not answers:
        lines += _not_run("no pretrained and SFT model pair evaluated", "Notebooks 03 and 04, then 06.")
    else:
        lines += _table(["prompt", "before SFT (pretrained)", "after SFT"], [[a["prompt"], a["before"], a["after"]]
                                                                            for a in answers])
    lines += ["## Samples", ""]
    lines += ([f["samples"].replace("\n### ", "\n#### ").replace("### ", "#### ", 1), ""] if f["samples"]
              else _not_run("no samples.md", "Notebook 05 writes it."))
    lines += ["## Generation speed", ""]
    g = (f["eval"] or {}).get("generation")
    if g is None:
        lines += _not_run("not measured", "Notebook 06 times greedy decoding of the run's model.")
    else:
        lines += [f"{g['tokens_per_s']:.1f} tokens/s: {g['new_tokens']} new tokens, greedy, batch 1, model "
                  f"`{g['model']}`, {g['device']}, {g['threads']} threads.", ""]


def _section_parameters(f: dict, lines: list[str]) -> None:
    lines += ["## Parameters", ""]
    for stage in ("pretrain", "sft"):
        params = (f[stage] or {}).get("params")
        if params:
            lines += [f"<details><summary>{stage} (run_config.json)</summary>", "",
                      "```json", json.dumps(params, ensure_ascii=False, indent=1), "```", "</details>", ""]
    cfg = (f["eval"] or {}).get("config")
    if cfg:
        lines += ["<details><summary>evaluation</summary>", "", "```json", json.dumps(cfg, indent=1), "```",
                  "</details>", ""]


def render(run_dir: str | Path) -> str:
    """The report card's markdown (PNGs are written into run_dir as it is rendered)."""
    run_dir = Path(run_dir)
    f = collect(run_dir)
    lines = [f"# Report card: {run_dir.name}", "", f"Run directory: `{run_dir}`", ""]
    _section_environment(f, lines)
    _section_data(f, lines)
    _section_tokenizer_model(f, lines)
    _section_training(f, run_dir, lines)
    _section_validation(f, lines)
    _section_benchmarks(f, run_dir, lines)
    _section_answers(f, lines)
    _section_parameters(f, lines)
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    path = Path(run_dir) / REPORT
    atomic_write_text(path, render(run_dir))
    logger.info("wrote %s", path)
    return path


def compare(run_a: str | Path, run_b: str | Path) -> str:
    """Markdown: the headline numbers of two runs side by side, with B - A."""
    a, b = headline(collect(run_a)), headline(collect(run_b))
    rows = []
    for key in list(dict.fromkeys([*a, *b])):
        va, vb = a.get(key), b.get(key)
        diff = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        rows.append([key, va, vb, (f"{diff:+,}" if isinstance(diff, int) else f"{diff:+.4g}") if diff is not None else None])
    head = [f"# {Path(run_a).name} vs {Path(run_b).name}", "", f"A: `{run_a}`  ", f"B: `{run_b}`", ""]
    return "\n".join(head + _table(["", "A", "B", "B − A"], rows))
