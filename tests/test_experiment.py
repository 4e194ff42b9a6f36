"""The sweep file's checks (each error names the file and the key) and the report on hand-made results."""
import json
import math

import pytest

from minigpt.experiment import SweepError, load_sweep, markdown_table, summary_table, write_report
from minigpt.experiment.runner import run_params

GOOD = """base:
  config: ci
  eval_interval: 5
budget_minutes: 0.5
seeds: [1, 2]
data: {data}
recipes:
  baseline: {{}}
  muon: {{optimizer_type: muon, learning_rate: 0.01}}
"""


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_a_good_sweep_is_read_with_types_and_order(tmp_path):
    s = load_sweep(write(tmp_path, GOOD.format(data=tmp_path / "corpus")))
    assert (s.name, s.config, s.budget_minutes, s.seeds) == ("s", "ci", 0.5, [1, 2])
    assert s.base == {"eval_interval": 5}
    assert s.recipes == {"baseline": {}, "muon": {"optimizer_type": "muon", "learning_rate": 0.01}}
    assert s.runs() == [("baseline", 1), ("muon", 1), ("baseline", 2), ("muon", 2)]
    assert s.data == tmp_path / "corpus"


def test_run_parameters_layer_base_recipe_seed_and_budget(tmp_path):
    s = load_sweep(write(tmp_path, GOOD.format(data=tmp_path / "corpus")))
    p = run_params(s, "muon", 2, tmp_path / "out" / "muon-seed2", 0.5)
    assert (p["optimizer_type"], p["learning_rate"], p["seed"], p["max_minutes"]) == ("muon", 0.01, 2, 0.5)
    assert (p["eval_interval"], p["max_steps"], p["d_model"], p["auto_resume"]) == (5, 0, 64, False)  # ci's d_model
    assert p["output_dir"] == str(tmp_path / "out" / "muon-seed2" / "pretrain")
    assert p["run_dir"] == str(tmp_path / "corpus")
    json.dumps(p)  # the run's process reads it as JSON


@pytest.mark.parametrize("text,message", [
    ("base: ci\nseeds: [1]\nrecipes: {a: {}}\n", "'budget_minutes' is missing"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: {}}\nbudget: 3\n", "unknown key 'budget'"),
    ("base: ci\nbudget_minutes: -1\nseeds: [1]\nrecipes: {a: {}}\n", "budget_minutes: expected a positive number"),
    ("base: ci\nbudget_minutes: ten\nseeds: [1]\nrecipes: {a: {}}\n", "budget_minutes: expected a positive number"),
    ("base: ci\nbudget_minutes: 1\nseeds: []\nrecipes: {a: {}}\n", "seeds: expected a non-empty list of integers"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1, 1]\nrecipes: {a: {}}\n", r"seeds: \[1, 1\] repeats a seed"),
    ("base: nosuch\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: {}}\n", "base.config: config: .*nosuch.yaml not found"),
    ("base: {eval_interval: 5}\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: {}}\n", "base: expected a params name"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: {lerning_rate: 1}}\n",
     "recipes.a.lerning_rate: unknown parameter for pretrain"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: {tokenizer_vocab_size: 300}}\n",
     "recipes.a.tokenizer_vocab_size: .*data and tokenizer keys go in base"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: {max_minutes: 3}}\n", "recipes.a.max_minutes: set by the sweep"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: {batch_size: many}}\n", "recipes.a.batch_size: batch_size: expected an integer"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {a: [1]}\n", "recipes.a: expected a mapping"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {../x: {}}\n", "is not a usable name"),
    ("base: ci\nbudget_minutes: 1\nseeds: [1]\nrecipes: {}\n", "recipes: expected a mapping of recipe name"),
    ("base: ci\nbudget_minutes: 1\nbudget_minutes: 2\nseeds: [1]\nrecipes: {a: {}}\n", "line 3: key 'budget_minutes' appears twice"),
    ("- a\n- b\n", "expected a mapping with keys"),
])
def test_bad_sweep_files_are_named(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SweepError, match=message) as e:
        load_sweep(path)
    assert str(path) in str(e.value)


