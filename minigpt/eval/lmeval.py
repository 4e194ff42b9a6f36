"""lm-evaluation-harness on an exported model: a local task for the built-in cloze, and the command lines.

The `hf/` folder that `export_hf` writes is a transformers Llama folder, so lm-eval's `hf` model reads it:

    lm_eval --model hf --model_args pretrained=runs/demo/hf --tasks ceval-valid,cmmlu --num_fewshot 5

(C-Eval and CMMLU are fetched by lm-eval from the Hugging Face Hub: that needs internet access.) Offline, the
built-in cloze runs as a local task: a YAML that reads runs/<run>/eval/cloze.jsonl with the `json` dataset
builder. Its documents start with <|endoftext|>, as minigpt's scorer starts them (`prefix_eos=True`), and the
choices follow the question with no delimiter, so both score the same token ids.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text

TASK = "minigpt_cloze"


def task_yaml(cloze_jsonl: str | Path, task: str = TASK) -> str:
    """lm-eval task YAML (format of lm-eval >= 0.4) for a JSONL of {question, choices, answer}."""
    data = json.dumps(str(Path(cloze_jsonl).resolve()))
    return "\n".join([
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {data}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "<|endoftext|>{{question}}"',
        'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{answer}}"',
        'target_delimiter: ""',
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        "",
    ])


def write_task(cloze_jsonl: str | Path, task_dir: str | Path, task: str = TASK) -> Path:
    path = Path(task_dir) / f"{task}.yaml"
    atomic_write_text(path, task_yaml(cloze_jsonl, task))
    return path


def command(hf_dir: str | Path, tasks: str, include_path: str | Path | None = None, output: str | Path | None = None,
            num_fewshot: int = 0, device: str = "cpu", batch_size: int = 8) -> list[str]:
    """The `lm_eval` command line (run through this Python, so the venv's lm-eval is the one used)."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={Path(hf_dir).resolve()},dtype=float32",
           "--tasks", tasks, "--device", device, "--batch_size", str(batch_size), "--num_fewshot", str(num_fewshot)]
    if include_path:
        cmd += ["--include_path", str(include_path)]
    if output:
        cmd += ["--output_path", str(output), "--log_samples"]
    return cmd


def run_cloze(hf_dir: str | Path, cloze_jsonl: str | Path, work_dir: str | Path, timeout: int = 600) -> dict[str, Any]:
    """lm-eval's acc and acc_norm on the cloze task, offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set)."""
    work = Path(work_dir)
    write_task(cloze_jsonl, work / "tasks")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(work / "hf_datasets"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = command(hf_dir, TASK, work / "tasks", work / "out")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"lm_eval exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    found = sorted((work / "out").rglob("results_*.json"))
    if not found:
        raise RuntimeError(f"lm_eval wrote no results under {work / 'out'}:\n{proc.stdout[-2000:]}")
    res = json.loads(found[-1].read_text(encoding="utf-8"))["results"][TASK]
    samples = sorted((work / "out").rglob(f"samples_{TASK}_*.jsonl"))
    return {"accuracy": res["acc,none"], "accuracy_norm": res["acc_norm,none"],
            "n": len(samples[-1].read_text(encoding="utf-8").splitlines()) if samples else None,
            "samples": str(samples[-1]) if samples else None}
