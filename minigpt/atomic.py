"""Atomic writes of files and folders, and cleaning up what an interrupted write left behind.

Files: a temporary file in the same directory, fsync, then os.replace. Readers see the old file or
the new one, never half of one.

Folders (`atomic_folder`): built under a hidden temporary name, fsynced, then swapped into place.
Replacing an existing folder uses one atomic exchange of the two names (Linux renameat2
RENAME_EXCHANGE, macOS renamex_np RENAME_SWAP), so at every instant the real name holds a complete
folder, old or new. Where the filesystem cannot exchange, it falls back to two renames; a crash between
them leaves the complete old folder under `.NAME.oldPID`, and `clean_stale_temporaries` puts it back at
the next start. Torch-free, so data-only modules can use it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

# hidden leftovers of interrupted writes: .NAME.tmpPID / .NAME.oldPID folders, .NAME.XXXX.tmp files
_STALE_FOLDER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)(?P<pid>\d+)$")
_STALE_FILE = re.compile(r"^\..+\.tmp$")


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent))


def after_fs_op(what: str) -> None:
    """Called between two filesystem operations of `atomic_folder` (tests inject a kill here)."""


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (new names, renames) durable; a no-op where directories can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SWAP = None  # the platform's exchange function once looked up: (callable, flag), or False where there is none


def _swap_function():
    global _SWAP
    if _SWAP is None:
        _SWAP = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                _SWAP = (lambda a, b: fn(-100, a, -100, b, 2), None)  # AT_FDCWD, RENAME_EXCHANGE
            elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
                fn = libc.renamex_np
                fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
                _SWAP = (lambda a, b: fn(a, b, 2), None)  # RENAME_SWAP
        except OSError:
            _SWAP = False
    return _SWAP


def exchange(a: str | Path, b: str | Path) -> bool:
    """Atomically swap the names of two existing paths; False where the platform or filesystem can't."""
    swap = _swap_function()
    if not swap:
        return False
    if swap[0](os.fsencode(str(a)), os.fsencode(str(b))) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name, fsync it, then swap it into place.

    At every instant the folder's name holds a complete old or a complete new folder (see the module
    docstring for filesystems without an exchange); a failed build removes its temporary folder.
    Checkpoints and the Hugging Face export both write this way.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    after_fs_op("temporary folder created")
    try:
        yield tmp
        after_fs_op("files written")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        after_fs_op("files synced")
        _put_in_place(tmp, folder, old)
    except BaseException:
        if not folder.exists() and old.exists():
            os.replace(old, folder)  # the two-rename fallback failed between its renames: the old one goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder.parent)


def _put_in_place(tmp: Path, folder: Path, old: Path) -> None:
    """tmp -> folder; an existing folder is exchanged with tmp (then removed) or, failing that, moved aside first."""
    if not folder.exists():
        os.replace(tmp, folder)
        after_fs_op("renamed into place")
        return
    if exchange(tmp, folder):
        after_fs_op("exchanged with the old folder")
        fsync_dir(folder.parent)
        shutil.rmtree(tmp)  # tmp now holds the old folder
        after_fs_op("old folder removed")
        return
    os.replace(folder, old)
    after_fs_op("old folder moved aside")
    os.replace(tmp, folder)
    after_fs_op("new folder renamed into place")
    fsync_dir(folder.parent)
    shutil.rmtree(old)
    after_fs_op("old folder removed")


def clean_stale_temporaries(folder: str | Path) -> list[str]:
    """Remove what interrupted writes left in `folder` (call it while holding the folder's run lock).

    `.NAME.tmpPID` (a half-built folder, or the old copy an exchange left) is deleted; `.NAME.oldPID`
    is put back as NAME when NAME is missing (a crash between the two fallback renames), else deleted;
    `.NAME.XXXX.tmp` files of atomic_write_text are deleted. Returns what was done, one line each.
    """
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    for p in sorted(folder.iterdir()):
        m = _STALE_FOLDER.match(p.name)
        if m and p.is_dir() and int(m.group("pid")) != os.getpid():
            target = folder / m.group("name")
            if m.group("kind") == "old" and not target.exists():
                os.replace(p, target)
                done.append(f"restored {target.name} from {p.name}")
            else:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
        elif not m and _STALE_FILE.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            done.append(f"removed {p.name}")
    if done:
        fsync_dir(folder)
        logger.info("%s: cleaned what an interrupted run left: %s", folder, "; ".join(done))
    return done
