"""Checkpoints: what a folder holds, corrupt / truncated / partial ones skipped, malicious pickles refused,
keep-last-N with permanent steps, and resume refusing an incompatible model or tokenizer."""
import json
import logging
import os
import shutil

import pytest
import torch

from minigpt.train import checkpoint as ckpt
from test_trainer import make_trainer


class Evil:
    """Unpickling this runs a shell command (the classic pickle payload)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step run saving every 2 steps, keeping the last 2 plus permanent step 2."""
    tmp = tmp_path_factory.mktemp("ckpt")
    t = make_trainer(tmp, max_steps=6, save_interval=2, keep_last_n_checkpoints=2, permanent_checkpoints=[2], use_ema=True)
    t.fit()
    return t


def copy_run(trained, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(trained.output_dir, dst)
    return dst


def test_checkpoint_contents(trained):
    out = trained.output_dir
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 4, 6]  # 2 is permanent; keep-last-2 keeps 4 and 6
    folder = out / "checkpoint_step_6"
    ckpt.verify_checkpoint(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "optimizer.pt", "trainer_state.json", "config.json", "manifest.json"} <= names
    opt = ckpt.load_optimizer_state(folder)
    assert set(opt) >= {"optimizer", "scaler", "torch_rng", "cuda_rng", "scheduler"}
    assert opt["scheduler"]["step"] == 6 and opt["optimizer"]["state"]
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["tokens_seen"] == 6 * 4 * 16
    assert state["sampler"]["position"] == 6 and set(state["rng"]) == {"python", "numpy"}
    config = json.loads((folder / "config.json").read_text())
    assert config["train"]["max_steps"] == 6 and config["model"]["d_model"] == 32 and "tokenizer_sha256" in config
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        assert (folder / name).stat().st_size == meta["size"] and ckpt.sha256_file(folder / name) == meta["sha256"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name or ".old" in p.name]  # no temp leftovers
    final = out / "final_model"
    model, _, cfg = None, None, None
    ckpt.verify_checkpoint(final)
    assert (final / "model.safetensors").is_file() and not (final / "optimizer.pt").exists()


@pytest.mark.parametrize("version", [None, 1, 3, "2"])
def test_a_checkpoint_of_another_format_version_is_refused(trained, tmp_path, version):
    """config.json records the format version; an older, unknown or missing one is refused (naming the file and
    the version), before any weights are read, never adapted. Older format: the flat, renamed-field layout."""
    out = copy_run(trained, tmp_path)
    folder = out / "final_model"
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == ckpt.FORMAT_VERSION == 2
    assert json.loads((folder / "manifest.json").read_text())["format"] == "minigpt-checkpoint-2"
    ckpt.read_config(folder)
    if version is None:
        del config["format_version"]
    else:
        config["format_version"] = version
    (folder / "config.json").write_text(json.dumps(config))
    ckpt.write_manifest(folder)  # a consistent manifest: only the version is wrong
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_checkpoint(folder)
    assert str(e.value).startswith(f"{folder / 'config.json'}: checkpoint format version {version!r}")
    assert "reads version 2 only" in str(e.value)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint format version"):
        ckpt.check_resumable(folder)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "manifest_mismatch"])
def test_damaged_newest_checkpoint_is_skipped(trained, tmp_path, caplog, damage):
    out = copy_run(trained, tmp_path)
    newest = out / "checkpoint_step_6"
    weights = newest / "model.safetensors"
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "no_manifest":  # an interrupted save (manifest is written last)
        (newest / "manifest.json").unlink()
    else:
        m = json.loads((newest / "manifest.json").read_text())
        m["files"]["config.json"]["size"] += 1
        (newest / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.verify_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="minigpt.train.checkpoint"):
        assert ckpt.latest_valid_checkpoint(out) == out / "checkpoint_step_4"
    assert "checkpoint_step_6" in caplog.text  # the warning names the skipped checkpoint
    # auto-resume uses the previous good one
    t = make_trainer(tmp_path, max_steps=6, auto_resume=True, save_interval=2)
    t.resume(ckpt.latest_valid_checkpoint(t.output_dir))
    assert t.step == 4


