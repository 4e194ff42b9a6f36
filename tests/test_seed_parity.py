"""docs/seed_parity.md: every parameter it names is accepted by the notebooks it names, and no row is unexplained."""
import re
from pathlib import Path

import pytest

from minigpt.params import registry, section_aliases

ROOT = Path(__file__).resolve().parent.parent
SECTION_OF = {"01_data_clean": "clean", "02_tokenizer": "tokenizer", "03_pretrain": "pretrain", "04_sft": "sft",
              "05_generate": "generate"}
IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


def rows():
    out = []
    for line in (ROOT / "docs" / "seed_parity.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"00[0-4]", cells[0]):
            out.append(dict(zip(("seed", "kind", "seed_name", "minigpt", "where", "notes"), cells)))
    return out


def test_table_covers_every_seed_and_kind():
    r = rows()
    assert len(r) > 100
    assert {x["seed"] for x in r} == {"000", "001", "002", "003", "004"}
    assert {"flag", "script", "output", "feature"} <= {x["kind"] for x in r}


def test_no_row_left_unexplained():
    for r in rows():
        assert r["minigpt"], r
        if r["minigpt"].startswith("not supported"):
            assert len(r["notes"]) > 20, f"{r['seed_name']}: 'not supported' needs a reason"
        else:
            assert r["where"], r


@pytest.mark.parametrize("row", [r for r in rows() if r["kind"] == "flag" and not r["minigpt"].startswith("not supported")],
                         ids=lambda r: f"{r['seed']}:{r['seed_name']}")
def test_flag_parameters_are_accepted_where_named(row):
    names = [n for n in re.findall(r"`([^`]+)`", row["minigpt"]) if IDENT.match(n)]
    notebooks = [w.strip() for w in row["where"].split(",") if w.strip() in SECTION_OF]
    if not names or not notebooks:
        assert "minigpt." in row["minigpt"] or "python -m" in row["minigpt"], row  # a function / entry point instead
        return
    for nb in notebooks:
        section = SECTION_OF[nb]
        accepted = set(registry(section)) | set(section_aliases(section))
        for n in names:
            assert n in accepted, f"{n} ({row['seed_name']}) is not a parameter of notebook {nb}"


def test_functions_and_entry_points_exist():
    import importlib
    for r in rows():
        for ref in re.findall(r"`(minigpt\.[a-z_]+(?:\.[A-Za-z_]+)*)(?:\(\))?`", r["minigpt"]):
            parts = ref.split(".")
            for i in range(len(parts), 1, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ModuleNotFoundError:
                    continue
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
                break
            else:
                raise AssertionError(f"{ref} does not exist")
        for mod in re.findall(r"python -m (minigpt\.[a-z_]+)", r["minigpt"]):
            importlib.import_module(mod)


@pytest.mark.slow
def test_listed_outputs_are_written_by_a_demo_run():
    """Every output row's path exists after notebooks 01 -> 05 (the ci config: the tiny demo's code path, smaller)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from notebook_runs import executed_run

    run = executed_run()
    checked = 0
    for r in rows():
        if r["kind"] != "output":
            continue
        for path in re.findall(r"`([a-z_]+/[^`]+)`", r["minigpt"]):
            pattern = path.replace("{N}", "*")
            assert list(run.glob(pattern)), f"{path} ({r['seed']} {r['seed_name']}) was not written under {run}"
            checked += 1
    assert checked >= 10
