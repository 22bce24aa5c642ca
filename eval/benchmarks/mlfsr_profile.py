"""Where a whole-light-field MLFSR forward spends its time and memory: scan path, chunking, page faults, peaks.

For 5x5 views of s x s LR pixels (x4, published widths, random weights, batch 1, fp32, no_grad), after a warm-up at
16^2, five forwards:

1. plain, timed: wall, CPU time (user, system), minor and major page faults, involuntary context switches, and the
   peak RSS (VmHWM, reset before) above the RSS before it;
2. with every allocation of 64 KiB or more its own mmap (so the RSS follows the live tensors, not what glibc keeps
   for reuse; from here on): the forward's peak RSS again, then with hooks on the shallow convs, the body's blocks
   and the upsampler, the peak RSS during each above the RSS before the forward (where the forward's peak is);
3. with the selective scan wrapped: the peak RSS of each scan call above its RSS at entry, in units of one
   (batch, d_inner, length) fp32 input of the scan (what the scan itself adds); and per subspace the scan's input
   shape, the path it takes (the `zoo::selective_scan` op: mamba-ssm's kernel only for CUDA tensors with mamba-ssm
   installed, else the chunked PyTorch scan) and its chunking (chunks of at most 64 steps run in parallel, so a
   state slab of batch x chunks x d_state x d_inner fp32 values is updated once per step);
4. under `torch.profiler`: the share of the time in each subspace scan and in the selective scan, and the ops with
   the most self CPU time.

The memory peaks are the kernel's high-water mark of the process's RSS, not the profiler's allocation events (those
attribute the frees inside a custom op such as the scan to its start). Run under the shared lock:
`flock /tmp/zoo-heavy.lock python -m eval.benchmarks.mlfsr_profile --size 48`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from eval.benchmarks.mlfsr_scaling import _peak_rss, _reset_peak_rss, _rss, meminfo_bytes

MIB = 1024**2


def _usage() -> tuple[float, float, int, int, int]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_minflt, u.ru_majflt, u.ru_nivcsw


def _mmap_every_allocation() -> None:
    """Make glibc serve every allocation of 64 KiB or more by its own mmap, unmapped when freed, so that the RSS
    follows the live tensors instead of keeping freed memory for reuse (the memory passes only)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)