def test_resume_from_a_corrupt_explicit_path_stops(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    (out / "checkpoint_step_6" / "trainer_state.json").write_text("{}")
    t = make_trainer(tmp_path, max_steps=6, resume_from=str(out / "checkpoint_step_6"))
    with pytest.raises(ckpt.CheckpointError, match="trainer_state.json"):
        t.fit()


def test_malicious_pickle_is_refused_and_not_run(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    folder = out / "checkpoint_step_6"
    # the payload is real: an unsafe load would run it
    probe = tmp_path / "PROBE"
    torch.save({"optimizer": Evil(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()
    marker = tmp_path / "MARKER"
    torch.save({"optimizer": Evil(marker), "scaler": {}, "torch_rng": torch.get_rng_state()}, folder / "optimizer.pt")
    ckpt.write_manifest(folder)  # a consistent manifest: checksums cannot save us, safe loading must
    ckpt.verify_checkpoint(folder)
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ckpt.load_optimizer_state(folder)
    t = make_trainer(tmp_path, max_steps=8, resume_from=str(folder))
    with pytest.raises(ckpt.CheckpointError, match="optimizer.pt"):
        t.fit()
    assert not marker.exists()


def test_resume_refuses_other_model_shape_and_tokenizer(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    folder = out / "checkpoint_step_6"
    cfg = json.loads((folder / "config.json").read_text())
    t = make_trainer(tmp_path, max_steps=8)
    t.model_cfg.d_model, saved = 64, t.model_cfg.d_model
    try:
        with pytest.raises(ckpt.CheckpointError, match="d_model"):
            t.resume(folder)
    finally:
        t.model_cfg.d_model = saved
    cfg["tokenizer_sha256"] = "a" * 64
    (folder / "config.json").write_text(json.dumps(cfg))
    t = make_trainer(tmp_path, max_steps=8)
    t.tokenizer = type("Tok", (), {"sha256": "b" * 64})()
    with pytest.raises(ckpt.CheckpointError, match="tokenizer"):
        t.resume(folder)


def test_resume_with_changed_lr_batch_and_steps_warns(trained, tmp_path, caplog):
    out = copy_run(trained, tmp_path)
    t = make_trainer(tmp_path, max_steps=9, learning_rate=1e-3, auto_resume=True)
    with caplog.at_level(logging.WARNING, logger="minigpt.train.trainer"):
        t.resume(ckpt.latest_valid_checkpoint(t.output_dir))
    assert t.step == 6
    assert "learning_rate changed" in caplog.text and "max_steps changed" in caplog.text


def test_prune_keeps_last_n_and_permanent(tmp_path):
    for s in (1, 2, 3, 4, 5, 6):
        (tmp_path / f"checkpoint_step_{s}").mkdir()
    (tmp_path / "final_model").mkdir()
    (tmp_path / ".checkpoint_step_7.tmp999999").mkdir()  # left by a killed save
    removed = ckpt.prune_checkpoints(tmp_path, 2, [1, 3])
    assert sorted(p.name for p in removed) == [".checkpoint_step_7.tmp999999", "checkpoint_step_2", "checkpoint_step_4"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 3, 5, 6] and (tmp_path / "final_model").is_dir()


def test_interrupted_save_leaves_previous_checkpoint_usable(trained, tmp_path, monkeypatch):
    out = copy_run(trained, tmp_path)
    t = make_trainer(tmp_path, max_steps=8, auto_resume=True)
    t.resume(ckpt.latest_valid_checkpoint(t.output_dir))
    t.step = 8

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "write_manifest", boom)
    with pytest.raises(OSError):
        t.save_step_checkpoint()
    assert not (out / "checkpoint_step_8").exists()  # only a hidden temp folder, never a half checkpoint
    assert ckpt.latest_valid_checkpoint(out) == out / "checkpoint_step_6"
