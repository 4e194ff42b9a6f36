"""The machine side of training: device, dtype and threads, seeds, TF32, the matmul peak of the run's dtype (MFU),
autocast and torch.compile."""
from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
from typing import Callable

import numpy as np
import torch

from ..config import TrainConfig
from ..devices import keep_freed_memory, measure_peak_flops, pick_device, pick_dtype, set_threads

logger = logging.getLogger(__name__)


def setup_machine(cfg: TrainConfig) -> tuple[torch.device, torch.dtype, str]:
    """Threads, device, dtype (with the reason it was picked), TF32 and every RNG seeded: (device, dtype, reason)."""
    set_threads(cfg.machine.num_threads)
    device = pick_device(cfg.machine.device)
    dtype, reason = pick_dtype(cfg.machine.dtype, device)
    if device.type == "cpu" and not cfg.machine.disable_speedups:
        keep_freed_memory()  # the step's large buffers are reused rather than faulted in again each step
    if device.type == "cuda" and not cfg.machine.disable_speedups:
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere+ (fp32 runs): near-free speed
        torch.backends.cudnn.allow_tf32 = True
    seed = cfg.schedule.seed
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    return device, dtype, reason


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def matmul_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(FLOP/s, dtype name): the measured matmul peak of the dtype a run's matmuls use, MFU's denominator.

    fp32 runs use the fp32 peak (TF32 on CUDA where setup_machine enabled it), bf16/fp16 autocast runs the
    16-bit peak: an fp32 peak under a bf16 run overstates MFU several times over on CPUs with AMX.
    Measured once per process and dtype (devices.measure_peak_flops caches it).
    """
    return measure_peak_flops(device, dtype), DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16/fp16 runs; nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_model(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.nn.Module | Callable:
    """torch.compile with a one-line fallback; never raises."""
    mode = cfg.machine.compile_mode
    if mode == "auto":
        mode = {"cuda": "max-autotune", "mps": "reduce-overhead"}.get(device.type, "default")
    try:
        compiled = torch.compile(model, mode=None if mode == "default" else mode)
        logger.info("torch.compile enabled (mode=%s)", mode)
        return compiled
    except Exception as e:  # unsupported backend or platform
        logger.warning("torch.compile unavailable (%s: %s); running eager", type(e).__name__, str(e)[:120])
        return model


def install_stop_signals(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Route SIGINT/SIGTERM (Ctrl+C, a kernel interrupt, `kill`) to `on_signal(signum)`; returns a restore function.

    Only the main thread may install handlers; elsewhere (a widget's training thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda signum, frame: on_signal(signum))
        except (ValueError, OSError):
            pass

    def restore() -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    return restore
