"""Native kernels: compile a C source of the package into a shared library, once per source and machine.

Used by the C decode step (minigpt/infer/native_decode.py, infer/kernels/decode_step.c) and the BPE encoder
(minigpt/data/tokenizer/fast_encode.py, data/tokenizer/bpe_encode.c). A neutral home, so the data layer does
not import inference. The library is built with the system C compiler (`$CC`, else `cc`/`gcc`/`clang`) into
`$MINIGPT_CACHE/kernels` (default `~/.cache/minigpt/kernels`), keyed by a hash of the source, the flags and the
machine, so a rebuild happens only when one of them changes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

# Reassociating float sums lets the compiler vectorise the dot products; no -ffast-math, whose
# finite-math assumption would break the softmax's -inf start.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
          "-fassociative-math", "-shared", "-fPIC"]
# Two threads per step with OpenMP (the libgomp torch has loaded already); a compiler without OpenMP
# (Apple's clang) builds the single-threaded step instead.
OPENMP_FLAGS = ["-fopenmp"]


def cache_dir() -> Path:
    """Where compiled kernels are kept ($MINIGPT_CACHE/kernels)."""
    return Path(os.environ.get("MINIGPT_CACHE", Path.home() / ".cache" / "minigpt")) / "kernels"


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _machine_key(cc: str, flags: list[str]) -> str:
    """What the compiled library depends on besides its source: compiler, flags, CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return "\n".join([version, " ".join(flags), cpu, platform.system()])


def build_library(source: Path, force: bool = False) -> Path:
    """Compile the C file `source` atomically unless a build for this source and machine exists; returns its
    path (named after the source's stem).

    Tries with OpenMP first, then without; raises RuntimeError with the compiler's message if both fail.
    """
    source = Path(source)
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc/clang) to build " + str(source))
    src = source.read_bytes()
    errors = []
    for flags in (CFLAGS + OPENMP_FLAGS, CFLAGS):
        key = hashlib.sha256(src + _machine_key(cc, flags).encode()).hexdigest()[:16]
        out = cache_dir() / f"{source.stem}-{key}.so"
        if out.exists() and not force:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(tmp, out)  # atomic: a concurrent build or an interrupt never leaves half a library
                logger.info("built %s (%s)", out, " ".join(flags))
                return out
            errors.append(f"$ {cc} {' '.join(flags)}\n{proc.stderr.strip()[-1500:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"compiling {source} with {cc} failed:\n" + "\n".join(errors))
