"""One writer per run folder, branches that lose nothing, exact resume with dropout, crash-safe folder
replacement (a real SIGKILL between each pair of filesystem operations), time-based checkpoints and the
run-duration estimate."""
import json
import logging
import os
import signal

import numpy as np
import pytest
import torch

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt import atomic
from minigpt.data.datasets import WindowSampler, sequential_windows
from minigpt.train import checkpoint as ckpt
from minigpt.train.run_lock import RunLock, RunLockedError
from minigpt.train.clock import TrainClock
from minigpt.train.trainer import Trainer
from conftest import make_tiny_run, tiny_tokenizer
from test_resume import start, wait_for_step
from test_trainer import StopAt, losses, make_trainer, tokens


def steps_in(path):
    return [json.loads(l)["step"] for l in open(path) if '"loss"' in l and '"skipped"' not in l]


# ----- case 1: one writer per run folder --------------------------------------------------------------


def test_second_trainer_is_refused_naming_the_holder_and_sigkill_frees_the_lock(tmp_path):
    out = tmp_path / "out"
    proc = start(tmp_path, out, 40, sleep=0.1)  # a real training in another process
    try:
        wait_for_step(proc, out / "metrics.jsonl", 3)
        second = make_trainer(tmp_path, max_steps=5)  # tmp_path / "out": the same folder
        with pytest.raises(RunLockedError) as e:
            second.fit()
        msg = str(e.value)
        assert str(out) in msg and f"pid {proc.pid}" in msg and "another training is writing" in msg
        assert second.step == 0 and not (out / "previous").exists()  # nothing of the first run was moved
        with pytest.raises(RunLockedError):
            make_trainer(tmp_path, max_steps=5, auto_resume=True).fit()  # nor may a second auto_resume run
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the OS released the dead holder's lock: the folder can be continued at once
    resumed = make_trainer(tmp_path, max_steps=40, auto_resume=True)
    resumed.fit()
    assert resumed.step == 40
    assert steps_in(out / "metrics.jsonl") == list(range(1, 41))  # one run's log, never two interleaved
    assert RunLock(out).acquire().held  # released again after fit()


def test_lock_held_during_fit_and_released_on_error(tmp_path):
    seen = {}

    class Probe:
        def on_log(self, trainer, rec):
            if rec["step"] == 1:
                with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
                    RunLock(trainer.output_dir).acquire()
                seen["held"] = True
                raise RuntimeError("a callback fails")

    t = make_trainer(tmp_path, max_steps=3, callbacks=[Probe()])
    with pytest.raises(RuntimeError, match="a callback fails"):
        t.fit()
    assert seen["held"] and t.run_lock is None
    assert RunLock(t.output_dir).acquire().held


def test_ddp_rank0_takes_the_lock(tmp_path):
    from minigpt.train.launch import launch
    from test_launch import TINY

    run = make_tiny_run(tmp_path / "run")
    out = run / "ddp"
    lock = RunLock(out).acquire()  # this process "is training" into the folder
    lines = []
    try:
        r = launch(2, run_dir=str(run), output_dir=str(out), batch_size=2, on_line=lines.append, timeout=300, **TINY)
    finally:
        lock.release()
    assert r["returncode"] != 0 and r["result"] is None
    text = "\n".join(lines)
    assert "another training is writing to this folder" in text and f"pid {os.getpid()}" in text, text[-3000:]
    assert not list(out.glob("checkpoint_step_*")) and not (out / "metrics.jsonl").exists()


# ----- case 2: branches ---------------------------------------------------------------------------------


def test_resume_from_an_earlier_checkpoint_starts_a_branch_that_loses_nothing(tmp_path, caplog):
    out = tmp_path / "out"
    kw = dict(save_interval=3, keep_last_n_checkpoints=2, permanent_checkpoints=[6])
    make_trainer(tmp_path, max_steps=18, **kw).fit()  # the old run: checkpoints 6 (permanent), 15, 18, final_model
    old_state = json.loads((out / "checkpoint_step_18" / "trainer_state.json").read_text())
    old_steps = steps_in(out / "metrics.jsonl")
    assert old_steps[-1] == 18
    with caplog.at_level(logging.WARNING, logger="minigpt.train.run_state"):
        branch = make_trainer(tmp_path, max_steps=12, resume_from=str(out / "checkpoint_step_6"), learning_rate=1e-3, **kw)
        branch.fit()
    archived = list((out / "previous").glob("*-branch-from-step-6"))
    assert len(archived) == 1, list((out / "previous").iterdir())
    arc = archived[0]
    assert "starts a branch" in caplog.text and str(arc) in caplog.text
    # the old run: its later checkpoints, final model and whole log, intact
    assert sorted(p.name for p in arc.iterdir()) == ["checkpoint_step_15", "checkpoint_step_18", "final_model",
                                                     "metrics.jsonl", "run_config.json"]
    ckpt.verify_checkpoint(arc / "checkpoint_step_18")
    assert json.loads((arc / "checkpoint_step_18" / "trainer_state.json").read_text()) == old_state
    assert steps_in(arc / "metrics.jsonl") == old_steps
    # the branch: keep-last-2 pruned only its own checkpoints; one log from step 1 to 12
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [6, 9, 12]
    assert steps_in(out / "metrics.jsonl") == list(range(1, 13))
    assert json.loads((out / "final_model" / "config.json").read_text())["step"] == 12
    # auto_resume continues the branch written last (step 12), not the old run's step 18
    cont = make_trainer(tmp_path, max_steps=14, auto_resume=True, learning_rate=1e-3, **kw)
    cont.fit()
    assert cont.step == 14 and steps_in(out / "metrics.jsonl") == list(range(1, 15))


