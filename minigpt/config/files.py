"""Checks on where parameters come from (params.py): YAML files and run names."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def load_yaml_strict(path: Path) -> Any:
    """A YAML file's content (safe types only); ValueError saying what is wrong, with the line of a key given
    twice (plain YAML silently keeps the last)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ValueError(f"line {line}: key '{key}' appears twice (first on line {seen[key]}); keep one")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    loader = StrictLoader(Path(path).read_text(encoding="utf-8"))
    loader.name = str(path)  # named in the parser's error marks
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from e
    finally:
        loader.dispose()


def check_run_name(name: str, error: type[Exception] = ValueError) -> str:
    """`name`, if it is a plain folder name (run_name names a folder under runs/); a path raises `error`."""
    if name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name or name.startswith("~"):
        raise error(f"run_name: {name!r} is a path; expected a plain folder name such as 'demo' "
                    "(set run_dir for a folder elsewhere)")
    return name
