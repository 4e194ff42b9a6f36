"""The committed notebooks' outputs: re-execute them in place, keep the outputs small, and say which config made them.

    python tests/notebook_tools.py outputs [--config ci] [--run-dir runs/nb-outputs]   # `make notebooks-outputs`
    python tests/notebook_tools.py outputs --from runs/demo/notebooks                  # reuse `make demo`'s run
    python tests/notebook_tools.py outputs --only 06_evaluate --run-dir runs/nbval     # one notebook, on a finished run
    python tests/notebook_tools.py config                                              # the config they came from

nbval compares the `# NBVAL_CHECK_OUTPUT` cells of the committed notebooks with a fresh run, so that fresh run
must use the config the committed outputs came from: it is stored in each notebook's metadata
(`metadata.minigpt.outputs_config`) and `make test` reads it with the `config` command.
"""
from __future__ import annotations

import argparse
import ast
import copy
import os
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ("01_data_clean", "02_tokenizer", "03_pretrain", "04_sft", "05_generate", "06_evaluate", "07_align", "08_rl")
DEFAULT_CONFIG = "ci"

# Bounds on committed notebooks (tests/test_notebooks.py checks them).
MAX_NOTEBOOK_BYTES = 400_000
MAX_OUTPUT_BYTES = 150_000
MAX_STREAM_LINES = 200

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_PROGRESS = re.compile(r"\d+%\|")
PANEL_NOTE = "(an interactive panel: open the notebook in JupyterLab and run it to use the controls)"


def outputs_config(nb_dir: Path = NB_DIR) -> str:
    """The config the committed outputs came from; one value for all the notebooks."""
    found = set()
    for name in NOTEBOOKS:
        nb = nbformat.read(nb_dir / f"{name}.ipynb", as_version=4)
        found.add(nb.metadata.get("minigpt", {}).get("outputs_config", DEFAULT_CONFIG))
    if len(found) != 1:
        raise SystemExit(f"the committed notebooks disagree on outputs_config: {sorted(found)}; "
                         "regenerate them together with `make notebooks-outputs`")
    return found.pop()


def _is_progress_bar(out: dict) -> bool:
    data = out.get("data", {})
    return WIDGET_MIME in data and bool(_PROGRESS.search(str(data.get("text/plain", ""))))


def clean_outputs(nb, config: str):
    """Small, reviewable outputs: no progress bars, merged streams, no widget state, no timing metadata."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if cell.cell_type != "code":
            continue
        outs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") in ("display_data", "execute_result") and _is_progress_bar(out):
                continue  # tqdm widgets: saved as "0%" (their state is not kept) and meaningless on GitHub
            if out.get("output_type") in ("display_data", "execute_result") and WIDGET_MIME in out.get("data", {}):
                out["data"]["text/plain"] = PANEL_NOTE  # the widget repr is a wall of VBox(children=...)
            if (out.get("output_type") == "stream" and outs and outs[-1].get("output_type") == "stream"
                    and outs[-1]["name"] == out["name"]):
                outs[-1]["text"] += out["text"]
                continue
            outs.append(out)
        for out in outs:
            if out.get("output_type") == "stream":
                lines = out["text"].splitlines(keepends=True)
                if len(lines) > MAX_STREAM_LINES:
                    out["text"] = "".join(lines[:MAX_STREAM_LINES // 2] + [f"... {len(lines) - MAX_STREAM_LINES} lines cut ...\n"]
                                          + lines[-MAX_STREAM_LINES // 2 + 1:])
        cell.outputs = outs
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    nb.metadata["minigpt"] = {"outputs_config": config,
                              "note": f"outputs of a run with params/{config}.yaml: python tests/notebook_tools.py outputs --config {config}"}
    return nb


def _write(nb, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)


def execute_in_place(config: str, run_dir: Path, names=NOTEBOOKS, timeout: int = 1800) -> None:
    """Run each committed notebook (in order, one fresh run dir) with MINIGPT_CONFIG, as nbval does; write back.

    With only some of the notebooks (`--only`), run_dir must hold what the earlier ones wrote, and is kept."""
    from nbclient import NotebookClient

    if tuple(names) == NOTEBOOKS and run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: resumable stages must not pick up an old one
    os.environ.update(MINIGPT_CONFIG=config, MINIGPT_RUN_DIR=str(run_dir))
    for name in names:
        path = NB_DIR / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        t = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}},
                       record_timing=False).execute()
        _write(clean_outputs(nb, config), path)
        print(f"[outputs] {name}: {time.perf_counter() - t:.0f}s, {path.stat().st_size:,} bytes", flush=True)


def _injected_config(cell) -> str | None:
    for node in ast.walk(ast.parse(cell.source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "config" for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def copy_from_executed(src_dir: Path, names=NOTEBOOKS) -> None:
    """Take the outputs of papermill-executed copies (e.g. `make demo`'s runs/demo/notebooks) into the committed ones."""
    for name in names:
        path = NB_DIR / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        ran = nbformat.read(src_dir / f"{name}.ipynb", as_version=4)
        injected = [c for c in ran.cells if "injected-parameters" in c.metadata.get("tags", [])]
        config = (_injected_config(injected[0]) if injected else None) or DEFAULT_CONFIG
        ran_cells = [c for c in ran.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        if [c.source for c in ran_cells] != [c.source for c in nb.cells]:
            raise SystemExit(f"{src_dir / (name + '.ipynb')}: its cells differ from {path}; run it again from the current notebooks")
        for mine, theirs in zip(nb.cells, ran_cells):
            if mine.cell_type == "code":
                mine.outputs = copy.deepcopy(theirs.outputs)
                mine.execution_count = theirs.execution_count
        _write(clean_outputs(nb, str(config)), path)
        print(f"[outputs] {name}: from {src_dir} (config {config}), {path.stat().st_size:,} bytes")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("outputs", help="re-execute the notebooks in place and keep the outputs small")
    o.add_argument("--config", default=DEFAULT_CONFIG)
    o.add_argument("--run-dir", default="runs/nb-outputs")
    o.add_argument("--from", dest="from_dir", help="copy outputs from executed notebooks in this folder instead")
    o.add_argument("--only", nargs="+", choices=NOTEBOOKS, metavar="NAME",
                   help="only these notebooks, on a --run-dir that holds what the earlier ones wrote (kept as it is)")
    sub.add_parser("config", help="print the config the committed outputs came from")
    args = ap.parse_args(argv)
    if args.cmd == "config":
        print(outputs_config())
        return 0
    names = tuple(n for n in NOTEBOOKS if n in (args.only or NOTEBOOKS))
    if args.from_dir:
        copy_from_executed(Path(args.from_dir), names)
    else:
        run_dir = Path(args.run_dir)
        execute_in_place(args.config, run_dir if run_dir.is_absolute() else ROOT / run_dir, names)
    print("[outputs] now: .venv/bin/jupytext --sync notebooks/*.ipynb  (the .py files do not hold outputs; this only checks the pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
