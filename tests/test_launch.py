"""DDP through launch(): 2 gloo processes on CPU match 1 process with the same global batch, and an
interrupt ends the whole process group (checkpoint at the current step, no process left behind)."""
import json
import sys

import psutil
import pytest
import torch
from safetensors.torch import load_file

from minigpt.train import checkpoint as ckpt
from minigpt.train.launch import launch, torchrun_command
from minigpt.params import load_params

from conftest import make_tiny_run

TINY = dict(config="ci", d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32, seq_len=16, max_steps=5,
            warmup_steps=1, eval_interval=5, num_eval_batches=1, save_steps=5, log_interval=1, plot_loss=False,
            sample_interval=0, learning_rate=3e-3, seed=7, num_threads=1, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("launch_run"))


def no_children():
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def metrics(out):
    return [json.loads(l) for l in open(out / "metrics.jsonl") if '"loss"' in l and "skipped" not in l]


def test_command_line():
    cmd = torchrun_command("p.json", 2)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=2" in cmd
    assert cmd[-6:] == ["-m", "minigpt.train.worker", "--params", "p.json", "--section", "pretrain"]
    multi = torchrun_command("p.json", 4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29501)
    assert "--standalone" not in multi
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29501"} <= set(multi)


def test_two_gloo_processes_match_one_process(run_dir, monkeypatch):
    out2, out1 = run_dir / "ddp2", run_dir / "ddp1"
    lines = []
    r = launch(2, run_dir=str(run_dir), output_dir=str(out2), batch_size=2, on_line=lines.append, timeout=300, **TINY)
    assert r["returncode"] == 0, "\n".join(lines[-30:])
    assert r["result"]["step"] == 5 and any("DDP: 2 processes, backend gloo" in l for l in lines)
    assert any(l.startswith("step ") or " step " in l for l in lines)  # metrics lines streamed back
    assert not no_children()
    # the same worker in this process, world size 1, batch 4 = the global batch of 2 ranks x 2
    from minigpt.train import worker as train_worker

    P = dict(load_params("pretrain", run_dir=str(run_dir), output_dir=str(out1), batch_size=4, **TINY))
    pfile = run_dir / "p1.json"
    pfile.write_text(json.dumps({k: str(v) if hasattr(v, "as_posix") else v for k, v in P.items()}))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert train_worker.main(["--params", str(pfile)]) == 0
    m2, m1 = metrics(out2), metrics(out1)
    assert [r["step"] for r in m2] == [r["step"] for r in m1] == [1, 2, 3, 4, 5]
    for a, b in zip(m2, m1):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["tokens_seen"] == b["tokens_seen"]
    w2 = load_file(str(out2 / "final_model" / "model.safetensors"))
    w1 = load_file(str(out1 / "final_model" / "model.safetensors"))
    diff = max(float((w2[k] - w1[k]).abs().max()) for k in w1)
    print(f"2-process vs 1-process: losses {[round(r['loss'], 6) for r in m2]} vs {[round(r['loss'], 6) for r in m1]}, "
          f"max |weight diff| {diff:.2e}")
    assert diff < 1e-4
    assert not (out2 / "checkpoint_step_5" / "rank1").exists() and len(list(out2.glob("metrics*.jsonl"))) == 1


def test_interrupt_ends_the_process_group(run_dir):
    out = run_dir / "ddp_int"
    seen = []

    def on_line(line):
        seen.append(line)
        if sum(1 for l in seen if "loss" in l and "step" in l) == 2 and "sent" not in seen:
            seen.append("sent")
            raise KeyboardInterrupt  # what Jupyter's stop button does to the cell

    r = launch(2, run_dir=str(run_dir), output_dir=str(out), batch_size=2, on_line=on_line, grace_s=60,
               **{**TINY, "max_steps": 100_000, "save_steps": 100_000, "warmup_steps": 1})
    assert r["interrupted"]
    assert not no_children()  # torchrun and both workers are gone
    step = r["result"]["step"] if r["result"] else None
    assert step and r["result"]["stop_reason"].startswith("signal"), "\n".join(r["lines"][-30:])
    ckpt.verify_checkpoint(out / f"checkpoint_step_{step}")  # rank 0 saved at the step where all ranks stopped


def test_samples_from_fixed_prompts_and_guard_from_params(run_dir):
    from minigpt.train.guard import ResourceGuard
    from minigpt.train.pretrain import build_pretrain_trainer

    samples = []

    class Collect:
        def on_sample(self, trainer, prompt, text):
            samples.append((trainer.step, prompt, text))

    P = load_params("pretrain", run_dir=str(run_dir), output_dir=str(run_dir / "sampled"), batch_size=2,
                    **{**TINY, "max_steps": 4, "sample_interval": 2, "max_memory": 99.5, "guard_interval": 60.0})
    t = build_pretrain_trainer(P, callbacks=[Collect()])
    assert isinstance(t.guard, ResourceGuard) and t.guard.limits.memory == 99.5
    t.fit()
    assert [(s, p) for s, p, _ in samples] == [(2, "你好，"), (4, "你好，")]
    assert all(isinstance(text, str) and text for _, _, text in samples)
