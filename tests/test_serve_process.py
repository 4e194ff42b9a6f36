"""`python -m minigpt.serve` as a real process on 127.0.0.1: a streamed request in flight when SIGTERM
arrives still ends with its last chunk and [DONE], and the process exits with status 0."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from minigpt.train.checkpoint import save_checkpoint  # noqa: E402
from conftest import tiny_gpt, tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    tok = tiny_tokenizer()
    tok.save(tmp / "tok")
    model = tiny_gpt(tok.vocab_size, d_model=64, n_layers=2, max_seq_len=512)
    return save_checkpoint(tmp / "ckpt", model, {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256},
                           tokenizer_dir=tmp / "tok")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(checkpoint, *args):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "minigpt.serve", str(checkpoint), "--port", str(port), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server did not come up:\n{proc.communicate()[0]}")


def test_sigterm_finishes_in_flight_request_and_exits_0(checkpoint):
    proc, url = _start(checkpoint, "--decode-backend", "model", "--shutdown-timeout", "20")
    try:
        body = {"model": "minigpt", "prompt": "长江", "max_tokens": 400, "stream": True, "temperature": 0,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            assert httpx.get(url + "/health").json()["running"] == 1  # still decoding when the signal comes
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        events = [first] + rest
        assert events[-1] == "data: [DONE]"
        usage = json.loads(events[-2][6:])["usage"]
        assert usage["completion_tokens"] == 400  # the request ran to its end, not cut by the signal
        assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "length"
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "SIGTERM: finishing the requests in flight" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    from minigpt.serve.cli import main

    assert main([str(tmp_path / "nope"), "--port", str(_free_port())]) == 1
    assert "nope" in capsys.readouterr().err
