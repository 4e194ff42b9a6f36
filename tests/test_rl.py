"""RL with verifiable rewards (train/rl.py): rollouts, rewards and rows; a run that learns a rewarded behaviour;
exact resume including the rollouts; the parameters of notebook 08."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_tokenizer
from minigpt import GPT, ModelConfig
from minigpt.data import skills as skill_data
from minigpt.data.datasets import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _make_run(tmp_path, tok):
    from minigpt.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    skill_data.write_run_skills(run / "data", skill_data.SkillsConfig(skills_train_per_family=12, skills_eval_per_family=3))
    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                            max_seq_len=96)).eval()
    save_checkpoint(run / "sft" / "final_model", model, {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256},
                    tmp_path / "tok")
    return run


def _params(run, **kw):
    from minigpt.params import load_params

    base = dict(config="ci", run_dir=str(run), max_steps=6, batch_size=4, group_size=4, max_new_tokens=6,
                save_steps=3, eval_interval=3, warmup_steps=1, log_interval=1, plot_loss=False, learning_rate=3e-2,
                min_lr=3e-3, eval_per_family=2, dtype="float32", device="cpu", skill_families=["copy", "compare", "add"])
    base.update(kw)
    return load_params("rl", **base)


def _even_first_token(tok):
    """A reward a random model can earn: 1 when the reply's first token id is even. Real skills need a trained
    model to earn anything; this one varies within groups from the first step, so the loss has a signal."""
    def reward(item, text):
        ids = tok.encode(text)
        return 1.0 if ids and ids[0] % 2 == 0 else 0.0
    return reward


def test_rollout_rows_targets_and_advantages(tok, tmp_path, monkeypatch):
    from minigpt.train.rl import build_rl_trainer

    monkeypatch.setattr(skill_data, "reward", _even_first_token(tok))
    run = _make_run(tmp_path, tok)
    tr, info = build_rl_trainer(_params(run))
    assert info["families"] == ["add", "compare", "copy"] and info["rollouts_per_step"] == 16
    src = tr.train_batches
    x, y, extras = src.batch_at(0)
    assert x.shape[0] == 16 and extras["advantages"].shape == (16,) and extras["ref_logps"].shape == y.shape
    chosen = src.problems_at(0)
    assert chosen == src.problems_at(0) and len(set(chosen)) == 4
    for row in range(16):
        prompt = src.prompt_ids[chosen[row // 4]]
        n_prompt = len(prompt)
        assert x[row, :n_prompt].tolist() == prompt  # the chat prompt, then the completion
        targets = y[row][y[row] != IGNORE_INDEX].tolist()
        assert targets and y[row, :n_prompt - 1].eq(IGNORE_INDEX).all()  # no loss on the prompt
        assert x[row, n_prompt:n_prompt + len(targets) - 1].tolist() == targets[:-1]
    # group-normalised: each group's advantages sum to zero
    assert extras["advantages"].view(4, 4).sum(1).abs().max() < 1e-4
    # the reference is the starting model: its log-probs are the policy's before any update
    with torch.no_grad():
        from minigpt.align.grpo import token_logps
        own = token_logps(tr.model(x)[0], y)
    assert torch.allclose(own, extras["ref_logps"], atol=1e-5)
    # the same index gives the same rollouts (seeded by (seed, index)), another index others
    assert torch.equal(src.batch_at(0)[0], x) and not torch.equal(src.batch_at(1)[0][:, :x.shape[1]], x)


def test_rl_run_raises_the_reward_and_resumes_exactly(tok, tmp_path, monkeypatch):
    from minigpt.train.rl import build_rl_trainer

    monkeypatch.setattr(skill_data, "reward", _even_first_token(tok))
    run = _make_run(tmp_path, tok)
    # keep_best off: this test follows the training trajectory itself (keep_best has its own test below)
    P = _params(run, max_steps=12, save_steps=6, eval_interval=6, keep_best=False)
    tr, _ = build_rl_trainer(P)
    before = tr.evaluate()
    assert set(before) >= {"val_accuracy", "val_accuracy/copy"}
    tr.fit()
    recs = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in recs if "train_reward" in r]
    assert len(train) == 12 and all(0 <= r["train_equal_reward_fraction"] <= 1 and r["train_kl"] >= 0 for r in train)
    first, last = sum(r["train_reward"] for r in train[:3]) / 3, sum(r["train_reward"] for r in train[-3:]) / 3
    assert last > first + 0.2, (first, last)  # GRPO learns to start replies with an even token
    assert train[-1]["train_kl"] > train[0]["train_kl"]
    assert [r["step"] for r in recs if "val_accuracy" in r] == [6, 12]
    # resume from step 6 into another folder: the same rollouts, so the same weights, bit for bit
    tr2, _ = build_rl_trainer(_params(run, max_steps=12, save_steps=6, eval_interval=6, keep_best=False,
                                      resume_from=str(run / "rl" / "checkpoint_step_6"), output_dir=str(tmp_path / "resumed")))
    tr2.fit()
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    after6 = [r for r in resumed if "train_reward" in r and r["step"] > 6]
    assert [r["train_reward"] for r in after6] == [r["train_reward"] for r in train[6:]]
    assert [r["loss"] for r in after6] == [r["loss"] for r in train[6:]]
    a, b = tr.model.state_dict(), tr2.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rl_parameters_are_checked(tok, tmp_path):
    from minigpt.params import ParameterError
    from minigpt.train.rl import build_rl_trainer

    run = _make_run(tmp_path, tok)
    with pytest.raises(ParameterError, match="group_size: expected an integer >= 2"):
        build_rl_trainer(_params(run, group_size=1))
    with pytest.raises(ParameterError, match="skill_families: 'poetry' is not a skill family"):
        build_rl_trainer(_params(run, skill_families=["poetry"]))
    with pytest.raises(FileNotFoundError, match="run notebooks/04_sft first"):
        build_rl_trainer(_params(tmp_path / "empty"))


def test_notebook_08_parameters_are_rl_parameters():
    import ast

    import nbformat

    from minigpt.params import registry
    from notebook_tools import NB_DIR

    nb = nbformat.read(NB_DIR / "08_rl.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = {t.id for node in ast.parse(cell.source).body for t in node.targets}
    assert names - {"config"} <= set(registry("rl")), names - set(registry("rl"))


@pytest.mark.slow
def test_notebook_08_runs_headless_after_04(tmp_path):
    """papermill 08 on a finished ci run: the RL model, its metrics (reward, held-out accuracy, KL, length, all-equal
    groups) and the notebook's by-hand round."""
    import nbformat

    import notebook_runs

    run = notebook_runs.prepared_run(tmp_path / "run")
    executed = notebook_runs.execute(run, names=("08_rl",))["08_rl"]
    assert (run / "rl" / "final_model" / "model.safetensors").is_file()
    recs = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in recs if "train_reward" in r]
    assert train and all(0 <= r["train_reward"] <= 1 and r["train_kl"] >= 0 and r["train_completion_tokens"] >= 1
                         and 0 <= r["train_equal_reward_fraction"] <= 1 for r in train)
    assert [r for r in recs if "val_accuracy" in r]
    summary = json.loads((run / "rl" / "rl_summary.json").read_text(encoding="utf-8"))
    assert summary["after"]["val_accuracy"] == [r for r in recs if "val_accuracy" in r][-1]["val_accuracy"]
    text = json.dumps(nbformat.read(executed, as_version=4).cells, ensure_ascii=False)
    assert "held-out accuracy before RL" in text and "advantage" in text


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_makes_the_best_evaluated_weights_the_final_model(tok, tmp_path, monkeypatch, keep_best):
    """Held-out accuracy 0.5 before training, then 0.75 at step 3 and 0.25 at step 6: with keep_best the final model
    holds step 3's weights (rl/best/ was written then), without it step 6's; a resumed run reads the record back."""
    import minigpt.train.rl as rl_mod
    from minigpt.train.checkpoint import load_checkpoint
    from minigpt.train.rl import build_rl_trainer

    monkeypatch.setattr(skill_data, "reward", _even_first_token(tok))
    scores = iter([0.5, 0.75, 0.25, 0.75])
    monkeypatch.setattr(rl_mod, "held_out_accuracy", lambda *a, **k: {"val_accuracy": next(scores)})
    run = _make_run(tmp_path, tok)
    tr, _ = build_rl_trainer(_params(run, keep_best=keep_best))
    tr.evaluate()
    tr.fit()
    step3 = load_checkpoint(run / "rl" / "checkpoint_step_3")[0].state_dict()
    step6 = load_checkpoint(run / "rl" / "checkpoint_step_6")[0].state_dict()
    final = load_checkpoint(run / "rl" / "final_model")[0].state_dict()
    want = step3 if keep_best else step6
    assert all(torch.equal(final[k], want[k]) for k in want)
    assert not all(torch.equal(step3[k], step6[k]) for k in step3)
    if keep_best:
        assert json.loads((run / "rl" / "best" / "best.json").read_text()) == {"step": 3, "val_accuracy": 0.75}
        assert tr.evaluate()["val_accuracy"] == 0.75  # the trainer's model is the best one too
        resumed, _ = build_rl_trainer(_params(run, keep_best=True, max_steps=9,
                                              resume_from=str(run / "rl" / "checkpoint_step_6")))
        resumed._prepare_run()  # what fit() does first: the resume
        assert resumed.step == 6 and resumed.best == {"step": 3, "val_accuracy": 0.75}
    else:
        assert not (run / "rl" / "best").exists()


def test_keep_best_the_starting_model_when_training_never_beats_it(tok, tmp_path, monkeypatch):
    """The notebook evaluates before fit(): that evaluation (the SFT weights) is a candidate, and it survives fit()
    archiving nothing of it; when no later evaluation beats it, the final model is the starting model."""
    import minigpt.train.rl as rl_mod
    from minigpt.train.checkpoint import load_checkpoint
    from minigpt.train.rl import build_rl_trainer

    monkeypatch.setattr(skill_data, "reward", _even_first_token(tok))
    scores = iter([0.5, 0.25, 0.25])
    monkeypatch.setattr(rl_mod, "held_out_accuracy", lambda *a, **k: {"val_accuracy": next(scores)})
    run = _make_run(tmp_path, tok)
    start = load_checkpoint(run / "sft" / "final_model")[0].state_dict()
    tr, _ = build_rl_trainer(_params(run))
    tr.evaluate()
    tr.fit()
    final = load_checkpoint(run / "rl" / "final_model")[0].state_dict()
    assert all(torch.equal(final[k], start[k]) for k in start)
    assert json.loads((run / "rl" / "best" / "best.json").read_text()) == {"step": 0, "val_accuracy": 0.5}
