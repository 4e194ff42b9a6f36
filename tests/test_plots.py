"""Plots: Chinese renders with a CJK font (no missing-glyph boxes), every axis is labelled, step axes have whole-number
ticks, a run shorter than 1000 steps gets one loss panel, and DPO's held-out loss is not drawn on its training-loss
axis."""
from __future__ import annotations

import warnings

import pytest

from minigpt.align.show import align_figure
from minigpt.data.clean.report import plot_clean_stats
from minigpt.ui.plots import CJK_FONT, loss_figure, plt


def _records(n_steps: int, every_val: int = 5) -> list[dict]:
    out = [{"step": s, "loss": 5.0 - s / (n_steps + 1)} for s in range(1, n_steps + 1)]
    out += [{"step": s, "val_loss": 5.1 - s / (n_steps + 1)} for s in range(every_val, n_steps + 1, every_val)]
    return out


def _labelled(fig) -> list[tuple[str, str]]:
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_chinese_text_renders_without_missing_glyphs(tmp_path):
    if CJK_FONT is None:
        pytest.skip("no CJK font installed here (apt-get install fonts-noto-cjk or fonts-wqy-microhei)")
    fig, ax = plt.subplots()
    ax.barh(["人民日报.jsonl", "商品评论.txt"], [3, 4])
    ax.set_title("每个来源保留的文档")
    ax.set_xlabel("文档数")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(tmp_path / "zh.png")
    plt.close(fig)
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert not missing, missing


def test_the_font_check_sees_missing_glyphs(tmp_path, monkeypatch):
    """The warning the test above looks for is real: with only DejaVu Sans, Chinese glyphs are reported missing."""
    monkeypatch.setitem(plt.rcParams, "font.family", ["DejaVu Sans"])
    fig, ax = plt.subplots()
    ax.set_title("中文")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(tmp_path / "boxes.png")
    plt.close(fig)
    assert any("missing from" in str(w.message) for w in caught)


def test_a_short_run_has_one_loss_panel_with_labels_and_whole_steps():
    fig = loss_figure(_records(12))
    assert len(fig.axes) == 1 and _labelled(fig) == [("step", "loss (cross-entropy, nats per token)")]
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    assert [line.get_label() for line in fig.axes[0].lines] == ["train", "val"]
    plt.close(fig)


def test_a_long_run_adds_the_last_1000_steps():
    fig = loss_figure(_records(1500, every_val=100))
    assert [ax.get_title() for ax in fig.axes] == ["whole run", "last 1000 steps"]
    assert all(x and y for x, y in _labelled(fig))
    assert min(fig.axes[1].lines[0].get_xdata()) == 501
    plt.close(fig)


def test_dpo_held_out_loss_is_not_on_the_training_loss_axis():
    recs = [{"step": s, "loss": 0.69 - 0.01 * s, "train_reward_accuracy": 0.5} for s in range(1, 9)]
    recs += [{"step": 4, "val_loss": 0.6, "reward_accuracy": 0.6}, {"step": 8, "val_loss": 0.5, "reward_accuracy": 0.7}]
    fig = loss_figure(recs, "align loss")
    assert [line.get_label() for line in fig.axes[0].lines] == ["train"]
    assert fig.axes[0].get_ylabel() == "DPO loss (training)"
    plt.close(fig)
    fig = align_figure(recs)
    by_title = {ax.get_title(): [line.get_label() for line in ax.lines] for ax in fig.axes}
    assert by_title["DPO loss (training)"] == ["loss"] and by_title["held-out DPO loss"] == ["val_loss"]
    assert all(x == "step" and y for x, y in _labelled(fig))
    plt.close(fig)


def test_the_cleaning_plots_label_every_axis(tmp_path, monkeypatch):
    from minigpt.data.clean.pipeline import HIST_BINS

    stats = {"sources": {"人民日报": {"docs": 3, "chars": 300}, "reviews": {"docs": 5, "chars": 200}},
             "length_hist": {"text": [0, 1, 2] + [0] * (HIST_BINS - 3), "chat": [0, 0, 1] + [0] * (HIST_BINS - 3)},
             "rejected": {"too_short": 4, "exact_duplicate": 1}, "reasons": ["too_short", "exact_duplicate"],
             "exact_duplicates": 1, "near_duplicates": 0}
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig: figs.append(fig))
    plot_clean_stats(stats, tmp_path, show=False)
    assert len(figs) == 3 and (tmp_path / "plots" / "sources.png").is_file()
    monkeypatch.undo()
    for fig in figs:
        assert all(x and y for x, y in _labelled(fig)), _labelled(fig)
        plt.close(fig)