def test_a_missing_sweep_lists_the_known_ones():
    with pytest.raises(SweepError, match=r"nosuch.yaml not found; expected one of \[.*'ci'.*\]"):
        load_sweep("nosuch")


def test_the_shipped_sweeps_load():
    abl = load_sweep("ablations_tiny")
    assert abl.budget_minutes == 10 and abl.seeds == [1, 2] and abl.config == "tiny"
    assert {"baseline", "muon", "qk_norm", "relu2", "untied", "wsd", "doc_aligned", "fp32", "bf16"} == set(abl.recipes)
    assert load_sweep("ci").budget_minutes <= 0.2 and len(load_sweep("ci").recipes) == 2
    assert set(load_sweep("example").recipes) == {"baseline", "muon"}


def fake_run(recipe, seed, bpcs):
    curve = [{"step": 10 * (i + 1), "train_s": 6.0 * (i + 1), "val_loss": b, "val_bpc": b} for i, b in enumerate(bpcs)]
    return {"recipe": recipe, "seed": seed, "steps": 10 * len(bpcs), "train_s": 6.0 * len(bpcs), "tokens_per_s": 1000.0 * seed,
            "peak_rss_mb": 300.0 + seed, "curve": curve, "final_val_bpc": bpcs[-1]}


def test_table_and_plot_from_results(tmp_path):
    results = {"sweep": {"name": "t", "recipes": {"baseline": {}, "muon": {}}}, "budget_minutes": 0.3,
               "runs": [fake_run("muon", 1, [8.0, 7.0, 6.0]), fake_run("baseline", 1, [8.0, 7.5, 7.0]),
                        fake_run("baseline", 2, [8.0, 7.4, 7.2]), fake_run("muon", 2, [8.0, 7.2, 6.4])]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    df = summary_table(results)
    assert list(df["recipe"]) == ["baseline", "muon"]  # the sweep's order, not the runs'
    base, muon = df.iloc[0], df.iloc[1]
    assert (base["val_bpc"], base["spread"]) == pytest.approx((7.1, 0.1))
    assert (muon["val_bpc"], muon["spread"], muon["vs_baseline"]) == pytest.approx((6.2, 0.2, -0.9))
    assert (muon["tokens_per_s"], muon["steps"], muon["peak_rss_mb"], muon["train_min"]) == pytest.approx((1500, 30, 302, 0.3))
    md = markdown_table(df)
    assert "| muon | 2 | 6.200 ± 0.200 | -0.900 | 1500 | 30 | 0.30 | 302 |" in md
    paths = write_report(tmp_path)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["plot"].stat().st_size > 10_000
    assert "6.200 ± 0.200" in paths["table"].read_text() and not math.isnan(base["val_bpc"])


def test_notebook_08_is_paired_with_literal_parameters_and_checked_outputs():
    """09 is not in the 01-08 chain (notebook_tools.NOTEBOOKS); nbval runs it on its own with the ci sweep."""
    import ast
    from pathlib import Path

    import jupytext
    import nbformat

    nb_dir = Path(__file__).resolve().parents[1] / "notebooks"
    from_ipynb = jupytext.writes(jupytext.read(nb_dir / "09_experiments.ipynb"), fmt="py:percent")
    assert from_ipynb == jupytext.writes(jupytext.read(nb_dir / "09_experiments.py"), fmt="py:percent"), \
        "run `.venv/bin/jupytext --sync notebooks/09_experiments.py`"
    nb = nbformat.read(nb_dir / "09_experiments.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert {n.targets[0].id: n.value.value for n in ast.parse(code[0].source).body} == {"sweep": "ci", "out": "", "minutes": 0.0}
    checked = [c for c in code if "# NBVAL_CHECK_OUTPUT" in c.source]
    assert checked and all(c.outputs for c in checked)
    assert all(c.execution_count is not None for c in code if c.get("outputs"))
    assert "run_sweep" in code[2].source and "# NBVAL_IGNORE_OUTPUT" in code[2].source
