"""Where a whole-light-field MLFSR forward spends its time and memory: scan path, chunking, page faults, peak.

For 5x5 views of s x s LR pixels (x4, published widths, random weights, batch 1, fp32, no_grad), after a warm-up at
16^2: one forward timed with its CPU time (user, system), minor and major page faults and involuntary context
switches, then one under `torch.profiler` (with memory) that records, per subspace scan of the body, the selective
scan's input shape, the path it takes (the `zoo::selective_scan` op: mamba-ssm's kernel only for CUDA tensors with
mamba-ssm installed, else the chunked PyTorch scan), its chunking (chunks of at most 64 steps run in parallel, so a
state slab of batch x chunks x d_state x d_inner fp32 values is updated once per step), and its time; the forward's
peak live tensor memory and the op running at that peak, reconstructed from the profiler's allocation events; and
the ops with the most self CPU time. Run under the shared lock:
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

MIB = 1024**2


def _usage() -> tuple[float, float, int, int, int]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_minflt, u.ru_majflt, u.ru_nivcsw


def _swap_total_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_live_memory(events) -> tuple[int, float | None]:
    """(peak bytes, time of the peak) of the live tensor memory, from the profiler's allocation events: an
    allocation is counted in the op that made it (its self CPU memory), a free as a `[memory]` event."""
    changes = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in events if e.self_cpu_memory_usage)
    live = peak = 0
    when = None
    for moment, change in changes:
        live += change
        if live > peak:
            peak, when = live, moment
    return peak, when


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
    with torch.no_grad():
        model(torch.rand(1, 1, 80, 80))
        before, start = _usage(), time.perf_counter()
        model(lr)
        wall, after = time.perf_counter() - start, _usage()
    plain = {"wall_s": wall, "user_s": after[0] - before[0], "sys_s": after[1] - before[1],
             "minor_faults": after[2] - before[2], "major_faults": after[3] - before[3],
             "involuntary_switches": after[4] - before[4]}

    scans: dict[str, dict] = {}
    current = [None]
    original_scan, original_subspace = mamba.selective_scan, mlfsr.SubspaceScan.scan

    def subspace_scan(self, block, x, subspace):
        current[0] = subspace
        with record_function(f"subspace:{subspace}"):
            return original_subspace(self, block, x, subspace)

    def selective_scan(u, *rest, **kwargs):
        batch, dim, length = u.shape
        chunks = math.ceil(length / DEFAULT_CHUNK_SIZE)
        state = rest[1].shape[1]  # A (dim, state)
        kernel = _mamba_ssm_scan() is not None and u.is_cuda
        scans.setdefault(current[0], {
            "path": "mamba-ssm CUDA kernel" if kernel else "chunked PyTorch scan (zoo::selective_scan op)",
            "batch": batch, "d_inner": dim, "length": length, "chunks": chunks,
            "steps_per_chunk": math.ceil(length / chunks), "d_state": state,
            "state_slab_mib": batch * chunks * state * dim * 4 / MIB, "calls": 0})
        scans[current[0]]["calls"] += 1
        with record_function("selective_scan"):
            return original_scan(u, *rest, **kwargs)

    mamba.selective_scan, mlfsr.SubspaceScan.scan = selective_scan, subspace_scan
    try:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(lr)
    finally:
        mamba.selective_scan, mlfsr.SubspaceScan.scan = original_scan, original_subspace

    events = list(prof.events())
    total_us = sum(e.self_cpu_time_total for e in events)
    spans = defaultdict(float)
    for e in events:
        if e.name.startswith("subspace:") or e.name == "selective_scan":
            spans[e.name] += e.time_range.elapsed_us()
    peak, when = peak_live_memory(events)
    at_peak = [e.name for e in events if e.name != "[memory]" and e.time_range.start <= when <= e.time_range.end]
    top = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:12]
    profiled_wall_us = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    record = {
        "benchmark": "mlfsr-profile", "model": args.model, "size": args.size, "threads": args.threads,
        "torch": torch.__version__, "input": f"5x5 views of {args.size}^2 LR pixels, batch 1, fp32, no_grad",
        "load_start": load_start, "load_end": os.getloadavg(), "swap_total_bytes": _swap_total_bytes(),
        "plain_forward": plain, "profiled_wall_s": profiled_wall_us / 1e6,
        "scans_by_subspace": scans,
        "share_of_profiled_wall": {name: us / profiled_wall_us for name, us in sorted(spans.items())},
        "peak_live_tensor_mib": peak / MIB, "ops_at_peak": at_peak[:8],
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
