"""The one timing harness of zoo's benchmarks: contenders run in turn, after warm-up, on two clocks.

Every benchmark (`zoo bench`, the layer micro-benchmarks) times through `alternate`:

- each round runs every contender once, in turn; the order reverses every other round (a b, b a, a b, ...) so
  that neither always runs right after the other (caches, turbo, a neighbour's job);
- the first `warmup` rounds are not recorded;
- each run is timed on the wall clock (`time.perf_counter`, after a device synchronise on CUDA) and on the
  process CPU clock (`time.process_time`, all threads). On a shared machine CPU time is the steadier figure: it
  leaves out the time the process waits for a core (but counts threads that spin while waiting for each other);
- results are `Samples` (medians, p90, min); ratios between contenders are given both as the ratio of the medians
  and as the median of the ratios of the runs of one round (paired, robust to slow drifts in the machine's load).

Memory and energy are read by `peak_memory` and `EnergyMeter`, outside the timed runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import re
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


@dataclasses.dataclass
class Contender:
    """`run` is timed; `setup` (untimed, optional) runs before each run and returns the function to time instead
    (e.g. a fresh KV cache); `repeats` caps this contender's timed runs (a slow reference at long lengths)."""

    run: Callable[[], Any] | None = None
    setup: Callable[[], Callable[[], Any]] | None = None
    repeats: int | None = None

    def prepare(self) -> Callable[[], Any]:
        """The function to time next: what `setup` returns, or `run`."""
        return self.setup() if self.setup is not None else self.run


def _as_contenders(contenders: Mapping[str, Callable[[], Any] | Contender]) -> dict[str, Contender]:
    return {name: c if isinstance(c, Contender) else Contender(run=c) for name, c in contenders.items()}


@dataclasses.dataclass
class Samples:
    """Seconds of each timed run on the wall clock and the process CPU clock; `energy` in joules when measured."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    energy: list[float] = dataclasses.field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.wall)

    @property
    def p90(self) -> float:
        return percentile(self.wall, 90)

    @property
    def cpu_p50(self) -> float:
        return statistics.median(self.cpu)

    @property
    def min(self) -> float:
        return min(self.wall)

    def summary(self) -> dict[str, float]:
        """Seconds: wall p50/p90/min/mean, CPU p50; the run count; joules per run when measured."""
        out = {"wall_p50": self.p50, "wall_p90": self.p90, "wall_min": self.min,
               "wall_mean": statistics.fmean(self.wall), "cpu_p50": self.cpu_p50, "runs": len(self.wall)}
        if self.energy:
            out["energy_j"] = statistics.median(self.energy)
        return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def alternate(
    contenders: Mapping[str, Callable[[], Any] | Contender],
    repeats: int = 7,
    warmup: int = 2,
    device: str | torch.device = "cpu",
    energy: EnergyMeter | None = None,
) -> dict[str, Samples]:
    """Time `contenders` in alternation (see the module docstring); returns their samples, by name."""
    entries = _as_contenders(contenders)
    samples = {name: Samples() for name in entries}
    order = list(entries.items())
    for round_ in range(warmup + repeats):
        for name, contender in order if round_ % 2 == 0 else order[::-1]:
            timed = round_ - warmup
            if timed >= (contender.repeats or repeats):
                continue
            run = contender.prepare()
            synchronize(device)
            joules = energy.read() if energy is not None else None
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            synchronize(device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if timed >= 0:
                samples[name].wall.append(wall)
                samples[name].cpu.append(cpu)
                if joules is not None:
                    samples[name].energy.append(energy.read() - joules)
    return samples


def auto_repeats(contenders: Mapping[str, Callable[[], Any] | Contender], budget_s: float = 10.0,
                 low: int = 5, high: int = 50, device: str | torch.device = "cpu") -> int:
    """Rounds that fit in about `budget_s`, from one untimed round (which doubles as a warm-up), within [low, high]."""
    start = time.perf_counter()
    for contender in _as_contenders(contenders).values():
        contender.prepare()()
    synchronize(device)
    per_round = max(time.perf_counter() - start, 1e-6)
    return int(min(high, max(low, budget_s // per_round)))


def ratios(reference: Samples, ours: Samples) -> dict[str, float]:
    """How much faster `ours` is than `reference` (above 1: ours is faster): the ratio of the wall medians, of the
    CPU-time medians, and the median of the per-round wall ratios (runs paired by round)."""
    def divide(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    paired = [divide(r, o) for r, o in zip(reference.wall, ours.wall)]
    return {"wall": divide(reference.p50, ours.p50), "cpu": divide(reference.cpu_p50, ours.cpu_p50),
            "paired": statistics.median(paired) if paired else math.nan}


# ---------------------------------------------------------------------------------------------------
# memory


_STATUS = Path("/proc/self/status")


def status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM, ...), or None where there is none."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak_rss() -> bool:
    """Linux resets the process's peak resident set size (VmHWM) when 5 is written to /proc/self/clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim), so that a call's allocations show in the RSS
    again instead of reusing pages that earlier calls left resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Peak memory of one call of `fn`, in MiB, and what was measured.

    CUDA: the caching allocator's peak of allocated tensor memory (`max_memory_allocated`) and of reserved memory,
    after `reset_peak_memory_stats`; `delta` is the allocated peak above what was allocated before the call.
    CPU: the process's peak resident set size (VmHWM, reset before the call through /proc/self/clear_refs; where
    that is refused, the peak since the process started, `ru_maxrss`); `delta` is that peak above the resident set
    before the call (the call's own working memory, weights excluded), after freed heap memory was handed back to
    the OS (glibc's malloc_trim) so that the call's allocations are not hidden by pages earlier calls left resident.
    """
    mib = 1024 * 1024
    if torch.device(device).type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mib": peak / mib, "delta_mib": (peak - before) / mib,
                "reserved_mib": torch.cuda.max_memory_reserved(device) / mib,
                "measure": "CUDA allocator: max_memory_allocated (peak), max_memory_reserved"}
    _release_free_memory()
    before = status_kib("VmRSS")
    reset = reset_peak_rss()
    fn()
    if reset and (peak := status_kib("VmHWM")) is not None:
        measure = "process peak RSS (VmHWM reset before the call)"
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        measure = "process peak RSS since start (ru_maxrss)"
    delta = (peak - before) / 1024 if before is not None else math.nan
    return {"peak_mib": peak / 1024, "delta_mib": delta, "measure": measure}


# ---------------------------------------------------------------------------------------------------
# energy


class EnergyMeter:
    """Total energy of a GPU from NVML's counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver
    loaded; Volta and newer). `EnergyMeter.open(device)` returns None where NVML or the counter is missing."""

    def __init__(self, nvml: Any, handle: Any):
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, device: str | torch.device) -> EnergyMeter | None:
        device = torch.device(device)
        if device.type != "cuda":
            return None
        try:
            import pynvml  # the nvidia-ml-py package

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            try:  # NVML numbers every GPU; CUDA only the visible ones (CUDA_VISIBLE_DEVICES): match by UUID
                handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
            except Exception:  # noqa: BLE001 - an old driver, or a GPU NVML names differently
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception:  # noqa: BLE001 - not installed, no driver, or a GPU without the counter
            return None
        return cls(pynvml, handle)

    def read(self) -> float:
        """Joules consumed since the driver loaded."""
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0


__all__ = ["Contender", "EnergyMeter", "Samples", "alternate", "auto_repeats", "peak_memory", "percentile", "ratios",
           "synchronize"]
