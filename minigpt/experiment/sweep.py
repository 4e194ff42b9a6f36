"""A sweep file: recipes (overrides of one base config) trained for the same time budget, over several seeds.

    base: tiny                      # a params/ name or a .yaml path; or a mapping {config: tiny, <overrides>}
    budget_minutes: 10              # training time per run (wall clock minus evaluation, saving, sampling)
    seeds: [1, 2]
    data: runs/experiments/corpus   # a run folder with data/, tokenizer/, tokens/ (prepared once if missing)
    recipes:
      baseline: {}
      muon: {optimizer_type: muon}

Every key is checked before anything runs; an error names the file and the key, and says what was expected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_yaml_strict
from ..params import ParameterError, coerce, read_config_file, registry, repo_root, section_aliases

TOP_KEYS = ("base", "budget_minutes", "seeds", "data", "recipes", "description")
# Set by the sweep itself, never by an override: the budget, the seed, where each run writes.
SWEEP_OWNED = ("max_minutes", "seed", "run_dir", "run_name", "output_dir", "resume_from", "auto_resume", "config")
DATA_SECTIONS = ("clean", "tokenizer")  # shared by every run: only the base may set their keys
RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(ValueError):
    """A bad sweep file: names the file and the key."""


@dataclass
class Sweep:
    name: str
    path: Path
    config: str  # the base params file (a params/ name or a path)
    base: dict[str, Any]  # the base's overrides (pretrain, clean and tokenizer keys)
    budget_minutes: float
    seeds: list[int]
    data: Path  # the run folder with the prepared corpus, tokenizer and token files
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""

    def runs(self) -> list[tuple[str, int]]:
        """(recipe, seed) in the order they run: every recipe for the first seed, then the next seed."""
        return [(r, s) for s in self.seeds for r in self.recipes]

    def pretrain_overrides(self, recipe: str) -> dict[str, Any]:
        """The base's and the recipe's pretraining parameters (the recipe wins)."""
        pre = registry("pretrain")
        return {**{k: v for k, v in self.base.items() if k in pre}, **self.recipes[recipe]}

    def data_overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.base.items() if k not in registry("pretrain")}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "config": self.config, "base": self.base,
                "budget_minutes": self.budget_minutes, "seeds": self.seeds, "data": str(self.data),
                "recipes": self.recipes, "description": self.description}


def sweep_path(name_or_path: str | Path) -> Path:
    """params/sweeps/NAME.yaml for a bare name, else the path as given."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p if p.is_absolute() or p.exists() else repo_root() / p
    return repo_root() / "params" / "sweeps" / f"{name_or_path}.yaml"


def load_sweep(name_or_path: str | Path) -> Sweep:
    """Read and check a sweep file (see the module docstring)."""
    path = sweep_path(name_or_path)
    if not path.is_file():
        avail = sorted(q.stem for q in (repo_root() / "params" / "sweeps").glob("*.yaml"))
        raise SweepError(f"sweep: {path} not found; expected one of {avail} or a path to a .yaml file")
    try:
        raw = load_yaml_strict(path)
    except ValueError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping with keys {list(TOP_KEYS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key '{unknown[0]}'; expected some of {list(TOP_KEYS)}")
    for key in ("base", "budget_minutes", "seeds", "recipes"):
        if key not in raw:
            raise SweepError(f"{path}: '{key}' is missing; a sweep needs base, budget_minutes, seeds and recipes")
    config, base = _base(path, raw["base"])
    recipes = _recipes(path, raw["recipes"])
    data = raw.get("data") or f"runs/experiments/{path.stem}/corpus"
    if not isinstance(data, str):
        raise SweepError(f"{path}: data: expected a run folder (a string), got {data!r}")
    data_path = Path(data) if Path(data).is_absolute() else repo_root() / data
    return Sweep(name=path.stem, path=path, config=config, base=base, budget_minutes=_budget(path, raw["budget_minutes"]),
                 seeds=_seeds(path, raw["seeds"]), data=data_path, recipes=recipes,
                 description=str(raw.get("description") or ""))


def _budget(path: Path, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10_000:
        raise SweepError(f"{path}: budget_minutes: expected a positive number of minutes, got {value!r}")
    return float(value)


def _seeds(path: Path, value: Any) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise SweepError(f"{path}: seeds: expected a non-empty list of integers such as [1, 2], got {value!r}")
    if len(set(value)) != len(value):
        raise SweepError(f"{path}: seeds: {value} repeats a seed; each seed runs once per recipe")
    return list(value)


def _base(path: Path, value: Any) -> tuple[str, dict[str, Any]]:
    """(params file, overrides) of `base:`, a name or a mapping with `config:` and overrides."""
    if isinstance(value, str):
        value = {"config": value}
    if not isinstance(value, dict) or not isinstance(value.get("config"), str):
        raise SweepError(f"{path}: base: expected a params name (e.g. tiny) or a mapping with 'config: tiny' "
                         f"and overrides, got {value!r}")
    config = value["config"]
    try:
        read_config_file(config)
    except ParameterError as e:
        raise SweepError(f"{path}: base.config: {e}") from e
    overrides = {k: v for k, v in value.items() if k != "config"}
    return config, _checked(path, "base", overrides, ("pretrain", *DATA_SECTIONS))


def _recipes(path: Path, value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not value:
        raise SweepError(f"{path}: recipes: expected a mapping of recipe name -> overrides (baseline: {{}}), got {value!r}")
    out = {}
    for name, overrides in value.items():
        if not isinstance(name, str) or not RECIPE_NAME.match(name):
            raise SweepError(f"{path}: recipes: {name!r} is not a usable name; expected letters, digits, '_', '-', '.'")
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise SweepError(f"{path}: recipes.{name}: expected a mapping of parameter -> value, got {overrides!r}")
        out[name] = _checked(path, f"recipes.{name}", overrides, ("pretrain",))
    return out


def _checked(path: Path, where: str, overrides: dict[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    """Overrides under canonical names, type-checked against the parameters of `sections`."""
    out = {}
    for key, value in overrides.items():
        if key in SWEEP_OWNED:
            raise SweepError(f"{path}: {where}.{key}: set by the sweep itself (budget_minutes, seeds, data); remove it")
        section = next((s for s in sections if key in registry(s) or key in section_aliases(s)), None)
        if section is None:
            hint = " (data and tokenizer keys go in base: every recipe shares one corpus)" if where != "base" and any(
                key in registry(s) for s in DATA_SECTIONS) else ""
            raise SweepError(f"{path}: {where}.{key}: unknown parameter for {', '.join(sections)}{hint}")
        canonical = section_aliases(section).get(key, (key,))[0]
        try:
            out[canonical] = coerce(canonical, value, registry(section)[canonical][0], f"{path} {where}")
        except ParameterError as e:
            raise SweepError(f"{path}: {where}.{key}: {e}") from e
    return out
