"""environment.yml and pyproject.toml must list the same packages, with the same version specs."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py_specs = list(project["dependencies"])
    for extra in project["optional-dependencies"]:  # every extra: dev, hf, serve, eval
        py_specs += project["optional-dependencies"][extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_specs = [s for s in pip_block if not s.startswith("-e")]
    assert sorted(s.replace(" ", "") for s in env_specs) == sorted(s.replace(" ", "") for s in py_specs)
    names = {_name(s) for s in py_specs}
    # the runtime dependencies named by the walking-skeleton issue
    for required in ("torch", "tokenizers", "jupyterlab", "ipywidgets", "matplotlib", "pandas", "psutil",
                     "papermill", "pyyaml", "tqdm", "snownlp", "chatterbot-corpus"):
        assert required in names, required
    assert "nbval" in {_name(s) for s in project["optional-dependencies"]["dev"]}
    assert "transformers" in {_name(s) for s in project["optional-dependencies"]["hf"]}


def test_gitignore_ignores_runs_and_venv():
    lines = (ROOT / ".gitignore").read_text().split()
    assert "runs/" in lines and ".venv/" in lines
