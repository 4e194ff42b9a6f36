"""A system report: the machine, torch, the device and dtype
chosen (with the reason), and for a preset its parameter count and estimated training memory."""
from __future__ import annotations

import platform

import psutil
import torch

from .config import ModelConfig
from .devices import physical_cores, pick_device, pick_dtype


def system_info(device: str = "auto", dtype: str = "auto") -> dict:
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


def system_report(preset: str | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 8) -> str:
    """Human-readable report; printed at the top of notebook 03."""
    info = system_info(device, dtype)
    lines = ["== system =="]
    lines += [f"{k:>20}: {v}" for k, v in info.items()]
    if preset:
        cfg = ModelConfig.from_preset(preset)
        mem = cfg.memory_estimate(batch_size=batch_size)
        lines += ["== model ==",
                  f"{'preset':>20}: {preset}",
                  f"{'parameters':>20}: {cfg.num_params():,}",
                  f"{'weights':>20}: {mem['weights_mb']:.1f} MB",
                  f"{'training memory':>20}: ~{mem['total_mb']:.0f} MB at batch {batch_size} x {cfg.max_seq_len}"]
    return "\n".join(lines)
