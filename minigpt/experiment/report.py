"""A sweep's results side by side: one plot of validation bits per character against training time (each recipe's
mean over seeds as a line, the min-max over seeds as a band) and one table (final val BPC mean and spread,
tokens/s, steps, peak memory)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.jsonl import read_json_file

PLOT_NAME = "bpc_vs_time.png"
TABLE_NAME = "results.md"


def load_results(out: str | Path) -> dict[str, Any]:
    path = Path(out) / "results.json" if Path(out).is_dir() else Path(out)
    data = read_json_file(path, "a sweep's results.json")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: expected an object with a 'runs' list, as the sweep runner writes")
    return data


def _by_recipe(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by recipe, in the sweep's recipe order."""
    order = list((results.get("sweep") or {}).get("recipes") or {})
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results["runs"]:
        groups.setdefault(r["recipe"], []).append(r)
    return {k: groups[k] for k in sorted(groups, key=lambda k: order.index(k) if k in order else len(order))}


def summary_table(results: dict[str, Any]):
    """A pandas DataFrame, one row per recipe: final val BPC mean and spread (half the min-max range over
    seeds), its difference to `baseline`, tokens/s, steps, peak RSS."""
    import pandas as pd

    rows = []
    for recipe, runs in _by_recipe(results).items():
        bpc = np.array([r["final_val_bpc"] for r in runs if r.get("final_val_bpc") is not None], dtype=float)
        rows.append({
            "recipe": recipe, "seeds": len(runs),
            "val_bpc": float(bpc.mean()) if bpc.size else float("nan"),
            "spread": float((bpc.max() - bpc.min()) / 2) if bpc.size else float("nan"),
            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in runs])),
            "steps": float(np.mean([r["steps"] for r in runs])),
            "train_min": float(np.mean([r["train_s"] for r in runs])) / 60,
            "peak_rss_mb": float(max(r["peak_rss_mb"] for r in runs)),
        })
    df = pd.DataFrame(rows)
    if len(df) and "baseline" in set(df["recipe"]):
        df["vs_baseline"] = df["val_bpc"] - float(df.loc[df["recipe"] == "baseline", "val_bpc"].iloc[0])
    return df


def markdown_table(df) -> str:
    """The table as markdown: val BPC as mean ± spread, rounded for reading."""
    cols = ["recipe", "seeds", "val BPC (mean ± spread)"] + (["vs baseline"] if "vs_baseline" in df else []) + \
        ["tokens/s", "steps", "train min", "peak RSS MB"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [r["recipe"], f"{int(r['seeds'])}", f"{r['val_bpc']:.3f} ± {r['spread']:.3f}"]
        if "vs_baseline" in df:
            cells.append(f"{r['vs_baseline']:+.3f}")
        cells += [f"{r['tokens_per_s']:.0f}", f"{r['steps']:.0f}", f"{r['train_min']:.2f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _band(runs: list[dict[str, Any]], n: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(minutes, mean, min, max) of val BPC over seeds, on the time span every seed's curve covers."""
    curves = [[(p["train_s"] / 60, p["val_bpc"]) for p in r["curve"] if "val_bpc" in p and "train_s" in p] for r in runs]
    curves = [np.array(c) for c in curves if c]
    if not curves:
        return None
    lo, hi = max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves)
    if hi <= lo:  # one point each (or no overlap): the points themselves
        t = np.array([np.mean([c[-1, 0] for c in curves])])
        ys = np.array([[c[-1, 1]] for c in curves])
    else:
        t = np.linspace(lo, hi, n)
        ys = np.array([np.interp(t, c[:, 0], c[:, 1]) for c in curves])
    return t, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_bpc_vs_time(results: dict[str, Any], path: str | Path) -> Path:
    """Write the plot (PNG) and return its path."""
    from ..ui.plots import plt  # headless outside a kernel, with a CJK font for Chinese recipe names

    fig, ax = plt.subplots(figsize=(8, 5))
    for recipe, runs in _by_recipe(results).items():
        band = _band(runs)
        if band is None:
            continue
        t, mean, lo, hi = band
        seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
        (line,) = ax.plot(t, mean, marker="o" if len(t) == 1 else None, label=f"{recipe} ({seeds})")
        ax.fill_between(t, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("training time (minutes; evaluation excluded)")
    ax.set_ylabel("validation bits per character")
    sweep = results.get("sweep") or {}
    ax.set_title(f"{sweep.get('name', 'sweep')}: {results.get('budget_minutes', '?')} min per run, band = min-max over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(out: str | Path) -> dict[str, Path]:
    """bpc_vs_time.png and results.md (the table) beside results.json."""
    from ..atomic import atomic_write_text

    out = Path(out)
    results = load_results(out)
    plot = plot_bpc_vs_time(results, out / PLOT_NAME)
    table = markdown_table(summary_table(results))
    atomic_write_text(out / TABLE_NAME, f"# {results['sweep']['name']}: {results['budget_minutes']:g} minutes per run\n\n"
                      f"![val BPC against training time]({PLOT_NAME})\n\n{table}\n")
    return {"plot": plot, "table": out / TABLE_NAME, "results": out / "results.json"}
