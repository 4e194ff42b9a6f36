"""One writer per run folder: an OS-level lock on `<output_dir>/.lock`.

The lock is `fcntl.flock` on an open file, so the operating system releases it when the holder exits
in any way (return, exception, SIGKILL, a dead kernel); a stale lock file from a killed run does not
block the next one. The holder writes its PID (and host) into the file so a refusal can name it.
Under DDP only rank 0 takes the lock: it alone writes checkpoints and metrics.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"

try:  # POSIX; on Windows there is no flock and the lock is skipped with a warning
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class RunLockedError(RuntimeError):
    """Another process is already training into this run folder."""


def _holder(path: Path) -> str:
    """'pid N on HOST' from the lock file (written by the holder right after it took the lock)."""
    for _ in range(20):  # the holder writes its PID just after locking: wait a moment for it
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        if text:
            parts = dict(p.split("=", 1) for p in text.split() if "=" in p)
            return f"pid {parts.get('pid', '?')} on {parts.get('host', '?')}"
        time.sleep(0.05)
    return "pid unknown"


class RunLock:
    """`with RunLock(folder):` or acquire()/release(); acquire raises RunLockedError naming the holder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            logger.warning("%s: no file locking on this platform; make sure one training writes here", self.folder)
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunLockedError(
                f"{self.folder}: another training is writing to this folder ({_holder(self.path)}); "
                "wait for it to finish or stop it, or train into another output_dir / run_name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty file: nobody holds it (the OS lock is what counts)
        except OSError:
            pass
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
