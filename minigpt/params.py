"""Notebook parameters: one registry, YAML presets in `params/`, and strict validation.

Every notebook's first code cell holds plain literals (tagged `parameters`). The next cell calls
`load_params(section, globals())`, which merges, lowest first:

    dataclass defaults  <  params/<config>.yaml top level  <  its `<section>:` block  <  explicit values

An explicit value is anything not None set in the parameters cell or injected by papermill
(`-p`, `-y`, `-f`). Unknown keys and values of the wrong type stop the notebook here, naming the key.
The registry is built from the library's config dataclasses, so a new field is a new parameter.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any

from .config import check_run_name, load_yaml_strict

logger = logging.getLogger(__name__)

T = typing.TypeVar("T")

# section -> (notebook, [dataclass paths]); a section is also the name of a YAML block for that notebook.
SECTIONS: dict[str, tuple[str, list[str]]] = {
    "clean": ("01_data_clean", ["minigpt.data.clean:CleanConfig", "minigpt.data.skills:SkillsConfig"]),
    "tokenizer": ("02_tokenizer", ["minigpt.data.tokenizer:TokenizerConfig"]),
    "pretrain": ("03_pretrain", ["minigpt.config:ModelConfig", "minigpt.config:TrainConfig"]),
    "sft": ("04_sft", ["minigpt.config:TrainConfig", "minigpt.train.sft:SFTConfig"]),
    "generate": ("05_generate", ["minigpt.infer.generate:GenerationConfig"]),
    "evaluate": ("06_evaluate", ["minigpt.eval.config:EvalConfig"]),
    "align": ("07_align", ["minigpt.config:TrainConfig", "minigpt.train.dpo:DPOConfig"]),
    "rl": ("08_rl", ["minigpt.config:TrainConfig", "minigpt.train.rl:RLConfig"]),
}

# Parameters every notebook takes.
COMMON: dict[str, tuple[Any, Any]] = {
    "config": (str, "tiny"),
    "run_dir": (str, "runs/default"),
    "run_name": (str, ""),
    "log_level": (str, "INFO"),
}

# Parameters that belong to a notebook but to no dataclass: name -> (type, default).
EXTRAS: dict[str, dict[str, tuple[Any, Any]]] = {
    "pretrain": {
        "preset": (str, "tiny"),
        "show_widgets": (bool, True),
        "live_plot_interval": (int, 10),
        # token files as input (.npy of ints, or raw .bin with token_dtype) instead of runs/<run>/tokens
        "train_data": (str, ""),
        "val_data": (str, ""),
        "token_dtype": (str, ""),
        # continue pretraining a minigpt checkpoint or a downloaded Hugging Face folder (minigpt/convert.py)
        "init_from": (str, ""),
        # DDP through launch(): torchrun in a subprocess, on one node or several
        "nproc_per_node": (int, 1),
        "nnodes": (int, 1),
        "node_rank": (int, 0),
        "master_addr": (str, "127.0.0.1"),
        "master_port": (int, 29500),
    },
    # init_from: a minigpt checkpoint or a downloaded Hugging Face folder (imported once, minigpt/convert.py)
    "sft": {"pretrained_checkpoint": (str, ""), "init_from": (str, ""), "show_widgets": (bool, True),
            "live_plot_interval": (int, 10)},
    "generate": {
        "checkpoint": (str, ""),
        "prompt": (str, "你好，"),
        "prompts_file": (str, ""),
        "chat_message": (str, "你好"),
        "export_dir": (str, ""),
        "show_widgets": (bool, True),
        # decoding speed (native_decode.py): "int8" weights for the decode steps; "auto"/"native"/"model" step ("torch" = "model")
        "quantize": (str, ""),
        "decode_backend": (str, "auto"),
        "bench_new_tokens": (int, 64),
    },
}

# Section defaults that differ from the dataclass defaults (fine-tuning: a low learning rate, warmup 100).
SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"learning_rate": 3e-5, "min_lr": 3e-6, "warmup_steps": 100, "max_steps": 1000, "sample_prompts": []},
    "align": {"learning_rate": 1e-5, "min_lr": 1e-6, "warmup_steps": 10, "max_steps": 200, "sample_prompts": []},
    "rl": {"learning_rate": 1e-5, "min_lr": 1e-6, "warmup_steps": 5, "max_steps": 100, "batch_size": 16,
           "sample_prompts": []},
}

# Model-shape fields default to None: "take the preset's value" (explicit shape values override a preset).
MODEL_OVERRIDE_SECTIONS = {"pretrain"}

# Other names for the same knobs (other training scripts' flags, and earlier minigpt names): accepted as
# parameters and mapped onto the canonical name. name -> (canonical, transform or None, the seed that uses it)
ALIASES: dict[str, tuple[str, Any, str]] = {
    "max_lr": ("learning_rate", None, "003"),
    "max_iters": ("max_steps", None, "004"),
    "checkpoint_interval": ("save_interval", None, "003"),
    "save_steps": ("save_interval", None, "000"),
    "dynamic_seq_length": ("context_growth", None, "003"),
    "min_seq_length": ("context_growth_from", None, "003"),
    "max_seq_length": ("context_growth_to", None, "003"),
    "disable_optimizations": ("disable_speedups", None, "000"),
    "max_grad_norm": ("grad_clip", None, "004"),
    **{name: ("output_dir", None, seed) for name, seed in (("out_dir", "002"), ("log_dir", "003"), ("checkpoint_dir", "004"))},
    "load_checkpoint": ("resume_from", None, "004"),
    "checkpoint_path": ("resume_from", None, "003"),
    "grad_accumulation_steps": ("accumulation_steps", None, "003"),
    "num_workers": ("dataloader_workers", None, "003"),
    "compile": ("enable_compile", None, "003"),
    "wandb_log": ("use_wandb", None, "003"),
    "context_length": ("seq_len", None, "004"),
    "model_path": ("checkpoint", None, "002"),
    "batch_file": ("prompts_file", None, "002"),
    "greedy": ("do_sample", lambda v: not v, "002"),
    "resume": ("auto_resume", None, "002/003"),
}

_PARAM_CELL_MARKERS = ("# Parameters", "# parameters")


class ParameterError(ValueError):
    """A bad notebook parameter: names the key, where it came from and what was expected."""


def repo_root() -> Path:
    """The repository root: $MINIGPT_ROOT, else the folder holding the installed package's `params/`."""
    env = os.environ.get("MINIGPT_ROOT")
    if env:
        return Path(env).resolve()
    pkg_parent = Path(__file__).resolve().parent.parent
    if (pkg_parent / "params").is_dir():
        return pkg_parent
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "params").is_dir() and (p / "minigpt").is_dir():
            return p
    return here