def test_resume_from_another_folder_archives_this_folders_run(tmp_path):
    make_trainer(tmp_path / "a", max_steps=6, save_interval=3).fit()
    make_trainer(tmp_path / "b", max_steps=4, save_interval=2).fit()
    src = tmp_path / "a" / "out" / "checkpoint_step_3"
    t = make_trainer(tmp_path / "b", max_steps=5, resume_from=str(src), save_interval=2)
    t.fit()
    b = tmp_path / "b" / "out"
    (prev,) = (b / "previous").iterdir()
    assert {"checkpoint_step_4", "final_model", "metrics.jsonl"} <= {p.name for p in prev.iterdir()}
    assert steps_in(b / "metrics.jsonl") == [1, 2, 3, 4, 5]  # a's lines up to 3, then the branch


# ----- case 3: exact resume with dropout and samples ---------------------------------------------------


def dropout_trainer(tmp_path, tok, max_steps, **kw):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                            max_seq_len=32, dropout=0.1))
    cfg = TrainConfig.from_flat(**{**dict(learning_rate=3e-3, min_lr=3e-4, max_steps=max_steps, batch_size=4, warmup_steps=2,
                                eval_interval=4, num_eval_batches=1, save_interval=4, log_interval=1, plot_loss=False,
                                seq_len=16, seed=0, progress_bar=False, sample_interval=4,
                                sample_prompts=["你好"]), **kw})
    data = tokens()
    return Trainer(model, cfg, WindowSampler(data, 4, 16, seed=0), sequential_windows(tokens(seed=1), 4, 16, 1),
                   tmp_path / "out", tokenizer=tok)


def test_exact_resume_with_dropout_and_samples(tmp_path, monkeypatch):
    from minigpt import devices

    tok = tiny_tokenizer()
    straight = dropout_trainer(tmp_path / "a", tok, 10)
    straight.fit()
    first = dropout_trainer(tmp_path / "b", tok, 10)
    first.callbacks.append(StopAt(4))
    assert first.fit()["step"] == 4
    monkeypatch.setattr(devices, "_PEAK_CACHE", {})  # as in a fresh process: the FLOPs measurement runs again
    second = dropout_trainer(tmp_path / "b", tok, 10, auto_resume=True)
    second.fit()
    assert second.step == 10
    a, b = losses(straight.metrics_path), losses(second.metrics_path)
    assert a == b, (a, b)  # bitwise, the first step after the resume included
    for (k, x), y in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(x, y), k


def test_exact_resume_of_packed_sft_with_lora_dropout(tmp_path, monkeypatch):
    """Packing, LoRA dropout and the adapters' random init (seeded, whatever ran before in this process)."""
    from minigpt import devices
    from minigpt.train.sft import build_sft_trainer
    import test_sft

    run, _ = test_sft._make_run(tmp_path, test_sft.tok.__wrapped__())  # the module's tokenizer fixture, called
    _params = test_sft._params
    kw = dict(use_lora=True, lora_rank=2, lora_dropout=0.2, pack_conversations=True, max_steps=6, sample_interval=0)
    straight, _ = build_sft_trainer(_params(run, output_dir=str(tmp_path / "a"), **kw))
    straight.fit()
    first, _ = build_sft_trainer(_params(run, output_dir=str(tmp_path / "b"), **kw))
    first.callbacks.append(StopAt(3))
    assert first.fit()["step"] == 3
    monkeypatch.setattr(devices, "_PEAK_CACHE", {})  # as in a fresh process
    second, _ = build_sft_trainer(_params(run, output_dir=str(tmp_path / "b"), auto_resume=True, **kw))
    second.fit()
    assert second.step == 6
    assert losses(straight.metrics_path) == losses(second.metrics_path)


# ----- case 4: replacing a folder is crash-safe at every instant ---------------------------------------


def save_version(folder, step):
    torch.manual_seed(step)
    model = GPT(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16))
    ckpt.save_checkpoint(folder, model, {"model": model.config.to_dict(), "step": step},
                         optimizer_state={"step": torch.tensor(step)})


def saved_step(folder):
    ckpt.verify_checkpoint(folder)
    return json.loads((folder / "config.json").read_text())["step"]


