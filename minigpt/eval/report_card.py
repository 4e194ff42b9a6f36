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


def _mfu_cell(t: dict) -> str | None:
    """'12.10% of the measured bf16 peak 1,964 GFLOP/s'; runs logged before the peak was named show the bare figure."""
    if t.get("mfu") is None:
        return None
    if t.get("mfu_peak") and t.get("peak_gflops"):
        return f"{t['mfu']:.2%} of the measured {t['mfu_peak']} peak {t['peak_gflops']:,.0f} GFLOP/s"
    return f"{t['mfu']:.2%}"


def _section_training(f: dict, run_dir: Path, lines: list[str]) -> None:
    lines += ["## Training", ""]
    rows = []
    for stage in ("pretrain", "sft", "align", "rl"):
        t = f.get(stage)
        if t is None:
            if stage in ("pretrain", "sft"):  # align and rl have their own sections, which say so
                lines += _not_run(f"no {stage}/metrics.jsonl",
                                  f"Notebook {'03' if stage == 'pretrain' else '04'} writes it.")
            continue
        rows.append([stage, t["steps"], t["tokens_seen"], t["first_loss"], t["final_loss"], t.get("first_val_loss"),
                     t.get("val_loss"), t.get("val_bpc"), t.get("tokens_per_s"),
                     _mfu_cell(t), t["elapsed_s"]])
    if rows:
        lines += _table(["stage", "steps", "tokens", "first loss", "final loss", "first val loss", "val loss",
                         "val bits/char", "tokens/s", "MFU", "seconds"], rows)
    for stage in ("pretrain", "sft", "align", "rl"):
        png = _loss_png(run_dir, stage) if f.get(stage) else None
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
    ax.set_ylabel("benchmark · model")
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
              "*per char* the highest per character. `untrained` is the run's model shape with its seed's random "
              "initialisation, before any training.", ""]
    lines += _stale_note(f)
    lines += [benchmark_table(rows), f"![benchmarks]({_benchmark_png(rows, run_dir)})", ""]
    for msg in (f["eval"] or {}).get("flags") or []:
        lines += [f"**Warning, {msg}.** Its accuracies say little about what the models learnt.", ""]


def _section_answers(f: dict, lines: list[str]) -> None:
    lines += ["## Chat answers of each stage", ""]
    answers = (f["eval"] or {}).get("chat_answers") or []
    if not answers:
        lines += _not_run("no trained model evaluated", "Notebooks 03 and 04, then 06.")
    else:
        names = list(answers[0]["replies"])
        lines += ["Greedy replies to the same prompts, through the chat template.", ""]
        lines += _table(["prompt", *names], [[a["prompt"], *(a["replies"].get(n) for n in names)] for a in answers])
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
    for stage in ("pretrain", "sft", "align", "rl"):
        params = (f.get(stage) or {}).get("params")
        if params:
            lines += [f"<details><summary>{stage} (run_config.json)</summary>", "",
                      "```json", json.dumps(params, ensure_ascii=False, indent=1), "```", "</details>", ""]
    cfg = (f["eval"] or {}).get("config")
    if cfg:
        lines += ["<details><summary>evaluation</summary>", "", "```json", json.dumps(cfg, indent=1), "```",
                  "</details>", ""]


def _stale_note(f: dict) -> list[str]:
    """The models whose checkpoint on disk is not the one evaluated ("not evaluated yet")."""
    if not f.get("eval") or not f.get("stale"):
        return []
    items = "; ".join(f"`{name}`: {why}" for name, why in f["stale"].items())
    return [f"*Not evaluated yet: {items}. Notebook 06 or `python -m minigpt.report RUN_DIR` evaluates it; the "
            f"numbers below are from {(f['eval'] or {}).get('written_at', 'an earlier evaluation')}.*", ""]


def _section_skills(f: dict, run_dir: Path, lines: list[str]) -> None:
    from ..ui.plots import save_skills_plot
    from .skills import format_skills_table

    lines += ["## Built-in skills", ""]
    by_stage = f.get("skills") or {}
    if not by_stage:
        lines += _not_run("no skills evaluated", "Notebook 06 (or `python -m minigpt.report RUN_DIR`) scores every "
                          "model on held-out problems of the built-in skills (eval/skills.json).")
        return
    first = next(iter(by_stage.values()))
    lines += [f"Held-out (test split) problems with checkable answers; greedy pass@1 with its Wilson 95% interval "
              f"(at most {first['settings']['max_new_tokens']} new tokens); the family's checker reads the final "
              f"answer. Sampled pass@k: {first['settings']['pass@k']}.", ""]
    lines += _stale_note(f)
    lines += [format_skills_table(by_stage)]
    png = save_skills_plot(by_stage, run_dir / "report_skills.png")
    lines += [f"![skills by stage]({png.name})", ""]
    examples = [(stage, e) for stage, r in by_stage.items() if stage != "untrained" for e in r.get("examples", [])[:1]]
    if examples:
        lines += ["One reply per stage (the first problem of the first family):", ""]
        lines += _table(["stage", "family", "question", "reference", "reply", "right"],
                        [[s, e["family"], e["question"], e["answer"], e["completion"], "yes" if e["correct"] else "no"]
                         for s, e in examples])


