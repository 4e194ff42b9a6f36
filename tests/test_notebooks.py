"""The notebooks as a product: paired .py files in sync, small committed outputs that nbval can compare,
and (slow) a papermill run of 01 -> 06 on params/ci.yaml with checks on what the executed notebooks show."""
from __future__ import annotations

import ast
import json
import math
import re

import jupytext
import nbformat
import pytest

import notebook_runs
from notebook_tools import (MAX_NOTEBOOK_BYTES, MAX_OUTPUT_BYTES, MAX_STREAM_LINES, NB_DIR, NOTEBOOKS, WIDGET_MIME,
                            outputs_config)


def read(name):
    return nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def marker(cell, name):
    return cell.source.lstrip().startswith(f"# {name}") or name.lower().replace("_", "-") in cell.metadata.get("tags", [])


# ---- pairing and committed outputs (fast) -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pair_in_sync(name):
    """The .py (reviewed in diffs) and the .ipynb (run, rendered on GitHub) hold the same cells."""
    py = NB_DIR / f"{name}.py"
    assert py.is_file(), f"{py} is missing: pair it with `jupytext --set-formats ipynb,py:percent notebooks/{name}.ipynb`"
    from_ipynb = jupytext.writes(jupytext.read(NB_DIR / f"{name}.ipynb"), fmt="py:percent")
    from_py = jupytext.writes(jupytext.read(py), fmt="py:percent")
    assert from_ipynb == from_py, (
        f"notebooks/{name}.py and .ipynb differ: run `.venv/bin/jupytext --sync notebooks/{name}.py` "
        f"(or --sync the .ipynb if that is the one you edited)")
    assert read(name).metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_small(name):
    path = NB_DIR / f"{name}.ipynb"
    size = path.stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, f"{path} is {size:,} bytes (limit {MAX_NOTEBOOK_BYTES:,}): regenerate with `make notebooks-outputs`"
    nb = read(name)
    assert "widgets" not in nb.metadata, "widget state is stale and large: strip it (make notebooks-outputs)"
    for i, cell in enumerate(code_cells(nb)):
        for out in cell.get("outputs", []):
            n = len(json.dumps(out))
            assert n < MAX_OUTPUT_BYTES, f"{name} code cell {i}: one output is {n:,} bytes"
            if out.get("output_type") == "stream":
                assert out["text"].count("\n") <= MAX_STREAM_LINES + 1, f"{name} code cell {i}: thousands of lines"
                assert not re.search(r"\d+%\|", out["text"]), f"{name} code cell {i}: a progress bar was committed"
            data = out.get("data", {})
            if WIDGET_MIME in data:
                assert "%|" not in data.get("text/plain", ""), f"{name} code cell {i}: a tqdm widget was committed"
        if cell.get("outputs"):
            assert cell.execution_count is not None, f"{name} code cell {i} has outputs but no execution count (nbval rejects it)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_and_markers(name):
    nb = read(name)
    cells = code_cells(nb)
    assert "parameters" in cells[0].metadata.get("tags", []), "the first code cell must be tagged `parameters`"
    for node in ast.parse(cells[0].source).body:  # plain literals: papermill's overrides must not be shadowed
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), f"not a literal: {ast.unparse(node)}"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in cells), "a papermill injected cell was committed"
    checked = [c for c in cells if marker(c, "NBVAL_CHECK_OUTPUT")]
    assert checked, f"{name} has no # NBVAL_CHECK_OUTPUT cell"
    for c in checked:
        assert c.get("outputs"), f"{name}: a CHECK_OUTPUT cell has no committed output to compare:\n{c.source[:200]}"
    for c in cells:  # display updates / clear_output confuse nbval: live plots are never compared
        if "trainer.fit()" in c.source:
            assert marker(c, "NBVAL_IGNORE_OUTPUT"), f"{name}: the training (live plot) cell must be # NBVAL_IGNORE_OUTPUT"


def test_outputs_come_from_one_config():
    config = outputs_config()  # raises if the notebooks disagree
    for name in NOTEBOOKS:
        first = code_cells(read(name))[1]
        if name == "01_data_clean":
            assert f"config: {config} " in "".join(o.get("text", "") for o in first.outputs)


# ---- papermill: 01 -> 06 on params/ci.yaml (slow) ------------------------------------------------------------------

@pytest.fixture(scope="session")
def executed():
    run_dir = notebook_runs.executed_run("ci")
    return run_dir, {n: nbformat.read(run_dir / "notebooks" / f"{n}.ipynb", as_version=4) for n in NOTEBOOKS}


def outputs_of(nb, needle):
    cells = [c for c in code_cells(nb) if needle in c.source]
    assert len(cells) == 1, f"expected one cell containing {needle!r}"
    return cells[0].outputs


