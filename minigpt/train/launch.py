"""DDP from a notebook cell: `launch(nproc_per_node=2, max_steps=100, ...)` runs

    python -m torch.distributed.run --standalone --nproc_per_node=N -m minigpt.train.worker --params P.json

with the notebook's resolved parameters (written as JSON), streams the workers' log back line by line,
and on interrupt (Ctrl+C / the kernel's stop button) ends the whole process group: SIGTERM first, so
the workers save a checkpoint at the current step, then SIGKILL after a grace period. No orphans.

Multi-node: pass nnodes, node_rank, master_addr, master_port (then no --standalone), one call per node.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

RESULT_PREFIX = "MINIGPT_RESULT "


def torchrun_command(params_file: str | Path, nproc_per_node: int | str = 2, section: str = "pretrain", nnodes: int = 1,
                     node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int = 29500) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if int(nnodes) == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}"]
    cmd += [f"--nproc_per_node={nproc_per_node}", "-m", "minigpt.train.worker", "--params", str(params_file), "--section", section]
    return cmd


def kill_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the process group (workers save and exit), then SIGKILL whatever is left after `grace_s`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("workers still running %.0fs after SIGTERM; sending SIGKILL", grace_s)
    try:  # the agent may be gone while a worker lingers: kill the group regardless
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def launch(nproc_per_node: int | str = 2, *, params: dict | None = None, section: str = "pretrain", nnodes: int = 1,
           node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int = 29500,
           on_line: Callable[[str], None] | None = print, grace_s: float = 30.0, timeout: float | None = None,
           env: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Run notebook `section`'s training on `nproc_per_node` processes; returns
    {"returncode", "result" (rank 0's fit() result or None), "interrupted", "command", "params_file", "lines"}.

    `params`: resolved parameters (a notebook's `P`); keyword `overrides` go on top (earlier parameter names
    included). Without `params`, they are resolved here with `load_params(section, **overrides)`.
    `on_line` receives every line the workers print (default: print it into the notebook cell).
    """
    params_file = _write_params(params, section, overrides)
    cmd = torchrun_command(params_file, nproc_per_node, section, nnodes, node_rank, master_addr, master_port)
    logger.info("launching: %s", " ".join(cmd))
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=child_env, start_new_session=True)
    stream = _Stream(on_line)
    interrupted = False
    try:
        stream.follow(proc, timeout)
        proc.wait()
    except KeyboardInterrupt:
        interrupted = True
        _stop_workers(proc, stream, grace_s)
    finally:
        if proc.poll() is None:  # an exception in this loop (or a timeout): never leave workers behind
            kill_group(proc, grace_s)
        try:
            os.unlink(params_file)
        except OSError:
            pass
    if proc.returncode and not interrupted:
        logger.error("torchrun exited with code %s; the last lines:\n%s", proc.returncode, "\n".join(stream.lines[-20:]))
    return {"returncode": proc.returncode, "result": stream.result, "interrupted": interrupted, "command": cmd,
            "params_file": params_file, "lines": stream.lines}


def _write_params(params: dict | None, section: str, overrides: dict[str, Any]) -> str:
    """The resolved parameters as a JSON file in the run folder, for the workers to read; returns its path."""
    from ..params import Params, jsonable, load_params

    if params is None:
        P = load_params(section, **overrides)
    else:
        P = Params(params)
        P.update(overrides)  # earlier names (save_steps...) land on their current keys
    P = jsonable(P)
    run_dir = Path(P["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, params_file = tempfile.mkstemp(prefix=f"launch_{section}_", suffix=".json", dir=run_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(P, f, ensure_ascii=False, indent=1)
    return params_file


class _Stream:
    """The workers' output: every line, handed to `on_line`, and rank 0's result line parsed."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line = on_line
        self.lines: list[str] = []
        self.result: dict | None = None

    def add(self, line: str) -> None:
        line = line.rstrip("\n")
        if RESULT_PREFIX in line:
            try:
                self.result = json.loads(line.split(RESULT_PREFIX, 1)[1])
            except ValueError:
                pass
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def follow(self, proc: subprocess.Popen, timeout: float | None) -> None:
        deadline = time.monotonic() + timeout if timeout else None
        assert proc.stdout is not None
        for line in proc.stdout:
            self.add(line)
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"launch: still running after {timeout}s")


def _stop_workers(proc: subprocess.Popen, stream: _Stream, grace_s: float) -> None:
    """After an interrupt: SIGTERM the workers (they save), collect what they say; a second interrupt kills."""
    try:
        if stream.on_line is not None:
            stream.on_line("interrupted: stopping the workers (they save a checkpoint at the current step)…")
        kill_group(proc, grace_s)
        for line in proc.stdout or []:  # what the workers said while stopping
            stream.add(line)
    except KeyboardInterrupt:  # a second interrupt: no more waiting
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
