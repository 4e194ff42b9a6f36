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

    `params`: resolved parameters (a notebook's `P`); keyword `overrides` go on top. Without `params`,
    they are resolved here with `load_params(section, **overrides)` (config file, defaults, validation).
    """
    from ..params import jsonable, load_params

    if params is None:
        P = dict(load_params(section, **overrides))
    else:
        P = {**params, **overrides}
    P = jsonable(P)
    run_dir = Path(P["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, params_file = tempfile.mkstemp(prefix=f"launch_{section}_", suffix=".json", dir=run_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(P, f, ensure_ascii=False, indent=1)
    cmd = torchrun_command(params_file, nproc_per_node, section, nnodes, node_rank, master_addr, master_port)
    logger.info("launching: %s", " ".join(cmd))
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=child_env, start_new_session=True)
    lines: list[str] = []
    result = None
    interrupted = False
    deadline = time.monotonic() + timeout if timeout else None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(RESULT_PREFIX) or RESULT_PREFIX in line:
                try:
                    result = json.loads(line.split(RESULT_PREFIX, 1)[1])
                except ValueError:
                    pass
            lines.append(line)
            if on_line is not None:
                on_line(line)
            if deadline and time.monotonic() > deadline:
                raise TimeoutError(f"launch: still running after {timeout}s")
        proc.wait()
    except KeyboardInterrupt:
        interrupted = True
        try:
            if on_line is not None:
                on_line("interrupted: stopping the workers (they save a checkpoint at the current step)…")
            kill_group(proc, grace_s)
            for line in proc.stdout or []:  # what the workers said while stopping
                line = line.rstrip("\n")
                lines.append(line)
                if RESULT_PREFIX in line:
                    try:
                        result = json.loads(line.split(RESULT_PREFIX, 1)[1])
                    except ValueError:
                        pass
                if on_line is not None:
                    on_line(line)
        except KeyboardInterrupt:  # a second interrupt: no more waiting
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    finally:
        if proc.poll() is None:  # an exception in this loop (or a timeout): never leave workers behind
            kill_group(proc, grace_s)
        try:
            os.unlink(params_file)
        except OSError:
            pass
    if proc.returncode and not interrupted:
        logger.error("torchrun exited with code %s; the last lines:\n%s", proc.returncode, "\n".join(lines[-20:]))
    return {"returncode": proc.returncode, "result": result, "interrupted": interrupted, "command": cmd,
            "params_file": params_file, "lines": lines}
