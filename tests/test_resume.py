"""Training that loses nothing: signals save and return, SIGKILL loses at most save_steps steps,
prefetching workers keep resume bitwise, and a second Ctrl+C cannot cut a save short."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from minigpt.train import checkpoint as ckpt
from test_trainer import StopAt, losses, make_trainer

SCRIPT = textwrap.dedent("""
    import json, logging, sys, time
    import numpy as np, torch
    from minigpt import GPT, ModelConfig, TrainConfig
    from minigpt.data.datasets import WindowSampler, sequential_windows
    from minigpt.train.trainer import Trainer

    out, max_steps, sleep, auto = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    data = np.where(rng.random(4000) < 0.1, rng.integers(0, 64, 4000), np.arange(4000) % 16).astype(np.uint16)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32))
    cfg = TrainConfig.from_flat(learning_rate=3e-3, min_lr=3e-4, max_steps=max_steps, batch_size=4, seq_len=16, warmup_steps=2,
                      eval_interval=5, num_eval_batches=1, save_interval=5, log_interval=1, plot_loss=False, seed=0,
                      auto_resume=auto, progress_bar=False, num_threads=1)

    class Slow:
        def on_log(self, trainer, rec):
            time.sleep(sleep)

    trainer = Trainer(model, cfg, WindowSampler(data, 4, 16, seed=0), sequential_windows(data, 4, 16, 1), out,
                      callbacks=[Slow()])
    print("RESULT " + json.dumps(trainer.fit()), flush=True)
""")


def start(tmp_path, out, max_steps, sleep=0.0, auto=False):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(out), str(max_steps), str(sleep), "1" if auto else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_step(metrics):
    if not metrics.is_file():
        return 0
    steps = [json.loads(l).get("step", 0) for l in metrics.read_text().splitlines() if l.strip().endswith("}")]
    return max(steps, default=0)


def wait_for_step(proc, metrics, step, timeout=60):
    t = time.time()
    while last_step(metrics) < step:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < timeout, "training did not progress"
        time.sleep(0.05)


def result_of(stdout):
    return json.loads([l for l in stdout.splitlines() if l.startswith("RESULT ")][-1][7:])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_current_step_and_exits_cleanly(tmp_path, sig):
    out = tmp_path / "out"
    proc = start(tmp_path, out, 10_000, sleep=0.05)
    wait_for_step(proc, out / "metrics.jsonl", 3)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    result = result_of(stdout)
    assert result["stop_reason"] == f"signal {sig.name}" and 3 <= result["step"] < 10_000
    folder = out / f"checkpoint_step_{result['step']}"
    ckpt.verify_checkpoint(folder)  # a complete checkpoint at the step it stopped at
    assert json.loads((folder / "trainer_state.json").read_text())["step"] == result["step"]
    assert last_step(out / "metrics.jsonl") == result["step"]


def test_sigkill_loses_at_most_save_steps_and_auto_resume_works(tmp_path):
    straight = start(tmp_path, tmp_path / "straight", 20)
    out = tmp_path / "killed"
    proc = start(tmp_path, out, 20, sleep=0.1)
    wait_for_step(proc, out / "metrics.jsonl", 12)
    proc.kill()
    proc.wait(timeout=30)
    killed_at = last_step(out / "metrics.jsonl")
    newest = ckpt.latest_valid_checkpoint(out)
    assert newest is not None and killed_at - int(newest.name.split("_")[-1]) <= 5  # save_interval=5
    resumed = start(tmp_path, out, 20, auto=True)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr[-2000:]
    assert "resumed from" in stderr and result_of(stdout)["step"] == 20
    s_out, s_err = straight.communicate(timeout=120)
    assert straight.returncode == 0, s_err[-2000:]
    # the killed-and-resumed run reads as one uninterrupted run: the same losses, bitwise
    assert losses(out / "metrics.jsonl") == losses(tmp_path / "straight" / "metrics.jsonl")


@pytest.mark.parametrize("workers", [2])
def test_exact_resume_with_prefetch_workers(tmp_path, workers):
    straight = make_trainer(tmp_path / "a", max_steps=12)  # no workers
    straight.fit()
    first = make_trainer(tmp_path / "b", max_steps=12, dataloader_workers=workers, callbacks=[StopAt(6)])
    assert first.fit()["step"] == 6
    second = make_trainer(tmp_path / "b", max_steps=12, dataloader_workers=workers, auto_resume=True)
    assert type(second.train_batches).__name__ == "PrefetchBatches"
    second.fit()
    assert second.step == 12
    assert losses(straight.metrics_path) == losses(second.metrics_path)  # whole sequence, bitwise
    for (k, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_second_ctrl_c_during_save_does_not_cut_it_short(tmp_path, monkeypatch):
    real_save = ckpt.save_checkpoint
    calls = []

    def save_with_interrupt(folder, *a, **kw):
        calls.append(folder)
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl+C, in the middle of saving
        time.sleep(0.05)  # let the handler run here, inside the save
        return real_save(folder, *a, **kw)

    class CtrlC:
        def on_log(self, trainer, rec):
            if rec["step"] == 3:
                os.kill(os.getpid(), signal.SIGINT)

    t = make_trainer(tmp_path, max_steps=1000, save_interval=1000, callbacks=[CtrlC()])
    monkeypatch.setattr(ckpt, "save_checkpoint", save_with_interrupt)
    handler_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a shell's background job
    result = t.fit()  # returns normally: no KeyboardInterrupt escapes
    assert result["stop_reason"] == "signal SIGINT" and result["step"] == 3
    assert [p.name for p in calls] == ["checkpoint_step_3"]
    ckpt.verify_checkpoint(tmp_path / "out" / "checkpoint_step_3")
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored afterwards


def test_fault_stop_keeps_last_good_checkpoint(tmp_path, caplog):
    t = make_trainer(tmp_path, max_steps=50, max_faults=3)
    real_forward = t.model.forward
    n = {"calls": 0}

    def forward(x, y=None, **kw):
        logits, loss = real_forward(x, y, **kw)
        if t.model.training:
            n["calls"] += 1
            if n["calls"] > 4:  # four good steps, then only NaN
                loss = loss * float("nan")
        return logits, loss

    t.model.forward = forward
    good = None

    class Snap:
        def on_log(self, trainer, rec):
            nonlocal good
            good = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    t.callbacks.append(Snap())
    with caplog.at_level("ERROR"):
        result = t.fit()
    assert result["stop_reason"] == "numerical faults" and result["step"] == 4 and t.faults_total == 3
    recs = [json.loads(l) for l in open(t.metrics_path)]
    assert sum(1 for r in recs if r.get("skipped")) == 3 and recs[-1]["faults_total"] == 3
    assert "learning_rate" in caplog.text and "checkpoint_step_4" in caplog.text  # hints and where the state is
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "out" / "checkpoint_step_4" / "model.safetensors"))
    assert all(torch.equal(saved[k], good[k]) for k in saved)  # the last good weights, untouched by the NaN steps
    assert not (tmp_path / "out" / "final_model").exists()
