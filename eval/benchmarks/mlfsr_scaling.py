"""Whole-light-field inference of MLFSR against EPIT as the light field grows: time, peak memory, scaling exponents.

MLFSR's claim (arXiv 2406.16083) is that its Mamba subspace scans cost time and memory linear in the number of
pixels, so whole light fields run at once, where Transformers such as EPIT grow faster (attention over epipolar
planes of 5 x h tokens) and are run on patches. For 5x5 views of s x s LR pixels (x4, published widths, random
weights, batch 1, fp32, `torch.no_grad`), each (model, size) runs in a fresh subprocess: one warm-up forward, then
`--repeats` timed ones (median), and the peak memory above the loaded model (CUDA: max_memory_allocated; CPU: the
process's peak RSS, ru_maxrss). The two models alternate size by size, so load drift on a shared machine hits both.
A size is skipped once the memory of the last two sizes, extrapolated, passes `--max-memory-gb`.

The exponents are least-squares slopes of log(time) and log(memory) against log(pixels per view) over the sizes
that ran; "largest in 8 GB" is the view size where the fitted memory law reaches 8 GiB (extrapolated where no
measured size got there; the output says which). Run under the shared lock on a busy CPU:
`flock /tmp/zoo-heavy.lock python -m eval.benchmarks.mlfsr_scaling --sizes 16 24 32 48 64`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

MODELS = ("mlfsr-x4", "epit-x4")
GIB = 1024**3


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def worker(model_name: str, size: int, repeats: int, device: str, threads: int) -> dict:
    """One (model, size) measurement in this process."""
    import zoo

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = zoo.create(model_name).eval().to(device)
    lr = torch.rand(1, 1, 5 * size, 5 * size, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss()
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            out = model(lr)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss()) - base
    assert out.shape[-1] == 5 * size * model.config.scale
    times.sort()
    return {"model": model_name, "size": size, "pixels": size * size, "times_s": times,
            "median_s": times[len(times) // 2], "peak_bytes": max(peak, 0)}


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(exponent k, prefactor a) of y = a x^k by least squares in log-log."""
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return k, math.exp(my - k * mx)


def _predicted_peak(rows: list[dict], size: int) -> float:
    if len(rows) < 2:
        return 0.0
    k, a = fit_power_law([(r["pixels"], max(r["peak_bytes"], 1)) for r in rows[-2:]])
    return a * (size * size) ** k


def summarise(rows: list[dict], budget: float = 8 * GIB) -> dict:
    summary = {}
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        if len(mine) < 2:
            continue
        k_time, _ = fit_power_law([(r["pixels"], r["median_s"]) for r in mine])
        k_mem, a_mem = fit_power_law([(r["pixels"], max(r["peak_bytes"], 1)) for r in mine])
        side = math.sqrt((budget / a_mem) ** (1 / k_mem))
        measured = max(r["peak_bytes"] for r in mine) >= budget
        summary[name] = {"time_exponent": k_time, "memory_exponent": k_mem, "largest_side_in_8gib": side,
                         "largest_side_is": "measured" if measured else "extrapolated"}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 48])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-memory-gb", type=float, default=3.0)
    parser.add_argument("--output", default="eval/results/mlfsr-scaling")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.device, args.threads)))
        return
    rows: list[dict] = []
    skipped: list[dict] = []
    for size in args.sizes:
        for name in MODELS:
            mine = [r for r in rows if r["model"] == name]
            predicted = _predicted_peak(mine, size)
            if predicted > args.max_memory_gb * GIB or any(s["model"] == name for s in skipped):
                skipped.append({"model": name, "size": size, "predicted_peak_bytes": predicted})
                print(f"{name:9s} {size:4d}^2: skipped, predicted peak {predicted / GIB:.1f} GiB", flush=True)
                continue
            command = [sys.executable, "-m", "eval.benchmarks.mlfsr_scaling", "--worker", name, str(size),
                       "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                print(f"{name} {size}: failed\n{result.stderr[-2000:]}", flush=True)
                skipped.append({"model": name, "size": size, "error": result.stderr[-300:]})
                continue
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{name:9s} {size:4d}^2 views: median {row['median_s']:8.2f} s  "
                  f"peak {row['peak_bytes'] / GIB:6.2f} GiB", flush=True)
    summary = summarise(rows)
    for name, s in summary.items():
        print(f"{name}: time ~ pixels^{s['time_exponent']:.2f}, memory ~ pixels^{s['memory_exponent']:.2f}; "
              f"8 GiB reached at about {s['largest_side_in_8gib']:.0f}^2 LR pixels per view ({s['largest_side_is']})")
    for size in args.sizes:
        pair = {r["model"]: r for r in rows if r["size"] == size}
        if len(pair) == 2:
            m, e = pair["mlfsr-x4"], pair["epit-x4"]
            print(f"{size:4d}^2: EPIT / MLFSR time {e['median_s'] / m['median_s']:.2f}x, "
                  f"memory {e['peak_bytes'] / max(m['peak_bytes'], 1):.2f}x")
    record = {
        "benchmark": "mlfsr-scaling", "device": args.device, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "input": "5x5 views of s x s LR pixels, x4, batch 1, fp32, no_grad",
        "rows": rows, "skipped": skipped, "summary": summary,
        "note": "shared machine: compare the two models (alternated size by size), not absolute times",
    }
    path = Path(f"{args.output}-{args.device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