def text_of(outputs):
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)


@pytest.mark.slow
def test_no_cell_raised(executed):
    _, nbs = executed
    for name, nb in nbs.items():
        errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
        assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
        assert all(c.execution_count for c in code_cells(nb)), f"{name}: a cell did not run"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["03_pretrain", "04_sft"])
def test_live_plot_leaves_one_image(executed, name):
    outs = outputs_of(executed[1][name], "trainer.fit()")
    images = [o for o in outs if "image/png" in o.get("data", {})]
    assert len(images) == 1, f"{name}: the live plot left {len(images)} images (expected one, updated in place)"
    assert len(images[0]["data"]["image/png"]) < MAX_OUTPUT_BYTES
    assert "'stop_reason': 'max_steps'" in text_of(outs)


@pytest.mark.slow
def test_pretrain_loss_is_finite_and_checkpoints_exist(executed):
    run_dir, nbs = executed
    records = [json.loads(l) for l in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and not r.get("skipped")]
    assert steps[-1]["step"] == 30 and math.isfinite(steps[-1]["loss"])
    evals = [r for r in records if "val_loss" in r]
    assert math.isfinite(evals[-1]["val_loss"]) and evals[-1]["val_loss"] < evals[0]["val_loss"] + 0.5
    assert (run_dir / "pretrain" / "final_model" / "model.safetensors").is_file()
    shown = text_of(outputs_of(nbs["03_pretrain"], "read_metrics(trainer.metrics_path)"))
    assert re.search(r"val loss: [\d.]+ at step \d+ -> [\d.]+ at step 30", shown), shown
    panel = outputs_of(nbs["03_pretrain"], "TrainingPanel(")
    assert len(panel) == 1 and WIDGET_MIME in panel[0]["data"], "03's panel is shown once (and nothing waits for a click)"


@pytest.mark.slow
def test_generate_writes_samples_and_export(executed):
    run_dir, nbs = executed
    samples = (run_dir / "samples.md").read_text(encoding="utf-8")
    assert "## Samples" in samples and "max_new_tokens | 20" in samples
    nb = nbs["05_generate"]
    assert "sft/final_model" in text_of(outputs_of(nb, "load_checkpoint(ckpt_dir)"))
    assert text_of(outputs_of(nb, "print(gen.generate(P.prompt, gen_cfg))")).strip(), "no sample printed"
    assert "model.safetensors" in text_of(outputs_of(nb, "export_hf("))
    assert (run_dir / "hf" / "config.json").is_file()
    panel = outputs_of(nb, "GenerationPanel(")
    assert len(panel) == 1 and WIDGET_MIME in panel[0]["data"]


@pytest.mark.slow
def test_evaluate_writes_benchmarks_and_the_report_card(executed):
    run_dir, nbs = executed
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    models = {r["model"] for r in results["benchmarks"] if r["benchmark"] == "cloze"}
    assert models == {"untrained", "pretrain", "sft"}, models
    assert (run_dir / "eval" / "cloze.jsonl").is_file() and (run_dir / "eval" / "cloze_chat.jsonl").is_file()
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    for section in ("## Environment", "## Data", "## Tokenizer", "## Model", "## Training", "## Validation",
                    "## Benchmarks", "## Built-in skills", "## Alignment (DPO)", "## Reinforcement learning (GRPO)",
                    "## Chat answers of each stage", "## Samples", "## Generation speed", "## Parameters"):
        assert section in report, section
    # in this chain 06 runs before 07 and 08 (make demo runs it last): exactly those two sections say "Not run"
    assert report.count("*Not run") == 2 and "no align/metrics.jsonl" in report and "no rl/metrics.jsonl" in report
    assert "| cloze | sft |" in report and (run_dir / "report_benchmarks.png").is_file()
    shown = text_of(outputs_of(nbs["06_evaluate"], "write_report(P.run_dir)"))
    assert "report.md" in shown


@pytest.mark.slow
def test_deterministic_outputs_match_the_committed_ones(executed):
    """The same comparison nbval makes, on the papermill run: helps read a failure when both fail."""
    if outputs_config() != "ci":
        pytest.skip(f"committed outputs come from config {outputs_config()!r}; nbval compares those")
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns(open(NB_DIR / "nbval_sanitize.cfg").read())

    def clean(text):
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    for name, ran in executed[1].items():
        committed = [c for c in code_cells(read(name)) if marker(c, "NBVAL_CHECK_OUTPUT")]
        for cell in committed:
            fresh = outputs_of(ran, cell.source.splitlines()[1])
            assert clean(text_of(fresh)) == clean(text_of(cell.outputs)), f"{name}: output changed:\n{cell.source[:300]}"
