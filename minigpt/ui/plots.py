"""Loss curves: PNGs at each save, regenerated from metrics.jsonl, and a live inline plot.

`python -m minigpt.plots RUN_DIR` redraws the curves of every training folder under RUN_DIR.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless outside a kernel; a kernel keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..data.jsonl import iter_json_lines  # noqa: E402

logger = logging.getLogger(__name__)

RECENT_STEPS = 1000
# Fonts with Chinese glyphs, most common first (Debian's fonts-noto-cjk and fonts-wqy-microhei/zenhei, Adobe's
# Source Han, Windows' and macOS's own). Matplotlib falls back glyph by glyph along font.family, so Latin text
# keeps the default sans-serif and a Chinese file name or prompt takes the first of these that is installed.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
             "WenQuanYi Zen Hei", "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans GB", "Heiti SC",
             "Arial Unicode MS")


def use_cjk_font() -> str | None:
    """Let matplotlib draw Chinese: the first installed font of CJK_FONTS goes after the generic sans-serif in
    font.family. Returns its name, or None (logged once) when none is installed: Chinese then shows as boxes
    (install fonts-noto-cjk or fonts-wqy-microhei)."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    found = next((name for name in CJK_FONTS if name in installed), None)
    if found is None:  # matplotlib's font cache predates a font installed since: look at the system's files once
        for path in font_manager.findSystemFonts():
            if any(k in Path(path).name.lower() for k in ("cjk", "wqy", "sourcehan", "simhei", "msyh", "pingfang")):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):  # an unreadable font file is skipped
                    continue
        installed = {f.name for f in font_manager.fontManager.ttflist}
        found = next((name for name in CJK_FONTS if name in installed), None)
    if found is None:
        logger.info("no CJK font found (%s): Chinese text in plots shows as boxes", ", ".join(CJK_FONTS[:5]))
        return None
    # the generic family first (DejaVu Sans for Latin text), the CJK font as the per-glyph fallback
    plt.rcParams["font.family"] = ["sans-serif", found]
    return found


CJK_FONT = use_cjk_font()


