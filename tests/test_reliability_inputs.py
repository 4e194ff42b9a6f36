"""Every file read is checked before use, every parameter has bounds, and messages say what happened:
token files, manifests, config.json, trainer_state.json, parameters, run_name, a full disk, an unsafe
optimizer.pt, and resource-guard limits that could never resume."""
import errno
import json
import logging
import math
import os
import shutil
import threading

import numpy as np
import pytest
import torch

from minigpt import TrainConfig
from minigpt.data.packing import load_tokens
from minigpt.infer.config import GenerationConfig
from minigpt.params import ParameterError, load_params, read_config_file
from minigpt.train import checkpoint as ckpt
from minigpt.train.guard import ResourceGuard
from conftest import make_tiny_run
from test_checkpoint import Evil
from test_trainer import make_trainer


# ----- case 5: token files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("inputs") / "run")


def tokens_copy(run, tmp_path):
    dst = tmp_path / "tokens"
    shutil.copytree(run / "tokens", dst)
    return dst


def set_meta(tokens, **changes):
    meta = json.loads((tokens / "meta.json").read_text())
    meta.update(changes)
    (tokens / "meta.json").write_text(json.dumps(meta))
    return meta


def test_token_ids_outside_the_vocabulary_are_found_at_load_naming_file_and_position(run, tmp_path):
    tokens = tokens_copy(run, tmp_path)
    arr = np.fromfile(tokens / "train.bin", dtype=np.uint16)
    arr[1234] = 7000  # vocab is 300
    arr.tofile(tokens / "train.bin")
    with pytest.raises(ValueError) as e:
        load_tokens(tokens, "train")
    assert str(e.value).startswith(f"{tokens / 'train.bin'}: token id 7000 at position 1234 is outside the vocabulary")


def test_chunked_id_check_reads_the_whole_file():
    from minigpt.data.packing import check_token_ids

    arr = np.zeros(1000, dtype=np.uint16)
    arr[999] = 50
    check_token_ids(arr[:999], 50, "t.bin", chunk=64)
    with pytest.raises(ValueError, match="token id 50 at position 999"):
        check_token_ids(arr, 50, "t.bin", chunk=64)  # the last chunk too


@pytest.mark.parametrize("dtype", ["uint8", "float16", "bool", "<U1", "int16", "no-such-type"])
def test_meta_dtype_must_be_an_unsigned_integer(run, tmp_path, dtype):
    tokens = tokens_copy(run, tmp_path)
    set_meta(tokens, dtype=dtype)
    with pytest.raises(ValueError) as e:
        load_tokens(tokens, "train")
    assert f"meta.json: dtype {dtype!r} is not a token dtype; token files are uint16 or uint32 (unsigned integers)" in str(e.value)


@pytest.mark.parametrize("entry,problem", [
    ({"file": "../../etc/hostname", "num_tokens": 5}, "expected a file name inside"),
    ({"file": "train.bin"}, "num_tokens None"),
    ([], "expected an object with file and num_tokens"),
])
def test_meta_split_entries_are_checked(run, tmp_path, entry, problem):
    tokens = tokens_copy(run, tmp_path)
    meta = json.loads((tokens / "meta.json").read_text())
    set_meta(tokens, splits={**meta["splits"], "train": entry})
    with pytest.raises(ValueError, match=problem):
        load_tokens(tokens, "train")


# ----- cases 6 and 7: manifests, config.json, trainer_state.json ---------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    t = make_trainer(tmp_path_factory.mktemp("trained"), max_steps=6, save_interval=3)
    t.fit()
    return t.output_dir


