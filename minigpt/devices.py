"""Device, precision and thread choices, each with the reason it was made."""
from __future__ import annotations

import os
import platform
import re
import sys
import time

import psutil
import torch


def pick_device(requested: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device that is missing is an error, not a silent fallback."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not re.match(r"^(cpu|mps|cuda(:\d+)?)$", str(requested)):
        raise ValueError(f"device: expected auto, cpu, mps, cuda or cuda:N (N a GPU number such as 0), got {requested!r}")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {requested!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {requested!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), numbered from 0")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device: {requested!r} requested but MPS is not available on this machine")
    return dev


def cpu_has_native_bf16() -> bool:
    """True only where the CPU has AVX512-BF16 or AMX; elsewhere bf16 matmul is emulated (~100x slower here)."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_dtype(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    """Return (dtype, reason). The rule is DESIGN.md's: bf16 on capable CUDA, fp16+GradScaler on older CUDA,
    fp16 on MPS, fp32 on a CPU without native bf16."""
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if requested != "auto":
        return names[requested], f"requested {requested}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA device supports bf16"
        return torch.float16, "CUDA device without bf16: fp16 with a GradScaler"
    if device.type == "mps":
        return torch.float16, "MPS: fp16 autocast (bf16 is missing on older macOS)"
    if cpu_has_native_bf16():
        return torch.bfloat16, "CPU has native bf16 (AVX512-BF16/AMX)"
    return torch.float32, "CPU without native bf16: bf16 matmul is emulated, about 100x slower than fp32 here"


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS: no mmap for large
    blocks and no trimming below 2 GB. Each training step allocates and frees the same large activation buffers;
    by default every block over 32 MB is a fresh mmap whose pages fault in again on first touch (tiny's bf16 step:
    about 13% faster with this, measured on a 2-core CPU). The process's resident memory then stays at its peak.
    A no-op (False) where the C library is not glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def set_threads(num_threads: int = 0) -> int:
    """Set torch's intra-op threads (0 = physical cores). Also sets OMP/MKL env for child processes."""
    most = 4 * (os.cpu_count() or 1)
    if not 0 <= num_threads <= most:  # a huge pool crashes torch's thread pool without a message
        raise ValueError(f"num_threads: expected 0 (auto) or at most {most} (4 x the {os.cpu_count()} CPU cores here), "
                         f"got {num_threads}")
    n = num_threads or int(os.environ.get("OMP_NUM_THREADS", 0) or 0) or physical_cores()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if num_threads:  # an explicit value wins over the environment (torchrun sets OMP_NUM_THREADS=1)
            os.environ[var] = str(n)
        else:
            os.environ.setdefault(var, str(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


_PEAK_CACHE: dict[str, float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5) -> float:
    """Achieved FLOP/s of large square matmuls: the machine's practical limit, used as the MFU denominator."""
    key = f"{device}-{dtype}-{n}"
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    # its own generator: the measurement must not move the global RNG a resumed run has just restored
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        c = a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        c.sum().item()
        best = min(best, time.perf_counter() - t)
    _PEAK_CACHE[key] = 2 * n ** 3 / best
    return _PEAK_CACHE[key]


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return psutil.Process().memory_info().rss / 2 ** 20


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Reads VmHWM from /proc: unlike getrusage's ru_maxrss, it starts afresh at exec, so a subprocess
    started by a large parent reports its own peak, not the parent's.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # not Linux: ru_maxrss is KB on Linux, bytes on macOS

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def system_info(device: str = "auto", dtype: str = "auto") -> dict:
    """The machine a run or report was made on: platform, cores, memory, torch, device and dtype (with why)."""
    dev = pick_device(device)
    dt, reason = pick_dtype(dtype, dev)
    vm = psutil.virtual_memory()
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_cores_physical": physical_cores(),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "memory_gb": round(vm.total / 2 ** 30, 1),
        "available_memory_gb": round(vm.available / 2 ** 30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "dtype": str(dt).replace("torch.", ""),
        "dtype_reason": reason,
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2 ** 30, 1)
    return info