def kill_during_replace(folder, kill_at, swap):
    """Fork; the child replaces `folder` (version 1 -> 2) and SIGKILLs itself at filesystem point `kill_at`.
    Returns the points the child passed (from a pipe) and whether it was killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, only the save and the kill
        os.close(r)
        try:
            torch.set_num_threads(1)
            seen = []

            def point(what):
                seen.append(what)
                os.write(w, (what + "\n").encode())
                if len(seen) == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            atomic.after_fs_op = point
            if not swap:
                atomic.exchange = lambda a, b: False
            save_version(folder, 2)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        points = f.read().splitlines()
    _, status = os.waitpid(pid, 0)
    return points, os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "two-renames"])
def test_kill_between_every_pair_of_filesystem_operations(tmp_path, swap):
    if swap and not atomic._swap_function():
        pytest.skip("no atomic exchange on this platform")
    k, all_points = 1, None
    while True:
        root = tmp_path / f"k{k}"
        folder = root / "final_model"
        save_version(folder, 1)
        points, killed = kill_during_replace(folder, k, swap)
        if not killed:
            all_points = points
            assert saved_step(folder) == 2
            break
        if swap:  # a reader at this very instant finds a complete folder, old or new
            assert saved_step(folder) in (1, 2), points
        # the next start: leftovers cleaned, a lost name restored; then a complete old or new folder
        atomic.clean_stale_temporaries(root)
        assert saved_step(folder) in (1, 2), points
        assert [p.name for p in root.iterdir()] == ["final_model"], points
        k += 1
    expected = 5 if swap else 6
    assert len(all_points) == expected and k == expected + 1, all_points


def test_stale_leftovers_are_cleaned_on_the_next_start(tmp_path):
    t = make_trainer(tmp_path, max_steps=4, save_interval=2)
    t.fit()
    out = t.output_dir
    (out / ".final_model.tmp999999").mkdir()
    os.replace(out / "checkpoint_step_4", out / ".checkpoint_step_4.old999999")  # cut between two renames
    (out / ".metrics.jsonl.abc123.tmp").write_text("half")
    t2 = make_trainer(tmp_path, max_steps=6, save_interval=2, auto_resume=True)
    t2.fit()
    assert t2.step == 6 and (out / "checkpoint_step_4").is_dir()  # restored, then resumed from it
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert steps_in(out / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]


# ----- case 12: time-based checkpoints and the duration estimate ---------------------------------------


def test_save_minutes_writes_checkpoints_between_save_intervals(tmp_path):
    import time

    class Slow:
        def on_log(self, trainer, rec):
            time.sleep(0.05)

    t = make_trainer(tmp_path, max_steps=4, save_interval=100, save_minutes=0.0005, keep_last_n_checkpoints=10,
                     callbacks=[Slow()])
    t.fit()
    assert [s for s, _ in ckpt.list_checkpoints(t.output_dir)] == [1, 2, 3, 4]
    off = make_trainer(tmp_path / "off", max_steps=4, save_interval=100, save_minutes=0, callbacks=[Slow()])
    off.fit()
    assert [s for s, _ in ckpt.list_checkpoints(off.output_dir)] == [4]  # only the end-of-run one


def test_save_minutes_is_a_parameter_with_a_default():
    from minigpt.params import load_params

    assert TrainConfig().checkpoints.save_minutes == 15.0
    assert load_params("pretrain", config="ci", save_minutes=5).save_minutes == 5.0
    with pytest.raises(ValueError, match="save_minutes"):
        TrainConfig.from_flat(save_minutes=-1).validate()


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_estimate_warns_when_the_run_takes_more_than_a_day(caplog):
    clock = Clock()
    timer = TrainClock(save_minutes=15.0, clock=clock)
    timer.start(0)
    medium = ModelConfig.from_preset("medium")
    per_step = []
    with caplog.at_level(logging.INFO, logger="minigpt.train.clock"):
        for step in range(1, 6):
            clock.t = 60.0 + 45.0 * (step - 1)  # the first step pays for warm-up; then 45 s a step
            if (s := timer.step_done(step)) is not None:
                per_step.append(s)
                timer.log_estimate(s, step, 20000, "cpu", medium, 1000)
    assert per_step == [pytest.approx(45.0)]  # once, after the first step and 3 more
    assert timer.estimate_s == pytest.approx(195 + 45 * 19996)
    assert "estimate: the whole run takes about 10.4 days on cpu (45.00 s/step, 19996 steps left)" in caplog.text
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][0]
    assert "more than a day" in warning and "preset=small" in warning and "max_steps=1919 takes about a day" in warning, warning


def test_short_run_estimate_is_info_only(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="minigpt.train.clock"):
        make_trainer(tmp_path, max_steps=6).fit()
    assert "estimate: the whole run takes about" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "minigpt.train.clock"]


def test_the_docs_show_following_a_headless_run():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert "docs/reliability.md" in (root / "README.md").read_text(encoding="utf-8")  # the front page links it
    page = (root / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert "papermill --log-output" in page and "save_minutes" in page
