"""`python -m minigpt.monitor` follows a live training run in another process."""
import json
import subprocess
import sys
import textwrap

import pytest

TRAIN = textwrap.dedent("""
    import sys, numpy as np, torch
    from minigpt import GPT, ModelConfig, TrainConfig
    from minigpt.data.datasets import WindowSampler, sequential_windows
    from minigpt.train.trainer import Trainer
    out = sys.argv[1]
    data = (np.arange(20000) % 50).astype(np.uint16)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32))
    cfg = TrainConfig.from_flat(max_steps=60, batch_size=4, seq_len=16, warmup_steps=2, eval_interval=20, num_eval_batches=1,
                      save_interval=20, log_interval=5, plot_loss=False, learning_rate=3e-3)
    # slow each step a little so the monitor sees the run while it is live
    import time
    class Slow:
        def on_log(self, trainer, rec):
            time.sleep(0.05)
    Trainer(model, cfg, WindowSampler(data, 4, 16), sequential_windows(data, 4, 16, 1), out, callbacks=[Slow()]).fit()
""")


@pytest.mark.slow
def test_monitor_follows_a_live_run(tmp_path):
    out = tmp_path / "run" / "pretrain"
    train = subprocess.Popen([sys.executable, "-c", TRAIN, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        mon = subprocess.run([sys.executable, "-m", "minigpt.monitor", str(tmp_path / "run"), "--json", "--interval", "0.3",
                              "--timeout", "120"], capture_output=True, text=True, timeout=180)
    finally:
        train.wait(timeout=120)
    assert train.returncode == 0, train.stderr[-2000:]
    assert mon.returncode == 0, mon.stderr
    snaps = [json.loads(l) for l in mon.stdout.splitlines() if l.startswith("{")]
    steps = [s["step"] for s in snaps]
    assert len(snaps) >= 3
    assert steps == sorted(steps) and len(set(steps)) >= 2, steps      # it saw the run progress
    assert any(0 < s < 60 for s in steps), steps                          # ...while it was live
    assert snaps[-1]["finished"] and snaps[-1]["step"] == 60 and snaps[-1]["max_steps"] == 60
    assert snaps[-1]["loss"] is not None and snaps[-1]["val_loss"] is not None


def test_monitor_once_reports_missing_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minigpt.monitor", str(tmp_path), "--once"], capture_output=True, text=True)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr
