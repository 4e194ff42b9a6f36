"""Small parameter edges of issue 31 (item 12): an empty run_name, given explicitly or in a params file, is
refused naming the key; only run_name left out means runs/default."""
from __future__ import annotations

import pytest

from minigpt.params import ParameterError, load_params


def test_empty_run_name_is_refused_naming_the_key(tmp_path):
    for value in ("", "   "):
        with pytest.raises(ParameterError, match=r"^run_name: '\s*' from explicit parameter is empty; expected a plain "
                                                 r"folder name such as 'demo' \(leave run_name out"):
            load_params("pretrain", run_name=value)
    f = tmp_path / "mine.yaml"
    f.write_text('config: mine\nrun_name: ""\n', encoding="utf-8")
    with pytest.raises(ParameterError, match=r"run_name: '' from .*mine\.yaml is empty"):
        load_params("pretrain", config=str(f))


def test_run_name_left_out_is_runs_default():
    P = load_params("sft", {})
    assert P.run_dir.parts[-2:] == ("runs", "default")
    assert load_params("sft", run_name="demo").run_dir.parts[-2:] == ("runs", "demo")