def _load_class(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _field_types(cls) -> dict[str, tuple[Any, Any]]:
    """Flat name -> (type, default) of a dataclass's fields; a field that is itself a dataclass (TrainConfig's
    groups) contributes its own fields under their flat names."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_field_types(hints[f.name]))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        out[f.name] = (hints[f.name], default)
    return out


def registry(section: str) -> dict[str, tuple[Any, Any]]:
    """name -> (type, default) for every parameter notebook `section` accepts."""
    if section not in SECTIONS:
        raise ParameterError(f"unknown notebook section {section!r}; expected one of {sorted(SECTIONS)}")
    reg: dict[str, tuple[Any, Any]] = dict(COMMON)
    for path in SECTIONS[section][1]:
        cls = _load_class(path)
        fields = _field_types(cls)
        if section in MODEL_OVERRIDE_SECTIONS and cls.__name__ == "ModelConfig":
            fields = {k: (t | None if not _is_optional(t) else t, None) for k, (t, _) in fields.items()}
        reg.update(fields)
    reg.update(EXTRAS.get(section, {}))
    for k, v in SECTION_DEFAULTS.get(section, {}).items():
        reg[k] = (reg[k][0], v)
    return reg


def all_parameter_names() -> set[str]:
    """Every name some notebook accepts, aliases included."""
    names: set[str] = set()
    for s in SECTIONS:
        names |= set(registry(s)) | set(section_aliases(s))
    return names


def section_aliases(section: str) -> dict[str, tuple[str, Any, str]]:
    reg = registry(section)
    return {a: v for a, v in ALIASES.items() if v[0] in reg}


def resolve_aliases(section: str, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Rename aliases to canonical names; an alias and its canonical name with different values is an error."""
    aliases = section_aliases(section)
    out = {k: v for k, v in values.items() if k not in ALIASES}
    for k, v in values.items():
        if k not in aliases or v is None:
            continue
        canonical, transform, _seed = aliases[k]
        value = transform(v) if transform else v
        if canonical in out and out[canonical] is not None and out[canonical] != value:
            raise ParameterError(f"{k}: alias of {canonical}, but both are set ({v!r} vs {out[canonical]!r}) ({where})")
        out[canonical] = value
    return out


def _is_optional(t) -> bool:
    return type(None) in typing.get_args(t)


def coerce(key: str, value: Any, t: Any, where: str) -> Any:
    """Check (and gently coerce) `value` against annotation `t`; raise ParameterError naming the key."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(key, value, t, where)
    if origin is list:
        return _coerce_list(key, value, t, where)
    scalar = _SCALARS.get(t)
    if scalar is None:
        raise ParameterError(f"{key}: unsupported parameter type {getattr(t, '__name__', str(t))}")
    return scalar(key, value, where)


def _coerce_union(key: str, value: Any, t: Any, where: str) -> Any:
    args = typing.get_args(t)
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(key, value, a, where)
        except ParameterError as e:
            errors.append(str(e))
    raise ParameterError(errors[0] if errors else f"{key}: bad value {value!r} ({where})")


def _coerce_list(key: str, value: Any, t: Any, where: str) -> list:
    args = typing.get_args(t)
    inner = args[0] if args else str
    if isinstance(value, str):  # -p data_files a.jsonl,b.jsonl or '["a.jsonl", "b.jsonl"]' (a JSON list)
        value = [v.strip().strip("\"'") for v in value.strip().strip("[]").split(",") if v.strip().strip("\"'")]
    value = list(value) if isinstance(value, tuple) else value
    if not isinstance(value, list):
        raise ParameterError(f"{key}: expected a list of {inner.__name__}, got {value!r} ({where})")
    return [coerce(f"{key}[{i}]", v, inner, where) for i, v in enumerate(value)]


def _coerce_bool(key: str, value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ParameterError(f"{key}: expected true or false, got {value!r} ({where})")


def _coerce_number(kind: type, what: str):
    """int or float: numbers of that kind (an integral float for int) and strings that parse; never a bool."""
    def convert(key: str, value: Any, where: str) -> Any:
        if not isinstance(value, bool):
            if kind is int and isinstance(value, int):
                return value
            if kind is int and isinstance(value, float) and value.is_integer():
                return int(value)
            if kind is float and isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    pass
        raise ParameterError(f"{key}: expected {what}, got {value!r} ({where})")
    return convert


def _coerce_str(key: str, value: Any, where: str) -> str:
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("config",):
        return str(value)
    raise ParameterError(f"{key}: expected a string, got {value!r} ({where})")


def _coerce_dict(key: str, value: Any, where: str) -> dict:
    if isinstance(value, dict):
        return value
    raise ParameterError(f"{key}: expected a mapping, got {value!r} ({where})")


# annotation -> check-and-coerce function for the plain types parameters have
_SCALARS = {bool: _coerce_bool, int: _coerce_number(int, "an integer"), float: _coerce_number(float, "a number"),
            str: _coerce_str, dict: _coerce_dict}


def _suggest(key: str, names: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(names), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _config_path(config: str) -> Path:
    p = Path(config)
    if p.suffix in (".yaml", ".yml"):
        return p if p.is_absolute() else (repo_root() / p if not p.exists() else p.resolve())
    return repo_root() / "params" / f"{config}.yaml"


def read_config_file(config: str) -> dict[str, Any]:
    path = _config_path(config)
    if not path.is_file():
        available = sorted(q.stem for q in (repo_root() / "params").glob("*.yaml"))
        raise ParameterError(f"config: {path} not found; expected one of {available} or a path to a .yaml file")
    try:
        data = load_yaml_strict(path) or {}
    except ValueError as e:  # a syntax error, or a key given twice
        raise ParameterError(f"config: {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ParameterError(f"config: {path} must hold a mapping of parameter names to values")
    known = all_parameter_names()
    for k, v in data.items():
        if k in SECTIONS:
            if not isinstance(v, dict):
                raise ParameterError(f"{path}: section '{k}' must be a mapping")
            bad = [sk for sk in v if sk not in registry(k) and sk not in section_aliases(k)]
            if bad:
                raise ParameterError(f"{path}: unknown key '{k}.{bad[0]}' for notebook {SECTIONS[k][0]}{_suggest(bad[0], set(registry(k)))}")
        elif k not in known:
            raise ParameterError(f"{path}: unknown key '{k}'{_suggest(k, known)}")
    data["__path__"] = str(path)
    return data


def user_assigned_names(namespace: dict[str, Any]) -> set[str] | None:
    """Names assigned in the parameters cell and papermill's injected cell, read from IPython's input history.

    Returns None outside IPython, where no history exists; the caller then only type-checks.
    """
    history = namespace.get("In")
    if not isinstance(history, list):
        return None
    names: set[str] = set()
    for src in history:
        if not isinstance(src, str) or not src.lstrip().startswith(_PARAM_CELL_MARKERS):
            continue
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _renamed(name: str) -> str:
    """The canonical name for an alias that is a plain rename (no value transform); other names unchanged."""
    alias = ALIASES.get(name)
    return alias[0] if alias is not None and alias[1] is None else name


class Params(dict):
    """Resolved parameters with attribute access, the run's folders, and dataclass builders.

    Renamed parameters work under either name: `P.save_steps` reads `save_interval`, and
    `P["save_steps"] = 5` sets it (the canonical key is the one stored).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.update(*args, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(_renamed(name), value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __missing__(self, name: str) -> Any:
        canonical = _renamed(name)
        if canonical != name and canonical in self:
            return self[canonical]
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self or _renamed(name) in self else default

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def build(self, cls: type[T]) -> T:
        """`cls` from the parameters that are its fields (flat names for a grouped config such as TrainConfig)."""
        names = _field_types(cls)
        values = {k: v for k, v in self.items() if k in names and v is not None}
        from_flat = getattr(cls, "from_flat", None)  # a grouped config takes flat names through its one converter
        try:
            return from_flat(**values) if from_flat else cls(**values)
        except ValueError as e:  # configs that check themselves when made (TrainConfig, GenerationConfig)
            raise parameter_error(e) from e

    @property
    def paths(self) -> dict[str, Path]:
        """The run's folders: run, data, tokenizer, tokens, pretrain, sft."""
        run = Path(self["run_dir"])
        return {"run": run, **{name: run / name for name in ("data", "tokenizer", "tokens", "pretrain", "sft")}}


def load_params(section: str, namespace: dict[str, Any] | None = None, **explicit: Any) -> Params:
    """Resolve the parameters of notebook `section` from a namespace (a notebook's globals()) and/or kwargs."""
    namespace = dict(namespace or {})
    namespace.update(explicit)
    reg = registry(section)
    assigned = _check_assigned_names(section, namespace, explicit)
    aliases = section_aliases(section)
    given = {k: namespace[k] for k in assigned if (k in reg or k in aliases) and namespace.get(k) is not None}
    given = resolve_aliases(section, given, "explicit parameter")
    injected_section = namespace.get(section) if section in assigned else None  # `-f params/x.yaml` injects blocks as dicts

    config = given.get("config") or os.environ.get("MINIGPT_CONFIG") or COMMON["config"][1]
    file_values = read_config_file(str(config))
    where_file = file_values.pop("__path__")
    layers = [
        (resolve_aliases(section, {k: v for k, v in file_values.items() if k not in SECTIONS}, where_file), where_file),
        (resolve_aliases(section, file_values.get(section) or {}, where_file), f"{where_file} [{section}]"),
        (resolve_aliases(section, injected_section or {}, "injected"), f"injected [{section}]"),
        (given, "explicit parameter"),
    ]
    merged, sources = _merge_layers(reg, layers, given)
    merged["config"] = str(config)

    out = Params()
    for k, (t, _) in reg.items():
        v = merged[k]
        out[k] = None if v is None else coerce(k, v, t, sources[k])
    _clamp_preset_warmup(out, sources)
    run_dir = Path(out["run_dir"])
    out["run_dir"] = run_dir if run_dir.is_absolute() else repo_root() / run_dir
    logging.getLogger("minigpt").setLevel(str(out["log_level"]).upper())
    return out


def _check_assigned_names(section: str, namespace: dict[str, Any], explicit: dict[str, Any]) -> set[str]:
    """The names the user set; an unknown one is an error, one for another notebook a warning."""
    reg = registry(section)
    known_anywhere = all_parameter_names()
    assigned = user_assigned_names(namespace)
    if assigned is None:
        assigned = {k for k in namespace if k in known_anywhere or k in SECTIONS} | set(explicit)
    for name in sorted(assigned):
        if name in SECTIONS or name.startswith("_"):
            continue
        if name not in known_anywhere:
            raise ParameterError(f"unknown parameter '{name}' for notebook {SECTIONS[section][0]}{_suggest(name, set(reg))}")
        if name not in reg and name not in section_aliases(section) and namespace.get(name) is not None:
            logger.warning("parameter '%s' does not apply to notebook %s; ignored", name, SECTIONS[section][0])
    return assigned


def _merge_layers(reg: dict[str, tuple[Any, Any]], layers: list[tuple[dict[str, Any], str]],
                  given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults, then each layer on top (lowest first); returns (values, where each value came from)."""
    merged: dict[str, Any] = {k: d for k, (t, d) in reg.items()}
    sources: dict[str, str] = {k: "default" for k in reg}
    for values, where in layers:
        for k, v in values.items():
            if k in reg and v is not None:
                merged[k] = v
                sources[k] = where
    if "run_name" in merged and sources["run_name"] != "default" and not str(merged["run_name"]).strip():
        # only run_name's own default means "runs/default"; an empty name given somewhere is a mistake, not a choice
        raise ParameterError(f"run_name: {merged['run_name']!r} from {sources['run_name']} is empty; expected a plain "
                             "folder name such as 'demo' (leave run_name out to use runs/default)")
    if "run_dir" not in given and os.environ.get("MINIGPT_RUN_DIR"):
        merged["run_dir"] = os.environ["MINIGPT_RUN_DIR"]
        sources["run_dir"] = "MINIGPT_RUN_DIR"
    elif sources["run_dir"] == "default" and merged.get("run_name"):
        merged["run_dir"] = f"runs/{check_run_name(merged['run_name'], ParameterError)}"  # run_name names the run's folder
    if "wandb_run_name" in merged and not merged.get("wandb_run_name") and merged.get("run_name"):
        merged["wandb_run_name"] = merged["run_name"]
    return merged, sources


def _clamp_preset_warmup(out: Params, sources: dict[str, str]) -> None:
    """A warmup set elsewhere than max_steps (a preset's, with an explicit shorter `-p max_steps 20`) is scaled to
    the run: at most a tenth of max_steps (train.schedules.warmup_for_run), logged once, so a short run still
    decays. A warmup given as an explicit parameter, or set beside max_steps in the same file section, is kept
    (an explicit warmup_steps > max_steps fails validation, naming the key)."""
    from .train.schedules import warmup_for_run  # torch-free

    if ("warmup_steps" not in out or not out.get("max_steps") or sources["warmup_steps"] == "explicit parameter"
            or sources["warmup_steps"] == sources["max_steps"]):
        return
    scaled = warmup_for_run(out["warmup_steps"], out["max_steps"])
    if scaled < out["warmup_steps"]:
        logger.warning("warmup_steps=%s from %s is more than a tenth of max_steps=%s (%s): using warmup_steps=%s so "
                       "the learning rate still decays to min_lr; pass warmup_steps explicitly to keep another value",
                       out["warmup_steps"], sources["warmup_steps"], out["max_steps"], sources["max_steps"], scaled)
        out["warmup_steps"] = scaled


def jsonable(P: dict[str, Any]) -> dict[str, Any]:
    """Resolved parameters as JSON-ready values (paths become strings): saved with checkpoints, passed to torchrun."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in P.items()}


def parameter_error(e: ValueError) -> ParameterError:
    """A config's "key: expected ..." error as a ParameterError, so notebooks show one kind of error; a key that
    has aliases (the seeds' flag names) is shown with them, since the user may have typed one of those."""
    msg = str(e)
    key = msg.split(":", 1)[0]
    names = sorted(alias for alias, (canonical, _, _) in ALIASES.items() if canonical == key)
    return ParameterError(f"{key} ({', '.join(names)}){msg[len(key):]}" if names else msg)


def validate_dataclass(obj) -> None:
    """Call obj.validate(); its error becomes a ParameterError (see parameter_error)."""
    try:
        obj.validate()
    except ValueError as e:
        raise parameter_error(e) from e
