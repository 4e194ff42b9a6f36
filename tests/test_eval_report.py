"""The report card: a run with missing stages says so, a run with a trained model gets every section,
`python -m minigpt.report` writes it (and compares two runs), and notebook 06's parameters are registered."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigpt.eval import EvalConfig, compare, embed_images, evaluate_run, render, stale_models, write_report
from minigpt.eval.runner import checkpoint_identity
from minigpt.data.skills import make_skills, write_skills_jsonl
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
                   "## Generation speed\n\n*Not run: not measured", "## Built-in skills\n\n*Not run: no skills",
                   "## Alignment (DPO)\n\n*Not run: no align/metrics.jsonl",
                   "## Reinforcement learning (GRPO)\n\n*Not run: no rl/metrics.jsonl"]:
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
    # the run's held-out skill problems, as notebook 01 writes them (here three families only, three of each)
    write_skills_jsonl(make_skills("test", 3, families=["copy", "compare", "add"]), run / "data" / "skills" / "test.jsonl")
    results = evaluate_run(run, EVAL)
    return run, results


EVAL = EvalConfig(cloze_items=20, cloze_prefix_chars=6, cloze_min_chars=4, cloze_max_chars=12, speed_new_tokens=8,
                  skills_per_family=2, skills_samples=2, skills_max_new_tokens=6)


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
    assert [a["prompt"] for a in results["chat_answers"]] == ["你好", "介绍一下中国", "你叫什么名字？"]
    assert all(set(a["replies"]) == {"pretrain"} for a in results["chat_answers"])
    assert results["models"]["pretrain"]["sha256"] == checkpoint_identity(run / "pretrain" / "final_model")["sha256"]
    assert results["models"]["untrained"]["seed"] == 0  # the micro model's config.json names no training seed
    assert set(results["skills"]) == {"untrained", "pretrain"} and stale_models(run, results) == {}
    skills = json.loads((run / "eval" / "skills.json").read_text())["stages"]["pretrain"]["result"]
    assert {f: r["n"] for f, r in skills["families"].items()} == {"copy": 2, "compare": 2, "add": 2}  # the run's file
    assert "pass@k" not in skills["mean"]  # sampled pass@k from SFT on only


def test_report_card_of_an_evaluated_run(trained_run):
    run, _ = trained_run
    path = write_report(run)
    md = path.read_text(encoding="utf-8")
    assert path == run / "report.md"
    assert "| too_short | 10 |" in md and "| pretrain | 3 | 1,536 | 5.9 | 4.2 | 4.4 | 4.4 | 6.1 | 5,120.0 | 1.20% |" in md
    assert "| cloze | pretrain | 20 |" in md and "| cloze | untrained | 20 |" in md
    assert "![benchmarks](report_benchmarks.png)" in md and (run / "report_benchmarks.png").stat().st_size > 1000
    assert "![pretrain loss](report_pretrain_loss.png)" in md and (run / "report_pretrain_loss.png").is_file()
    assert "## Chat answers of each stage\n\nGreedy replies to the same prompts, through the chat template.\n\n" \
           "| prompt | pretrain |" in md
    assert "## Built-in skills" in md and "| family | n | untrained | pretrain |" in md
    assert "![skills by stage](report_skills.png)" in md and (run / "report_skills.png").stat().st_size > 1000
    shown = embed_images(md, run)  # what notebook 06 displays: no path relative to the run folder is left
    assert "](report_" not in shown and shown.count("](data:image/png;base64,") == md.count(".png)")
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
    assert "| skills pass@1 (pretrain) | — | 0 | — |" in md
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


def _copy_run(run, dst):
    import shutil

    shutil.copytree(run, dst)
    return dst


def test_a_stage_trained_after_the_evaluation_is_not_evaluated_yet(trained_run, tmp_path):
    from minigpt.train.checkpoint import load_checkpoint

    run = _copy_run(trained_run[0], tmp_path / "run")
    model, tok, _ = load_checkpoint(run / "pretrain" / "final_model")
    save_checkpoint(run / "sft" / "final_model", model, {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256,
                                                         "train": {"seed": 7}}, tokenizer_dir=run / "tokenizer")
    results = json.loads((run / "eval" / "results.json").read_text())
    stale = stale_models(run, results)
    assert list(stale) == ["sft"] and "not evaluated yet" in stale["sft"]
    md = render(run)
    assert "*Not evaluated yet: `sft`:" in md.split("## Benchmarks", 1)[1]
    # the pretrained model is trained again (other weights): another hash, whatever the clock says
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_checkpoint(run / "pretrain" / "final_model", model, {"model": model.config.to_dict(),
                                                               "tokenizer_sha256": tok.sha256},
                    tokenizer_dir=run / "tokenizer")
    assert "changed after the evaluation" in stale_models(run, results)["pretrain"]
    out = subprocess.run([sys.executable, "-m", "minigpt.report", "--no-eval", str(run)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "eval" / "results.json").read_text()) == results  # --no-eval: marked, not redone
    assert "*Not evaluated yet:" in (run / "report.md").read_text(encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "minigpt.report", str(run)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    fresh = json.loads((run / "eval" / "results.json").read_text())
    assert stale_models(run, fresh) == {} and fresh["config"] == results["config"]  # the last evaluation's settings
    assert {r["model"] for r in fresh["benchmarks"]} == {"untrained", "pretrain", "sft"}
    assert fresh["models"]["untrained"]["seed"] == 0 and fresh["main_model"] == "sft"
    assert "Not evaluated yet" not in (run / "report.md").read_text(encoding="utf-8")
    assert "sft" in json.loads((run / "eval" / "skills.json").read_text())["stages"]


def test_align_section_labels_the_rejected_side_by_its_source(trained_run, tmp_path):
    run = _copy_run(trained_run[0], tmp_path / "run")
    (run / "align").mkdir()
    (run / "align" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.69}) + "\n")
    (run / "align" / "run_config.json").write_text(json.dumps({"params": {"pairs_source": "/data/my_dpo.jsonl"}}))
    (run / "align" / "align_summary.json").write_text(json.dumps({
        "before": {"reward_accuracy": 0.5, "rejected_logp_per_token": -3.0},
        "after": {"reward_accuracy": 0.5, "rejected_logp_per_token": -3.2}, "info": {"eval_pairs": 2}}))
    md = render(run)
    align = md.split("## Alignment (DPO)", 1)[1].split("\n## ", 1)[0]
    assert "the rejected side is the rejected reply (my_dpo.jsonl)" in align and "model's own" not in align
    assert "| rejected reply (my_dpo.jsonl): log-prob per token | -3 | -3.2 |" in align
    assert ("**held-out reward accuracy 0.500 [0.095, 0.905] before -> 0.500 [0.095, 0.905] after (n=2): the 95% "
            "intervals overlap; 2 held-out items cannot tell this change from noise.**") in align
    assert "## Reinforcement learning (GRPO)\n\n*Not run" in md
    (run / "rl").mkdir()
    (run / "rl" / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.1, "train_reward": 0.625,
                                                          "val_accuracy": 0.5, "val_accuracy/add": 0.25}) + "\n")
    rl = render(run).split("## Reinforcement learning (GRPO)", 1)[1].split("\n## ", 1)[0]
    assert "| train_reward | 0.625 |" in rl and "| val_accuracy | 0.5 |" in rl and "val_accuracy/add" not in rl


def test_every_model_scores_a_brought_benchmark_and_a_biased_one_is_flagged(trained_run, tmp_path):
    """A C-Eval CSV whose right choice is always the shortest: an untrained model, preferring short continuations
    (fewer tokens, a higher total log-likelihood), beats random on it; the run says so and why."""
    import csv

    run = _copy_run(trained_run[0], tmp_path / "run")
    bench = tmp_path / "ceval" / "val"
    bench.mkdir(parents=True)
    with open(bench / "toy_val.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
        for i in range(30):
            short, longs = "好。", ["今天天气很好，我们去公园散步。", "经济发展需要改革开放。", "新华社记者报道了这条消息。"]
            choices = longs[:]
            choices.insert(i % 4, short)
            w.writerow([i, f"问题{i}", *choices, "ABCD"[i % 4]])
    lines = []
    cfg = EvalConfig(**{**EVAL.__dict__, "eval_data": str(tmp_path / "ceval"), "mc_style": "cloze", "skills": False})
    results = evaluate_run(run, cfg, progress=lines.append)
    rows = {(r["benchmark"], r["model"]): r for r in results["benchmarks"]}
    assert {("ceval/toy", "untrained"), ("ceval/toy", "pretrain")} <= set(rows)  # every model, not the main one only
    assert [l.split()[1] for l in lines if l.startswith("benchmarks [")] == ["[1/2]", "[2/2]"]
    assert rows[("ceval/toy", "untrained")]["accuracy"] > 0.8
    flag = next(f for f in results["flags"] if f.startswith("ceval/toy:"))
    assert "the right choice is the longest in 0% of items and the shortest in 100% (25% if length said nothing)" in flag
    assert rows[("ceval/toy", "pretrain")]["flag"] == rows[("ceval/toy", "untrained")]["flag"]
    assert any(l.startswith("WARNING ceval/toy: biased") for l in lines)
    assert "**Warning, ceval/toy: biased" in render(run)


def test_bias_flag_on_items_whose_answer_is_the_longest():
    from minigpt.eval.scoring import MCItem, bias_flag

    items = [MCItem(f"q{i}", ["短", "也短", "这个最长的选项", "短短"][:], 2) for i in range(20)]
    msg = bias_flag(18, 20, 0.25, items)
    assert msg.startswith("biased: an untrained model scores 0.900 [0.699, 0.972] against 0.250 random")
    assert "longest in 100% of items and the shortest in 0%" in msg
    assert bias_flag(7, 20, 0.25, items) is None  # 0.35 [0.18, 0.57]: not far above random
