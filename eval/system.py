"""What machine a benchmark ran on, and its measured ceilings (GEMM FLOP/s, memory bandwidth)."""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .timing import synchronize


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The CPU (model, usable cores, torch threads), the GPU when benchmarking on one, versions, date and load."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any], threads: bool = True) -> str:
    """One line: "AMD EPYC, 2 cores (2 torch threads), torch 2.14.1" (+ the GPU)."""
    text = f"{info['cpu']}, {info['cores']} cores" + (f" ({info['threads']} torch threads)" if threads else "")
    if info.get("gpu"):
        text = f"{info['gpu']} (CUDA {info.get('cuda')}) on {text}"
    return f"{text}, torch {info['torch']}"


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def ceilings(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 5) -> dict[str, float]:
    """The best of `repeats` runs of a square matmul (GFLOP/s, 2 x MAC) and of a large copy (GB/s read + written):
    what this machine's BLAS and memory do at the current thread count, to put achieved rates next to."""
    device = torch.device(device)
    size = 2048 if device.type == "cuda" else 1024
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    gemm = 2 * size**3 / _best_seconds(lambda: a @ b, device, repeats) / 1e9
    elements = (256 if device.type == "cuda" else 64) * 1024 * 1024 // 4
    source = torch.empty(elements, device=device, dtype=torch.float32).fill_(1.0)
    target = torch.empty_like(source)
    bandwidth = 2 * source.numel() * 4 / _best_seconds(lambda: target.copy_(source), device, repeats) / 1e9
    return {"gemm_gflops": round(gemm, 1), "copy_gbps": round(bandwidth, 1)}


__all__ = ["ceilings", "cpu_model", "describe_machine", "load_average", "machine_info", "usable_cores"]