def copy_out(trained, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(trained, dst)
    return dst


@pytest.mark.parametrize("manifest,problem", [
    ([], "expected an object with a \"files\" mapping, got list"),
    (None, "expected an object with a \"files\" mapping, got NoneType"),
    ({"files": []}, "expected an object with a \"files\" mapping"),
    ({"files": {}}, "lists no files"),
    ({"files": {"model.safetensors": {"sha256": "0" * 64}}}, "entry 'model.safetensors': expected"),
    ({"files": {"../../etc/hostname": {"size": 1, "sha256": "0" * 64}}}, "is not a file name inside"),
    ({"files": {"config.json": {"size": 1, "sha256": "0" * 64}}}, "needs config.json and a .safetensors"),
])
def test_malformed_manifest_is_an_error_naming_it_and_auto_resume_skips_it(trained, tmp_path, caplog, manifest, problem):
    out = copy_out(trained, tmp_path)
    (out / "checkpoint_step_6" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.verify_checkpoint(out / "checkpoint_step_6")
    assert str(e.value).startswith(str(out / "checkpoint_step_6" / "manifest.json")) and problem in str(e.value)
    t = make_trainer(tmp_path, max_steps=8, save_interval=3, auto_resume=True)
    with caplog.at_level(logging.WARNING, logger="minigpt.train.checkpoint"):
        t.resume(ckpt.latest_valid_checkpoint(t.output_dir))
    assert t.step == 3 and "skipping checkpoint" in caplog.text and problem in caplog.text


def test_manifest_entry_outside_the_folder_is_never_read(trained, tmp_path, monkeypatch):
    out = copy_out(trained, tmp_path)
    folder = out / "checkpoint_step_6"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../../secret"] = {"size": 3, "sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (out.parent / "secret").write_text("abc")
    opened = []
    monkeypatch.setattr(ckpt, "sha256_file", lambda p, chunk=0: opened.append(p) or "")
    with pytest.raises(ckpt.CheckpointError, match="not a file name inside"):
        ckpt.verify_checkpoint(folder)
    assert opened == []


def test_config_asking_for_a_huge_model_is_refused_before_building_it(trained, tmp_path):
    out = copy_out(trained, tmp_path)
    folder = out / "final_model"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["vocab_size"] = 10 ** 9
    (folder / "config.json").write_text(json.dumps(cfg))
    ckpt.write_manifest(folder)  # a consistent manifest: the size bound must catch it
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_checkpoint(folder)
    msg = str(e.value)
    assert msg.startswith(str(folder / "config.json")) and "describes a model of 32,000," in msg
    assert "model.safetensors holds" in msg and "refusing to build it" in msg


@pytest.mark.parametrize("change,problem", [
    ({"step": -4}, "step -4; expected a whole number >= 0"),
    ({"step": 5}, "step 5 but the folder is checkpoint_step_6"),
    ({"tokens_seen": "many"}, "tokens_seen 'many'"),
    ({"sampler": None}, "sampler None"),
    ({"rng": {}}, "rng: expected python and numpy RNG states"),
    ({"best_val": "nan"}, "best_val 'nan'"),
])
def test_bad_trainer_state_is_refused_and_skipped(trained, tmp_path, caplog, change, problem):
    out = copy_out(trained, tmp_path)
    folder = out / "checkpoint_step_6"
    state = json.loads((folder / "trainer_state.json").read_text())
    state.update(change)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    ckpt.write_manifest(folder)
    with pytest.raises(ckpt.CheckpointError, match="trainer_state.json: " + problem.split(" ")[0]):
        make_trainer(tmp_path, max_steps=8, resume_from=str(folder)).fit()
    t = make_trainer(tmp_path, max_steps=8, save_interval=3, auto_resume=True)
    with caplog.at_level(logging.WARNING, logger="minigpt.train.checkpoint"):
        t.resume(ckpt.latest_valid_checkpoint(t.output_dir))
    assert t.step == 3 and problem in caplog.text


# ----- case 8: parameter bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw,problem", [
    (dict(num_threads=10 ** 6), "num_threads: expected 0 (auto) or at most"),
    (dict(dataloader_workers=10 ** 6), "dataloader_workers: expected 0 to"),
    (dict(learning_rate=1e-4, min_lr=1e-3), "min_lr: expected at most learning_rate=0.0001"),
    (dict(min_lr=math.inf), "min_lr: expected a finite number, got inf"),
    (dict(weight_decay=math.inf), "weight_decay: expected a finite number, got inf"),
    (dict(learning_rate=math.nan), "learning_rate: expected a finite number, got nan"),
    (dict(device="cuda:abc"), "device: expected auto, cpu, mps, cuda or cuda:N"),
    (dict(device="tpu"), "device: expected auto, cpu, mps, cuda or cuda:N"),
])
def test_train_parameters_have_bounds(kw, problem):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_flat(**kw).validate()
    assert str(e.value).startswith(problem), str(e.value)
    with pytest.raises(ParameterError, match=problem.split(":")[0]):
        from minigpt.train.pretrain import train_config_from_params

        train_config_from_params(load_params("pretrain", config="ci", **kw))


def test_thread_bound_matches_the_cpu_count():
    most = 4 * os.cpu_count()
    TrainConfig.from_flat(num_threads=most, dataloader_workers=most).validate()
    with pytest.raises(ValueError, match=f"at most {most}"):
        TrainConfig.from_flat(num_threads=most + 1).validate()
    from minigpt.devices import pick_device, set_threads

    with pytest.raises(ValueError, match="num_threads"):
        set_threads(10 ** 6)
    with pytest.raises(ValueError, match="device: expected auto, cpu, mps, cuda or cuda:N.*'cuda:abc'"):
        pick_device("cuda:abc")


@pytest.mark.parametrize("key", ["temperature", "repetition_penalty", "top_p"])
def test_generation_floats_must_be_finite(key):
    with pytest.raises(ValueError, match=f"{key}: expected a finite number, got nan"):
        GenerationConfig(**{key: math.nan}).validate()
    with pytest.raises(ValueError, match=f"{key}: expected a finite number, got inf"):
        GenerationConfig(**{key: math.inf}).validate()


