"""What notebook 07 shows: the DPO metrics as curves (live and from metrics.jsonl), SFT vs aligned vs reference
answers side by side, and the before/after table of held-out metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..ui.plots import LivePlot, figure_png_base64, plt, read_metrics, whole_steps

# The held-out loss has its own panel: it is the DPO loss without the RPO term (sft_weight) the training loss has.
PANELS = (("DPO loss (training)", ("loss",)), ("held-out DPO loss", ("val_loss",)),
          ("reward accuracy", ("reward_accuracy", "train_reward_accuracy")),
          ("reward margin", ("reward_margin", "train_reward_margin")),
          ("log-prob per token", ("chosen_logp_per_token", "rejected_logp_per_token")), ("KL to reference", ("kl_ref",)))
# notebook 08 (GRPO): the rollouts' reward and accuracy, held-out accuracy, the KL to the initial model, the
# completions' length and the share of groups whose rewards are all equal (they carry no learning signal)
RL_PANELS = (("reward (rollouts)", ("train_reward", "train_accuracy")), ("held-out accuracy", ("val_accuracy",)),
             ("KL to initial model", ("train_kl",)), ("completion tokens", ("train_completion_tokens",)),
             ("all-equal groups", ("train_equal_reward_fraction",)))


def align_figure(records: list[dict[str, Any]], title: str = "DPO", panels: tuple = PANELS):
    """One panel per metric group against the step; eval metrics as points joined by lines."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4))
    for ax, (name, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
            if pts:
                style = "-" if key in ("loss",) or key.startswith("train_") else "o-"
                ax.plot([s for s, _ in pts], [v for _, v in pts], style, ms=3, lw=1, label=key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(name, fontsize=9)
        whole_steps(ax)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class AlignLivePlot(LivePlot):
    """The live plot of notebooks 07 and 08: the DPO (or GRPO) metrics' panels instead of the loss curve alone."""

    panels: tuple = PANELS

    def _show(self) -> None:
        fig = align_figure(self.records, self.title, self.panels)
        try:
            if self.target is not None:
                self.target.outputs = ({"output_type": "display_data", "metadata": {},
                                        "data": {"image/png": figure_png_base64(fig), "text/plain": f"<{self.title} metrics>"}},)
            else:
                from IPython.display import display

                if self.handle is None:
                    self.handle = display(fig, display_id=True)
                else:
                    self.handle.update(fig)
        finally:
            plt.close(fig)
        self.updates += 1


class RLLivePlot(AlignLivePlot):
    """Notebook 08's live plot: reward, held-out accuracy, KL, completion length, all-equal groups."""

    panels = RL_PANELS


def save_align_figure(output_dir: str | Path, panels: tuple = PANELS, name: str = "align_metrics.png",
                      title: str = "DPO") -> Path:
    """plots/<name> from the folder's metrics.jsonl."""
    output_dir = Path(output_dir)
    fig = align_figure(read_metrics(output_dir / "metrics.jsonl"), title, panels)
    path = output_dir / "plots" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def margin_path(output_dir: str | Path) -> list[tuple[int, float, float]]:
    """(step, held-out reward margin, held-out reward accuracy) at each evaluation of the run."""
    return [(r["step"], r["reward_margin"], r["reward_accuracy"]) for r in read_metrics(Path(output_dir) / "metrics.jsonl")
            if "reward_margin" in r]


def before_after(before: dict[str, float], after: dict[str, float]):
    """A table of the held-out metrics before and after DPO."""
    import pandas as pd

    keys = ["reward_accuracy", "reward_margin", "chosen_logp_per_token", "rejected_logp_per_token", "val_loss", "kl_ref"]
    return pd.DataFrame({"before DPO": [before.get(k) for k in keys], "after DPO": [after.get(k) for k in keys]},
                        index=keys).round(4)


def side_by_side(sft_model, aligned_model, tokenizer, pairs, n: int = 3, gen_cfg=None):
    """For the first n held-out pairs: the prompt, the SFT model's answer, the aligned model's and the reference."""
    import pandas as pd

    from ..infer.generate import GenerationConfig, TextGenerator

    cfg = gen_cfg or GenerationConfig(max_new_tokens=40, do_sample=False, repetition_penalty=1.2)
    rows = []
    sft, aligned = TextGenerator(sft_model, tokenizer), TextGenerator(aligned_model, tokenizer)
    for p in pairs[:n]:
        msgs = p.prompt_messages()
        rows.append({"prompt": msgs[-1]["content"], "SFT": sft.chat(msgs, cfg), "aligned (DPO)": aligned.chat(msgs, cfg),
                     "reference": p.chosen})
    return pd.DataFrame(rows)
