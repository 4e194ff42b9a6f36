"""Every parameter a notebook accepts works (issue 31, items 9 and 10).

- Every notebook's parameters cell parses for papermill (no "Unable to parse line", every name listed).
- Each notebook's parameters cell plus an injected cell with non-default values of every documented switch it
  takes (dropout, qk_norm, mlp, optimizer_type, lr_scheduler, use_lora, ...) resolves through `load_params`
  and builds its configs.
- 03's cells run in-process up to and including "One step by hand" with those switches (dropout 0.1 broke its
  `allclose` check), and 04's parameters-handling and "Before fine-tuning" cells with LoRA: a tiny run folder
  stands in for 01 and 02, so this stays fast and needs no kernel.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch

from minigpt.params import load_params, registry
from conftest import tiny_gpt, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))

pytestmark = pytest.mark.usefixtures("one_thread")


def code_cells(name: str) -> list[tuple[list[str], str]]:
    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    return [(c.metadata.get("tags", []), c.source) for c in nb.cells if c.cell_type == "code"]


def parameters_source(name: str) -> str:
    found = [src for tags, src in code_cells(name) if "parameters" in tags]
    assert len(found) == 1, f"{name}: expected one cell tagged parameters"
    return found[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_parses_every_parameters_cell(name, caplog):
    import papermill

    with caplog.at_level(logging.DEBUG, logger="papermill"):
        found = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
    assert not [r.getMessage() for r in caplog.records if "Unable to parse" in r.getMessage()]
    assigned = [t.id for node in ast.parse(parameters_source(name)).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    assert list(found) == assigned  # every parameter shows in --help-notebook, in order


def section_of(name: str) -> str | None:
    """The parameter section the notebook resolves (`load_params("pretrain", globals())`), None if it has none."""
    found = re.findall(r'load_params\("(\w+)"', (ROOT / "notebooks" / f"{name}.py").read_text(encoding="utf-8"))
    return found[0] if found else None


def switches(section: str) -> dict:
    """Non-default values of the documented switches that `section` takes: each differs from what ci resolves to."""
    reg = registry(section)
    base = load_params(section, {"config": "ci"})
    wanted = {"dropout": [0.1], "qk_norm": [True, False], "mlp": ["relu2", "swiglu"],
              "optimizer_type": ["muon", "adamw"], "lr_scheduler": ["wsd", "cosine"], "use_lora": [True, False],
              "tie_word_embeddings": [False, True], "pack_conversations": [True, False]}
    return {k: next(v for v in values if v != base[k]) for k, values in wanted.items() if k in reg}


def inject(namespace: dict, params_src: str, values: dict) -> None:
    """What papermill does: the parameters cell, then an injected cell; IPython's `In` records both."""
    injected = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    namespace["In"] = ["", params_src, injected]
    exec(compile(params_src, "<parameters>", "exec"), namespace)
    exec(compile(injected, "<injected-parameters>", "exec"), namespace)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_switch_resolves(name):
    from minigpt import ModelConfig, TrainConfig

    section = section_of(name)
    if section is None:
        pytest.skip(f"{name} resolves no training parameters (no load_params)")
    values = {"config": "ci", **switches(section)}
    ns: dict = {"__name__": "__main__"}
    inject(ns, parameters_source(name), values)
    P = load_params(section, ns)
    for k, v in values.items():
        assert P[k] == v, (name, k)
    reg = registry(section)
    if "max_steps" in reg and "learning_rate" in reg:
        P.build(TrainConfig)
    if "qk_norm" in reg and "d_model" in reg:
        P.build(ModelConfig)


@pytest.fixture
def run_folder(tmp_path):
    """01 and 02 done: a tokenizer, train/val token arrays, and a tiny pretrained checkpoint for 04."""
    from minigpt.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    tok = tiny_tokenizer(vocab_size=300)
    tok.save(run / "tokenizer")
    np.save(tmp_path / "train.npy", (np.arange(6000) * 7 % tok.vocab_size).astype(np.int32))
    (np.arange(3000) * 5 % tok.vocab_size).astype(np.uint16).tofile(tmp_path / "val.bin")
    model = tiny_gpt(tok.vocab_size, d_model=32, n_layers=2, max_seq_len=64)
    save_checkpoint(run / "pretrain" / "final_model", model,
                    {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256}, tokenizer_dir=run / "tokenizer")
    return run, {"train_data": str(tmp_path / "train.npy"), "val_data": str(tmp_path / "val.bin"), "token_dtype": "uint16"}


def run_until(name: str, namespace: dict, values: dict, last: str) -> str:
    """Execute `name`'s code cells in-process: parameters, the injected values, then every cell up to and
    including the one whose source contains `last`. Returns what they printed."""
    cells = code_cells(name)
    start = next(i for i, (tags, _) in enumerate(cells) if "parameters" in tags)
    inject(namespace, cells[start][1], values)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for _, src in cells[start + 1:]:
            exec(compile(src, f"<{name}>", "exec"), namespace)
            if last in src:
                return out.getvalue()
    raise AssertionError(f"{name}: no cell contains {last!r}")


@pytest.mark.parametrize("combo", [
    {"dropout": 0.1, "qk_norm": True, "mlp": "relu2", "optimizer_type": "muon", "lr_scheduler": "wsd"},
    {"dropout": 0.1, "qk_norm": False, "mlp": "swiglu", "optimizer_type": "adamw", "lr_scheduler": "cosine",
     "tie_word_embeddings": False},
])
def test_03_one_step_by_hand_with_every_switch(run_folder, combo):
    run, data = run_folder
    values = {"config": "ci", "run_dir": str(run), "max_steps": 4, "batch_size": 2, "seq_len": 16, "d_model": 32,
              "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "device": "cpu", **data, **combo}
    ns: dict = {"__name__": "__main__"}
    run_until("03_pretrain", ns, values, "build_pretrain_trainer(")
    rng = torch.get_rng_state()
    by_hand = next(src for _, src in code_cells("03_pretrain") if "torch.allclose(loss, model(x, y)[1])" in src)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(by_hand, "<03 one step by hand>", "exec"), ns)  # its asserts hold with dropout 0.1
    assert "gradient norm" in out.getvalue() and "after one AdamW step" in out.getvalue()
    assert torch.equal(torch.get_rng_state(), rng)  # the training below draws as if the cell had not run
    cfg = ns["trainer"].model.config
    assert (cfg.qk_norm, cfg.mlp, cfg.dropout) == (combo["qk_norm"], combo["mlp"], 0.1)
    assert ns["P"].optimizer_type == combo["optimizer_type"] and ns["P"].lr_scheduler == combo["lr_scheduler"]


def test_04_parameters_and_first_cells_with_lora(run_folder):
    run, _ = run_folder
    values = {"config": "ci", "run_dir": str(run), "max_steps": 2, "batch_size": 2, "chat_source": "chinese",
              "device": "cpu", "use_lora": True, "lora_rank": 2, "pack_conversations": True, "dropout": 0.1,
              "optimizer_type": "adamw", "lr_scheduler": "wsd", "skills_fraction": 0.0}
    ns: dict = {"__name__": "__main__"}
    run_until("04_sft", ns, values, "before = [")
    trainer = ns["trainer"]
    assert trainer is not None and ns["P"].use_lora is True
    assert any("lora" in n for n, _ in trainer.model.named_parameters())
    assert len(ns["before"]) == 3 and all(isinstance(t, str) for t in ns["before"])