def test_duplicate_yaml_keys_name_the_key_and_line(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("max_steps: 5\nlearning_rate: 1.0e-3\npretrain:\n  batch_size: 2\n  seq_len: 16\n  batch_size: 4\n")
    with pytest.raises(ParameterError) as e:
        read_config_file(str(f))
    assert str(e.value) == f"config: {f} is not valid YAML: line 6: key 'batch_size' appears twice (first on line 4); keep one"
    f.write_text("max_steps: 5\nmax_steps: 6\n")
    with pytest.raises(ParameterError, match="line 2: key 'max_steps' appears twice"):
        load_params("pretrain", config=str(f))


# ----- case 9: run_name ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../outside", "a/b", "..", "/tmp/x", "~x"])
def test_run_name_is_a_name_not_a_path(name):
    with pytest.raises(ParameterError) as e:
        load_params("pretrain", config="ci", run_name=name)
    assert str(e.value) == (f"run_name: {name!r} is a path; expected a plain folder name such as 'demo' "
                            "(set run_dir for a folder elsewhere)")
    assert load_params("pretrain", config="ci", run_name="demo_2").run_dir.name == "demo_2"


# ----- case 10: a full disk, an unsafe optimizer.pt -----------------------------------------------------


def test_disk_full_names_the_file_and_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    out = copy_out(trained, tmp_path)
    t = make_trainer(tmp_path, max_steps=8, save_interval=3, auto_resume=True)
    t.resume(ckpt.latest_valid_checkpoint(t.output_dir))
    t.step = 9
    real_open = ckpt.open_for_write

    class Full:
        """A file on a device that fills up after 100 bytes (write raises ENOSPC, as the kernel does)."""

        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(ckpt, "open_for_write", lambda p: Full(real_open(p)) if p.name == "optimizer.pt" else real_open(p))
    with pytest.raises(ckpt.DiskFullError) as e:
        t.save_step_checkpoint()
    assert str(e.value).startswith("[Errno 28] no space left on device while writing ")
    assert str(e.value).endswith(f".checkpoint_step_9.tmp{os.getpid()}/optimizer.pt")
    assert e.value.errno == errno.ENOSPC and "unexpected pos" not in str(e.value)
    assert not (out / "checkpoint_step_9").exists() and not list(out.glob(".checkpoint_step_9*"))
    assert ckpt.latest_valid_checkpoint(out) == out / "checkpoint_step_6"  # the previous one, intact


def test_unsafe_optimizer_state_refusal_is_in_minigpts_words(trained, tmp_path):
    out = copy_out(trained, tmp_path)
    folder = out / "checkpoint_step_6"
    marker = tmp_path / "MARKER"
    torch.save({"optimizer": Evil(marker)}, folder / "optimizer.pt")
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_optimizer_state(folder)
    msg = str(e.value)
    assert msg == (f"{folder / 'optimizer.pt'}: refused to load: it holds more than plain tensors, numbers and strings "
                   "(pickled Python objects, which could run code when loaded). minigpt never loads such files; "
                   "delete this checkpoint or resume from another one.")
    assert "weights_only" not in msg and e.value.__cause__ is None and e.value.__suppress_context__
    assert not marker.exists()
    (folder / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ckpt.CheckpointError, match="not a readable optimizer state"):
        ckpt.load_optimizer_state(folder)


# ----- case 11: the resource guard ----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 5])
def test_guard_limit_at_or_under_the_resume_margin_is_rejected(limit):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_flat(max_cpu=limit).validate()
    assert str(e.value).startswith(f"max_cpu: expected 0 (no limit) or a limit above the guard's 5% resume margin")
    with pytest.raises(ValueError, match=f"max_memory: a limit of {limit}% is at or under the resume margin"):
        ResourceGuard(max_memory=limit, read=lambda: {"memory": 50.0})
    TrainConfig.from_flat(max_cpu=5.5).validate()


def test_guard_logs_a_stop_request_as_a_stop(caplog):
    stop = threading.Event()

    def read():
        stop.set()
        return {"cpu": 99.0}

    g = ResourceGuard(max_cpu=50, read=read, clock=lambda: 0.0, sleep=lambda s: None)
    with caplog.at_level(logging.WARNING, logger="minigpt.train.guard"):
        g.wait_if_needed(stop)
    assert "stop requested while paused" in caplog.text and "not resuming" in caplog.text
    assert "resuming after" not in caplog.text and g.events[-1]["event"] == "stopped"


def test_an_invalid_json_line_is_described_once_where():
    from minigpt.data.jsonl import parse_text

    assert parse_text('{"a": "x') == (None, "invalid_json", "Unterminated string starting at column 7")
    assert parse_text('{"a" 1}') == (None, "invalid_json", "Expecting ':' delimiter at column 6")
    assert parse_text('{"a": 1,\n"b" 2}')[2] == "Expecting ':' delimiter at line 2 column 5"
