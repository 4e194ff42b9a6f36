"""What a cleaning run did, for the notebook: tables of its stats and rejects, and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..jsonl import iter_json_lines
from .pipeline import HIST_BINS, OUTPUTS
from .reasons import EXACT_DUPLICATE, NEAR_DUPLICATE, REASONS

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pandas is imported only where tables are built
    import pandas


def stats_table(stats: dict) -> "pandas.DataFrame":
    """One row per source: records, kept docs and chars, split counts, then rejects by reason."""
    import pandas as pd

    rows = []
    for name, s in stats["sources"].items():
        row = {"source": name, "records": s["records"], "docs": s["docs"], "chars": s["chars"],
               "train": s["train"], "val": s["val"], "sft": s["sft"], "sft_val": s["sft_val"],
               "over_cap": s.get("over_cap", 0)}
        row.update({r: s["rejected"].get(r, 0) for r in stats.get("reasons", sorted(stats["rejected"]))})
        rows.append(row)
    df = pd.DataFrame(rows).set_index("source") if rows else pd.DataFrame()
    if rows:
        df.loc["total"] = df.sum(numeric_only=True)
    return df


def example_rejects(out_dir: str | Path, per_reason: int = 10) -> "pandas.DataFrame":
    """Up to ``per_reason`` rejected records of each reason, read from rejects.jsonl."""
    import pandas as pd

    out = Path(out_dir)
    path = out / OUTPUTS["rejects"]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run run_cleaning first")
    wanted = None
    if (out / "stats.json").exists():
        wanted = set(json.loads((out / "stats.json").read_text(encoding="utf-8"))["rejected"])
    picked: dict[str, list[dict]] = {}
    for line in iter_json_lines(path):  # the package's JSONL reader: an unreadable line is skipped, not fatal
        rec = line.value
        if not line.ok or not isinstance(rec, dict) or "reason" not in rec:
            logger.warning("%s:%d: unreadable reject record skipped (%s)", path, line.line, line.detail or "no reason")
            continue
        lst = picked.setdefault(rec["reason"], [])
        if len(lst) < per_reason:
            lst.append(rec)
        # stop reading once every reason of the run has its examples
        if wanted is not None and len(picked) == len(wanted) and all(len(v) >= per_reason for v in picked.values()):
            break
    order = {r: i for i, r in enumerate(REASONS)}
    rows = [r for reason in sorted(picked, key=lambda r: order.get(r, len(order))) for r in picked[reason]]
    cols = ["reason", "file", "line", "excerpt", "detail"]
    return pd.DataFrame(rows).reindex(columns=cols).fillna("")


def plot_clean_stats(stats: dict, out_dir: str | Path, show: bool = True) -> list[Path]:
    """Docs/chars per source, length histogram, rejects by reason. Saved as PNGs under
    ``out_dir/plots/``; shown inline when running in a notebook and ``show``."""
    from ...ui.plots import plt  # matplotlib set up with a CJK font: file names may be Chinese

    plots = Path(out_dir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    display = _notebook_display() if show else None
    paths = []
    for name, draw in (("sources.png", _plot_sources), ("lengths.png", _plot_lengths),
                       ("rejects.png", _plot_rejects)):
        fig = draw(plt, stats)
        fig.tight_layout()
        fig.savefig(plots / name, dpi=100)
        if display is not None:
            display(fig)
        plt.close(fig)
        paths.append(plots / name)
    return paths


def _notebook_display() -> Callable[[Any], None] | None:
    """IPython's ``display`` when running inside IPython, else None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    return display if get_ipython() is not None else None


def _plot_sources(plt: Any, stats: dict) -> Any:
    names = list(stats["sources"])
    fig, axes = plt.subplots(1, 2, figsize=(11, max(2.5, 0.45 * len(names) + 1)))
    axes[0].barh(names, [stats["sources"][n]["docs"] for n in names], color="tab:blue")
    axes[0].set_title("documents kept per source")
    axes[0].set_xlabel("documents")
    axes[1].barh(names, [stats["sources"][n]["chars"] for n in names], color="tab:green")
    axes[1].set_title("characters kept per source")
    axes[1].set_xlabel("characters")
    for ax in axes:
        ax.set_ylabel("source")
        ax.invert_yaxis()
    return fig


def _plot_lengths(plt: Any, stats: dict) -> Any:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    text_h, chat_h = stats["length_hist"]["text"], stats["length_hist"]["chat"]
    used = [i for i in range(HIST_BINS) if text_h[i] or chat_h[i]]
    lo, hi = (used[0], used[-1] + 1) if used else (0, 1)  # only the bins that hold something
    labels = ["0"] + [f"{1 << (i - 1)}" for i in range(1, HIST_BINS)]
    x = np.arange(lo, hi)
    ax.bar(x - 0.2, text_h[lo:hi], width=0.4, label="pretrain documents")
    ax.bar(x + 0.2, chat_h[lo:hi], width=0.4, label="SFT dialogues")
    ax.set_xticks(x, labels[lo:hi], rotation=45)
    ax.set_xlabel("characters (bin starts at; log2 bins)")
    ax.set_ylabel("count")
    ax.set_yscale("symlog")
    ax.legend()
    ax.set_title("length histogram of kept data")
    return fig


def _plot_rejects(plt: Any, stats: dict) -> Any:
    reasons = stats.get("reasons") or sorted(stats["rejected"])
    counts = [stats["rejected"][r] for r in reasons]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(reasons) + 1)))
    colors = ["tab:orange" if r in (EXACT_DUPLICATE, NEAR_DUPLICATE) else "tab:red" for r in reasons]
    ax.barh(reasons, counts, color=colors)
    ax.invert_yaxis()
    ax.set_xscale("symlog")
    ax.set_xlabel("lines rejected (symlog scale)")
    ax.set_ylabel("reason")
    ax.set_title(f"rejected by reason (orange: duplicates removed, exact {stats['exact_duplicates']}, "
                 f"near {stats['near_duplicates']})", fontsize=9)
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c}", va="center", fontsize=8)
    return fig
