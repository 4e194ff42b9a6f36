"""The report card: a run with missing stages says so, a run with a trained model gets every section,
`python -m minigpt.report` writes it (and compares two runs), and notebook 06's parameters are registered."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.eval import EvalConfig, compare, evaluate_run, render, write_report
from minigpt.params import load_params, registry
from minigpt.train.checkpoint import save_checkpoint
from conftest import make_tiny_run, tiny_gpt
from test_eval_cloze import CLOZE, write_dialogues

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_report_on_a_run_with_missing_stages(tmp_path):
    run = make_tiny_run(tmp_path / "run")  # 01 and 02 only: no model, no training, no evaluation, no samples
    md = render(run)
    assert "| train | 300 |" not in md  # make_tiny_run writes no stats.json: the data section says so
    for needle in ["## Data\n\n*Not run: no data/stats.json", "## Model\n\n*Not run: no trained model",
                   "*Not run: no pretrain/metrics.jsonl. Notebook 03 writes it.*",
                   "*Not run: no sft/metrics.jsonl. Notebook 04 writes it.*",
                   "## Benchmarks\n\n*Not run: no benchmark results", "## Samples\n\n*Not run: no samples.md",
                   "## Generation speed\n\n*Not run: not measured"]:
        assert needle in md, needle
    assert "| val |" in md and "chars/token" in md  # the tokenizer stage did run
    assert "git commit `" in md and "| torch |" in md


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run with data, tokens, and a pretrain/final_model (a micro model trained on the run's text), evaluated."""
    from test_eval_cloze import train_micro_model

    from minigpt.data.tokenizer import MiniTokenizer

    run = make_tiny_run(tmp_path_factory.mktemp("trained") / "run")
    write_dialogues(run / "data" / "sft_val.jsonl")
    (run / "data" / "stats.json").write_text(json.dumps({"records": 340, "kept": {"train": 300, "val": 30},
                                                         "chars": {"train": 9000, "val": 900},
                                                         "rejected": {"too_short": 10}, "rejected_total": 10}))
    tok = MiniTokenizer.load(run / "tokenizer")
    texts = [json.loads(l)["text"] for l in (run / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    model = train_micro_model(tok, texts, steps=40)
    save_checkpoint(run / "pretrain" / "final_model", model, {"model": model.config.to_dict(),
                                                               "tokenizer_sha256": tok.sha256},
                    tokenizer_dir=run / "tokenizer")
    with open(run / "pretrain" / "metrics.jsonl", "w") as f:
        for step, loss in ((1, 5.9), (2, 5.1), (3, 4.2)):
            f.write(json.dumps({"step": step, "loss": loss, "tokens_seen": step * 512, "elapsed_s": step * 0.1,
                                **({"val_loss": 4.4, "val_bpc": 6.1, "tokens_per_s": 5120.0, "mfu": 0.012}
                                   if step == 3 else {})}) + "\n")
    results = evaluate_run(run, EvalConfig(cloze_items=20, cloze_prefix_chars=6, cloze_min_chars=4,
                                           cloze_max_chars=12, speed_new_tokens=8))
    return run, results


def test_evaluate_run_writes_results(trained_run):
    run, results = trained_run
    assert json.loads((run / "eval" / "results.json").read_text()) == results
    rows = {(r["benchmark"], r["model"]): r for r in results["benchmarks"]}
    assert set(rows) == {("cloze", "untrained"), ("cloze", "pretrain"), ("cloze_chat", "untrained"),
                         ("cloze_chat", "pretrain")}
    assert rows[("cloze", "pretrain")]["n"] == 20 and rows[("cloze", "pretrain")]["random"] == 0.25
    assert rows[("cloze_chat", "pretrain")]["chat"] is True and rows[("cloze", "pretrain")]["chat"] is False
    assert results["val"]["pretrain"]["loss"] > 0 and results["val"]["pretrain"]["perplexity"] > 1
    assert results["generation"]["new_tokens"] == 8 and results["generation"]["tokens_per_s"] > 0
    assert results["sft_answers"] == []  # no SFT model: nothing to compare


def test_report_card_of_an_evaluated_run(trained_run):
    run, _ = trained_run
    path = write_report(run)
    md = path.read_text(encoding="utf-8")
    assert path == run / "report.md"
    assert "| too_short | 10 |" in md and "| pretrain | 3 | 1,536 | 5.9 | 4.2 | 4.4 | 4.4 | 6.1 | 5,120.0 | 1.20% |" in md
    assert "| cloze | pretrain | 20 |" in md and "| cloze | untrained | 20 |" in md
    assert "![benchmarks](report_benchmarks.png)" in md and (run / "report_benchmarks.png").stat().st_size > 1000
    assert "![pretrain loss](report_pretrain_loss.png)" in md and (run / "report_pretrain_loss.png").is_file()
    assert "## SFT: answers before and after\n\n*Not run" in md
    assert "tokens/s: 8 new tokens, greedy, batch 1, model `pretrain`" in md


def test_cli_report_and_compare(trained_run, tmp_path):
    run, _ = trained_run
    bare = make_tiny_run(tmp_path / "bare")
    out = subprocess.run([sys.executable, "-m", "minigpt.report", str(bare)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("report.md") and (bare / "report.md").is_file()
    assert json.loads((bare / "eval" / "results.json").read_text())["benchmarks"] == []
    out = subprocess.run([sys.executable, "-m", "minigpt.report", str(bare), str(run)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    md = (run / "compare.md").read_text(encoding="utf-8")
    assert md == compare(bare, run) and "| pretrain val loss | — | 4.4 | — |" in md
    assert "| documents kept (train) |" in md and "cloze accuracy (pretrain)" in md
    bad = subprocess.run([sys.executable, "-m", "minigpt.report", str(tmp_path / "nope")], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "nope: run directory not found" in bad.stderr


def test_notebook_06_parameters_are_registered():
    src = (ROOT / "notebooks" / "06_evaluate.py").read_text(encoding="utf-8")
    cell = src.split('# %% tags=["parameters"]', 1)[1].split("# %%", 1)[0]
    names = {t.id for node in ast.walk(ast.parse(cell)) if isinstance(node, ast.Assign) for t in node.targets}
    assert {"config", "run_dir"} <= names <= set(registry("evaluate"))
    for config in ("tiny", "small", "medium", "ci"):
        assert load_params("evaluate", {"config": config}).config == config
    with pytest.raises(ValueError, match="mc_style: expected one of"):
        EvalConfig(mc_style="guess").validate()