def stage_peaks(model, lr) -> dict[str, float]:
    """Peak RSS (MiB) during the shallow convs, each body block and the upsampler, above the RSS before the forward."""
    stages = {"conv_init0": model.conv_init0, "conv_init": model.conv_init}
    stages |= {f"altblock.{i}.{type(m).__name__}": m for i, m in enumerate(model.altblock)}
    stages["upsampling"] = model.upsampling
    peaks: dict[str, float] = {}
    handles = []
    for name, module in stages.items():
        handles.append(module.register_forward_pre_hook(lambda *_: _reset_peak_rss()))
        handles.append(module.register_forward_hook(
            lambda *_, name=name: peaks.__setitem__(name, (_peak_rss() - base) / MIB)))
    try:
        base = _rss()
        _reset_peak_rss()
        model(lr)
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def main(argv: list[str] | None = None) -> None:
    import zoo
    import zoo.layers.mamba as mamba
    from zoo.layers.selective_scan import DEFAULT_CHUNK_SIZE, _mamba_ssm_scan
    from zoo.restoration import mlfsr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlfsr-x4")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="eval/results/mlfsr-profile")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = zoo.create(args.model).eval()
    lr = torch.rand(1, 1, 5 * args.size, 5 * args.size)
    load_start = os.getloadavg()
    original_scan, original_subspace = mamba.selective_scan, mlfsr.SubspaceScan.scan
    with torch.no_grad():
        model(torch.rand(1, 1, 80, 80))
        base = _rss()
        _reset_peak_rss()
        before, start = _usage(), time.perf_counter()
        model(lr)
        wall, after = time.perf_counter() - start, _usage()
        plain = {"wall_s": wall, "user_s": after[0] - before[0], "sys_s": after[1] - before[1],
                 "minor_faults": after[2] - before[2], "major_faults": after[3] - before[3],
                 "involuntary_switches": after[4] - before[4], "peak_rss_above_mib": (_peak_rss() - base) / MIB}
        _mmap_every_allocation()
        base = _rss()
        _reset_peak_rss()
        model(lr)
        plain["peak_rss_above_mib_mmap_allocations"] = (_peak_rss() - base) / MIB
        stages = stage_peaks(model, lr)

        scans: dict[str, dict] = {}
        current = [None]

        def subspace_scan(self, block, x, subspace):
            current[0] = subspace
            with record_function(f"subspace:{subspace}"):
                return original_subspace(self, block, x, subspace)

        def measured_scan(u, *rest, **kwargs):
            batch, dim, length = u.shape
            chunks = math.ceil(length / DEFAULT_CHUNK_SIZE)
            state = rest[1].shape[1]  # A (dim, state)
            kernel = _mamba_ssm_scan() is not None and u.is_cuda
            info = scans.setdefault(current[0], {
                "path": "mamba-ssm CUDA kernel" if kernel else "chunked PyTorch scan (zoo::selective_scan op)",
                "batch": batch, "d_inner": dim, "length": length, "chunks": chunks,
                "steps_per_chunk": math.ceil(length / chunks), "d_state": state,
                "state_slab_mib": batch * chunks * state * dim * 4 / MIB, "calls": 0, "peak_above_entry_inputs": 0.0})
            entry = _rss()
            _reset_peak_rss()
            out = original_scan(u, *rest, **kwargs)
            added = (_peak_rss() - entry) / (4 * u.numel())
            info["peak_above_entry_inputs"] = max(info["peak_above_entry_inputs"], added)
            info["calls"] += 1
            return out

        def timed_scan(*args, **kwargs):
            with record_function("selective_scan"):
                return original_scan(*args, **kwargs)

        mlfsr.SubspaceScan.scan = subspace_scan
        try:
            mamba.selective_scan = measured_scan
            model(lr)
            mamba.selective_scan = timed_scan
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(lr)
        finally:
            mamba.selective_scan, mlfsr.SubspaceScan.scan = original_scan, original_subspace

    events = list(prof.events())
    total_us = sum(e.self_cpu_time_total for e in events)
    spans = defaultdict(float)
    for e in events:
        if e.name.startswith("subspace:") or e.name == "selective_scan":
            spans[e.name] += e.time_range.elapsed_us()
    top = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:12]
    profiled_wall_us = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    record = {
        "benchmark": "mlfsr-profile", "model": args.model, "size": args.size, "threads": args.threads,
        "torch": torch.__version__, "input": f"5x5 views of {args.size}^2 LR pixels, batch 1, fp32, no_grad",
        "load_start": load_start, "load_end": os.getloadavg(), "swap_total_bytes": meminfo_bytes("SwapTotal"),
        "plain_forward": plain, "stage_peak_rss_above_forward_start_mib": stages,
        "scans_by_subspace": scans, "profiled_wall_s": profiled_wall_us / 1e6,
        "share_of_profiled_wall": {name: us / profiled_wall_us for name, us in sorted(spans.items())},
        "top_self_cpu": [{"op": a.key, "self_cpu_s": a.self_cpu_time_total / 1e6, "calls": a.count,
                          "share": a.self_cpu_time_total / total_us} for a in top],
    }
    print(json.dumps({k: v for k, v in record.items() if k != "top_self_cpu"}, indent=1))
    for a in record["top_self_cpu"]:
        print(f"{a['op']:32s} {a['self_cpu_s']:8.2f} s {a['share']:6.1%} {a['calls']:6d} calls")
    path = Path(f"{args.output}-{args.size}-cpu.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