def whole_steps(ax) -> None:
    """Step axes get whole-number ticks (no 2.5 steps on a short run)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a torn last line (a killed run) is skipped, not fatal."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in iter_json_lines(p):  # the package's JSONL reader: a bad line is skipped with its number
        rec = line.value
        if not line.ok or not isinstance(rec, dict):
            logger.warning("%s:%d: unreadable metrics line skipped (%s)", p, line.line, line.detail or "not an object")
            continue
        if not rec.get("skipped"):
            out.append(rec)
    return out


def loss_figure(records: list[dict[str, Any]], title: str = "training loss"):
    """The whole history, and beside it the last 1000 steps when the run is longer than that; current/min/max/mean
    and the validation points."""
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None and "step" in r]
    # DPO's "val_loss" is the held-out DPO loss without the RPO term its training loss has: not on the same axis
    dpo = any("reward_accuracy" in r or "train_reward_accuracy" in r for r in records)
    val = [] if dpo else [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None and "step" in r]
    steps = [s for s, _ in train + val]
    long_run = bool(steps) and max(steps) - min(steps) > RECENT_STEPS
    fig, axes = plt.subplots(1, 2 if long_run else 1, figsize=(11 if long_run else 6.5, 3.8), squeeze=False)
    for ax, recent in zip(axes[0], (False, True)):
        start = max(steps) - RECENT_STEPS if recent else None
        t = [p for p in train if start is None or p[0] > start]
        v = [p for p in val if start is None or p[0] > start]
        if t:
            ax.plot([s for s, _ in t], [l for _, l in t], lw=1, label="train")
        if v:
            ax.plot([s for s, _ in v], [l for _, l in v], "o-", ms=4, label="val")
        ax.set_xlabel("step")
        ax.set_ylabel("DPO loss (training)" if dpo else "loss (cross-entropy, nats per token)")
        whole_steps(ax)
        ax.set_title(f"last {RECENT_STEPS} steps" if recent else "whole run")
        ax.grid(alpha=0.3)
        if t or v:
            ax.legend(loc="upper right")
    if train:
        losses = [l for _, l in train]
        stats = (f"current {losses[-1]:.4f}   min {min(losses):.4f}   max {max(losses):.4f}   "
                 f"mean {sum(losses) / len(losses):.4f}")
        if val:
            stats += f"   val {val[-1][1]:.4f}"
        fig.suptitle(f"{title}\n{stats}", fontsize=10)
    fig.tight_layout()
    return fig


def save_loss_plots(output_dir: str | Path, step: int, final: bool = False) -> list[Path]:
    """Write plots/loss_curve_step_N.png (or loss_curve_final_step_N.png) and loss_curve_latest.png."""
    output_dir = Path(output_dir)
    records = read_metrics(output_dir / "metrics.jsonl")
    if not records:
        return []
    plots = output_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    fig = loss_figure(records, title=output_dir.name)
    name = f"loss_curve_final_step_{step}.png" if final else f"loss_curve_step_{step}.png"
    paths = [plots / name, plots / "loss_curve_latest.png"]
    for p in paths:
        tmp = p.with_name(f".{p.stem}.tmp.png")
        fig.savefig(tmp, dpi=80)
        tmp.replace(p)
    plt.close(fig)
    return paths


def regenerate(run_dir: str | Path) -> list[Path]:
    """Redraw the latest/final plots of every folder under run_dir that holds a metrics.jsonl."""
    out = []
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    for metrics in sorted(run_dir.rglob("metrics.jsonl")):
        records = read_metrics(metrics)
        if records:
            out += save_loss_plots(metrics.parent, records[-1]["step"], final=True)
    return out


class PlotOnSave:
    """Trainer callback: loss-curve PNGs at each checkpoint and at the end (plot_loss)."""

    def on_save(self, trainer, folder: Path) -> None:
        if trainer.is_main and trainer.cfg.logging.plot_loss:
            save_loss_plots(trainer.output_dir, trainer.step, final=folder.name == "final_model")


class LivePlot:
    """One inline figure updated in place during training, not a new figure per update.

    In a notebook cell it uses a display handle (under papermill the saved notebook holds the final
    state: exactly one image output). Given an ipywidgets Output as `target`, it replaces that
    widget's outputs instead, which also works from the panel's background training thread.
    """

    def __init__(self, every: int = 10, title: str = "training loss", target=None) -> None:
        self.every = max(1, every)
        self.title = title
        self.target = target
        self.records: list[dict] = []
        self.handle = None
        self.updates = 0

    def _show(self) -> None:
        fig = loss_figure(self.records, self.title)
        try:
            if self.target is not None:
                self.target.outputs = ({"output_type": "display_data", "metadata": {},
                                        "data": {"image/png": figure_png_base64(fig), "text/plain": f"<loss curve, {len(self.records)} records>"}},)
            else:
                from IPython.display import display

                if self.handle is None:
                    self.handle = display(fig, display_id=True)  # None outside IPython
                else:
                    self.handle.update(fig)
        finally:
            plt.close(fig)
        self.updates += 1

    def on_log(self, trainer, rec: dict) -> None:
        self.records.append(rec)
        if rec.get("step", 0) % self.every == 0 or "val_loss" in rec:
            self._show()

    def on_train_begin(self, trainer) -> None:
        self.records = []

    def on_train_end(self, trainer, result: dict) -> None:
        if self.records:
            self._show()


def figure_png_base64(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.plots", description="Redraw loss curves from metrics.jsonl")
    ap.add_argument("run_dir", help="a run directory (runs/NAME) or a training folder (runs/NAME/pretrain)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = regenerate(args.run_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    if not paths:
        print(f"no metrics.jsonl under {args.run_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def skills_figure(results_by_stage: dict[str, dict]):
    """Greedy skill accuracy by stage: one line per family, the mean over families in bold with its 95% interval."""
    from ..eval.skills import ordered_stages

    stages = ordered_stages(list(results_by_stage))
    fams = list(dict.fromkeys(f for s in stages for f in results_by_stage[s]["families"]))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = list(range(len(stages)))
    for f in fams:
        ys = [results_by_stage[s]["families"].get(f, {}).get("pass@1", float("nan")) for s in stages]
        ax.plot(x, ys, "o-", lw=1, ms=3, alpha=0.7, label=f)
    mean = [results_by_stage[s]["mean"] for s in stages]
    ys = [m["pass@1"] for m in mean]
    err = [[y - m["ci95"][0] for y, m in zip(ys, mean)], [m["ci95"][1] - y for y, m in zip(ys, mean)]]
    ax.errorbar(x, ys, yerr=err, fmt="s-", color="black", lw=2.5, capsize=4, label="mean (95% interval)")
    ax.set_xticks(x, stages)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("stage")
    ax.set_ylabel("held-out accuracy (greedy pass@1)")
    ax.set_title("built-in skills by stage")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 80) -> Path:
    """Save a figure as PNG atomically (a temporary name beside it, then os.replace) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path


def save_skills_plot(results_by_stage: dict[str, dict], path: str | Path) -> Path:
    """skills_figure written to `path` (PNG, atomic)."""
    return save_figure(skills_figure(results_by_stage), path)
