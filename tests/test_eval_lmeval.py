"""lm-evaluation-harness on the exported model (a demo-sized, `tiny`-preset shape) with the local cloze task,
offline, against minigpt's own scorer.

Both score the same token ids (the task's documents start with <|endoftext|>, the choices follow with no
delimiter), so the picks should agree item for item. The tolerance is one item: the two compute the same
float32 arithmetic in a different order (transformers' Llama vs minigpt's GPT), which can only flip a near tie.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from minigpt import ModelConfig
from minigpt.eval.cloze import ensure_cloze, load_cloze
from minigpt.eval.lmeval import TASK, run_cloze, task_yaml
from minigpt.eval.scoring import evaluate_items
from minigpt.infer.export import export_hf
from minigpt.train.checkpoint import save_checkpoint
from test_eval_cloze import CLOZE, learnable_run, train_micro_model  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_task_yaml_reads_the_cloze_jsonl(tmp_path):
    text = task_yaml(tmp_path / "cloze.jsonl")
    assert f"task: {TASK}" in text and "dataset_path: json" in text and "output_type: multiple_choice" in text
    assert f'test: "{tmp_path / "cloze.jsonl"}"' in text and 'target_delimiter: ""' in text


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("accelerate") is None,
                    reason="lm-eval[hf] is not installed (pip install -e '.[eval]')")
def test_lm_eval_matches_minigpt_on_the_cloze(learnable_run, tmp_path):  # noqa: F811
    run, tok, texts = learnable_run
    tiny = ModelConfig.from_preset("tiny")
    model = train_micro_model(tok, texts, steps=40, d_model=tiny.d_model, n_layers=tiny.n_layers,
                              n_heads=tiny.n_heads, n_kv_heads=tiny.n_kv_heads, d_ff=tiny.d_ff)
    ckpt = save_checkpoint(tmp_path / "final_model", model, {"model": model.config.to_dict(),
                                                             "tokenizer_sha256": tok.sha256})
    tok.save(ckpt)
    hf = export_hf(ckpt, tmp_path / "hf")
    cloze = ensure_cloze(run, n_items=60, seed=0, **CLOZE)
    ours = evaluate_items(model, tok, load_cloze(cloze))
    theirs = run_cloze(hf, cloze, tmp_path / "lmeval")
    assert theirs["n"] == ours["n"] == 60
    picks = {}
    for line in open(theirs["samples"], encoding="utf-8"):
        s = json.loads(line)
        lls = [float(r[0]) for r in s["filtered_resps"]]
        picks[s["doc_id"]] = max(range(len(lls)), key=lls.__getitem__)
    disagree = sum(picks[i] != p for i, p in enumerate(ours["preds"]))
    print(f"minigpt acc {ours['accuracy']:.4f} acc_norm {ours['accuracy_norm']:.4f}; "
          f"lm-eval acc {theirs['accuracy']:.4f} acc_norm {theirs['accuracy_norm']:.4f}; {disagree} picks differ")
    assert disagree <= 1
    assert abs(theirs["accuracy"] - ours["accuracy"]) <= 1 / 60 + 1e-9
    assert abs(theirs["accuracy_norm"] - ours["accuracy_norm"]) <= 1 / 60 + 1e-9