def rejected_label(pairs_source: str | None) -> str:
    """What the rejected reply of a preference pair is, by where the pairs came from: the SFT model's own samples
    for the built-in pairs (spin, skills), the file's rejected reply otherwise."""
    if pairs_source in (None, "", "spin"):
        return "model's own reply"
    if pairs_source == "skills":
        return "model's own wrong answer"
    return f"rejected reply ({Path(str(pairs_source)).name})"


def _section_align(f: dict, lines: list[str]) -> None:
    from .scoring import change_note

    lines += ["## Alignment (DPO)", ""]
    t, summary = f.get("align"), f.get("align_summary")
    if t is None and summary is None:
        lines += _not_run("no align/metrics.jsonl", "Notebook 07 aligns the SFT model with preference pairs.")
        return
    source = ((t or {}).get("params") or {}).get("pairs_source") or ((summary or {}).get("info") or {}).get("source")
    lines += [f"Pairs: `{source or 'spin'}`; the rejected side is the {rejected_label(source)}.", ""]
    if summary:
        before, after = summary.get("before") or {}, summary.get("after") or {}
        n = int((summary.get("info") or {}).get("eval_pairs") or 0)
        keys = [k for k in ("reward_accuracy", "reward_margin", "chosen_logp_per_token", "rejected_logp_per_token")
                if k in before or k in after]
        label = {"chosen_logp_per_token": "chosen log-prob per token",
                 "rejected_logp_per_token": f"{rejected_label(source)}: log-prob per token"}
        lines += _table(["held-out measure", "before", "after"],
                        [[label.get(k, k.replace("_", " ")), before.get(k), after.get(k)] for k in keys])
        if n and "reward_accuracy" in before and "reward_accuracy" in after:
            note = change_note(round(before["reward_accuracy"] * n), round(after["reward_accuracy"] * n), n,
                               "held-out reward accuracy")
            lines += [("**" + note + ".**") if "cannot tell" in note else note + ".", ""]


def _section_rl(f: dict, run_dir: Path, lines: list[str]) -> None:
    lines += ["## Reinforcement learning (GRPO)", ""]
    from ..ui.plots import read_metrics

    records = read_metrics(run_dir / "rl" / "metrics.jsonl")
    if not records:
        lines += _not_run("no rl/metrics.jsonl", "The RL notebook trains the SFT model on the built-in skills with "
                          "verifiable rewards.")
        return
    last = records[-1]
    nums = [[k, v] for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" not in k]
    lines += [f"The last logged record (step {last.get('step')}; per-family numbers are in rl/metrics.jsonl and the "
              f"skills table above):", ""] + _table(["measure", "value"], nums)
    # 08's panels (reward, held-out accuracy, KL, length, all-equal groups); the loss curve is in the section above
    metrics_png = run_dir / "rl" / "plots" / "rl_metrics.png"
    lines += ([f"![rl_metrics]({metrics_png.relative_to(run_dir)})"] if metrics_png.is_file() else []) + [""]


def _compact_png(path: Path, max_width: int = 900) -> bytes:
    """A plot's PNG at most max_width pixels wide with a 256-colour palette: a few times smaller than the saved file
    and the same to read, so a notebook that shows the whole report stays small."""
    import io

    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > max_width:
            im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
        out = io.BytesIO()
        im.quantize(colors=256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def embed_images(markdown: str, run_dir: str | Path) -> str:
    """The report's markdown with each local PNG it links (paths relative to the run folder) inlined as a data URI,
    so it displays wherever it is shown (inside a notebook, whose folder is not the run's)."""
    import base64
    import re

    run_dir = Path(run_dir)

    def inline(m: "re.Match[str]") -> str:
        path = run_dir / m.group(2)
        if not path.is_file():
            return m.group(0)
        data = base64.b64encode(_compact_png(path)).decode("ascii")
        return f"![{m.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s:]+\.png)\)", inline, markdown)


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
    _section_skills(f, run_dir, lines)
    _section_align(f, lines)
    _section_rl(f, run_dir, lines)
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
