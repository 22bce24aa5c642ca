"""Whole-light-field inference of MLFSR against EPIT as the light field grows: time, peak memory, scaling exponents,
and the largest light field each runs in 8 GiB, measured.

MLFSR's claim (arXiv 2406.16083) is that its Mamba subspace scans cost time and memory linear in the number of
pixels, so whole light fields run at once, where Transformers such as EPIT grow faster (attention over epipolar
planes of 5 x h tokens) and are run on patches. For 5x5 views of s x s LR pixels (x4, published widths, random
weights, batch 1, fp32, `torch.no_grad`), each (model, size) runs in a fresh subprocess: one warm-up forward at
min(s, `--warmup-size`)^2 (library set-up; large sizes are not run twice), then `--repeats` timed forwards at s^2
(median). Memory is the process's peak RSS during the timed forwards (VmHWM, reset before them) above its RSS after
the warm-up (model, input, the libraries' code and set-up): the activations and workspace of the forward; CUDA:
max_memory_allocated above the allocated bytes before the timed forwards. Each forward also records its CPU time
(user, system), minor page faults and involuntary context switches, and each worker the load average before and
after. The two models alternate size by size, so load drift hits both. `--competitors N` runs N busy loops beside
each worker: how much a shared CPU slows each model.

The exponents are least-squares slopes of log(time) and log(memory) against log(pixels per view) over the sizes
that ran (all, and the upper half, where fixed costs matter least). `--limit-search` then measures the largest view
size that runs in `--limit-gib` GiB: a worker whose memory above the loaded model passes the cap is stopped at once
by a sampler thread (polling RSS every 10 ms), so failing sizes cost only the forward up to that point. The search
brackets the limit between the largest size measured under the cap and the smallest measured over it: the first
size is the law linear in pixels through the two largest measured sizes, solved for the cap and rounded down to
`--limit-step`; then the search steps by `--limit-step` towards the limit (kept inside the bracket), until the
bracket is `--limit-step` wide or `--limit-runs` runs were spent per model. These runs warm up at 4^2 only, so
little of the warm-up stays resident.
Run under the shared lock on a busy CPU:
`flock /tmp/zoo-heavy.lock python -m eval.benchmarks.mlfsr_scaling --sizes 16 32 48 64 96 128 --limit-search`.
It writes `<output>-<device>.json` and a plot of time and memory against pixels next to it (`.png`); with
`--rows-from` an earlier result and no new sizes, it only redraws and re-fits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from eval.timing import reset_peak_rss, status_kib

MODELS = ("mlfsr-x4", "epit-x4")
GIB = 1024**3
EXCEEDED = 3  # a worker's exit status when it passed the memory cap


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (VmHWM) to its current RSS."""
    if not reset_peak_rss():
        raise RuntimeError("cannot reset VmHWM through /proc/self/clear_refs")


def _peak_rss() -> int:
    if (peak := status_kib("VmHWM")) is None:
        raise RuntimeError("no VmHWM in /proc/self/status")
    return peak * 1024


def _usage() -> tuple[float, float, int, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt, usage.ru_nivcsw


def _memory_cap(base: int, cap_bytes: int, started: float) -> None:
    """Stop the process as soon as its RSS passes `base` + `cap_bytes` (a daemon thread; torch ops release the GIL)."""

    def watch():
        while True:
            rss = _rss()
            if rss - base > cap_bytes:
                print(json.dumps({"exceeded": True, "rss_above_model_bytes": rss - base,
                                  "seconds_before_stop": time.perf_counter() - started}), flush=True)
                os._exit(EXCEEDED)
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


def worker(model_name: str, size: int, repeats: int, device: str, threads: int, warmup_size: int = 16,
           cap_gib: float | None = None) -> dict:
    """One (model, size) measurement in this process."""
    import zoo

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    model = zoo.create(model_name).eval().to(device)
    lr = torch.rand(1, 1, 5 * size, 5 * size, device=device)
    warmup = min(size, warmup_size)
    forwards = []
    with torch.no_grad():
        model(torch.rand(1, 1, 5 * warmup, 5 * warmup, device=device))
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss()
            _reset_peak_rss()
            if cap_gib is not None:
                _memory_cap(base, int(cap_gib * GIB), time.perf_counter())
        for _ in range(repeats):
            before, start = _usage(), time.perf_counter()
            out = model(lr)
            if device == "cuda":
                torch.cuda.synchronize()
            wall, after = time.perf_counter() - start, _usage()
            forwards.append({"wall_s": wall, "user_s": after[0] - before[0], "sys_s": after[1] - before[1],
                             "minor_faults": after[2] - before[2], "involuntary_switches": after[3] - before[3]})
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _peak_rss() - base
    assert out.shape[-1] == 5 * size * model.config.scale
    walls = sorted(f["wall_s"] for f in forwards)
    return {"model": model_name, "size": size, "pixels": size * size, "forwards": forwards,
            "median_s": walls[len(walls) // 2], "peak_bytes": max(peak, 0), "model_rss_bytes": base,
            "load_before": load_before, "load_after": os.getloadavg()}


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(exponent k, prefactor a) of y = a x^k by least squares in log-log."""
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return k, math.exp(my - k * mx)


def next_limit_size(measured: dict[int, float], stopped: set[int], cap: float, step: int) -> int | None:
    """The next view size to try in the search for the largest size whose memory stays under `cap`.

    `measured` maps view sizes to measured peak bytes; `stopped` holds the sizes stopped at the cap (over it). The
    two largest measured sizes give a law linear in the pixels, solved for the cap and rounded down to `step`; the
    answer is kept strictly inside the bracket (the largest size under the cap, the smallest over it), so after a
    first guess the search steps by `step` towards the limit. None when the bracket is `step` wide or less.
    """
    under = [s for s, m in measured.items() if m <= cap]
    over = [s for s, m in measured.items() if m > cap] + list(stopped)
    lo, hi = (max(under) if under else 0), (min(over) if over else None)
    if hi is not None and hi - lo <= step:
        return None
    guess = 2 * lo
    if len(measured) >= 2:
        (s1, m1), (s2, m2) = sorted(measured.items())[-2:]
        slope = (m2 - m1) / (s2 * s2 - s1 * s1)
        if slope > 0:
            guess = math.sqrt(max(s2 * s2 + (cap - m2) / slope, 1))
    guess = max(step * math.floor(guess / step), lo + step)
    return guess if hi is None else min(guess, hi - step)


def summarise(rows: list[dict], limits: dict[str, dict]) -> dict:
    summary = {}
    for name in MODELS:
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["size"])
        if len(mine) < 2:
            continue
        upper = mine[len(mine) // 2:] if len(mine) >= 4 else mine
        entry = {}
        for label, subset in (("", mine), ("upper_", upper)):
            entry[f"{label}sizes"] = [r["size"] for r in subset]
            entry[f"{label}time_exponent"] = fit_power_law([(r["pixels"], r["median_s"]) for r in subset])[0]
            entry[f"{label}cpu_time_exponent"] = fit_power_law(
                [(r["pixels"], r["forwards"][0]["user_s"] + r["forwards"][0]["sys_s"]) for r in subset])[0]
            entry[f"{label}memory_exponent"] = fit_power_law([(r["pixels"], max(r["peak_bytes"], 1))
                                                              for r in subset])[0]
        if name in limits:
            entry["limit"] = limits[name]
        summary[name] = entry
    return summary


def plot(rows: list[dict], limits: dict[str, dict], path: Path, cap_gib: float) -> None:
    """Time and peak memory against the LR pixels per view, log-log, with the fitted exponents; the memory panel
    marks the cap and the sizes of the limit search (stopped runs as crosses at the cap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, colour in zip(MODELS, ("tab:blue", "tab:orange")):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["size"])
        if len(mine) < 2:
            continue
        pixels = [r["pixels"] for r in mine]
        k_time = fit_power_law([(r["pixels"], r["median_s"]) for r in mine])[0]
        k_memory = fit_power_law([(r["pixels"], max(r["peak_bytes"], 1)) for r in mine])[0]
        time_axis.plot(pixels, [r["median_s"] for r in mine], "o-", color=colour, label=f"{name}: ~pixels^{k_time:.2f}")
        memory_axis.plot(pixels, [r["peak_bytes"] / GIB for r in mine], "o-", color=colour,
                         label=f"{name}: ~pixels^{k_memory:.2f}")
        for run in limits.get(name, {}).get("runs", []):
            if run.get("exceeded"):
                memory_axis.plot(run["size"] ** 2, cap_gib, "x", color=colour, markersize=9)
            elif not run.get("timed_out"):
                memory_axis.plot(run["size"] ** 2, run["peak_bytes"] / GIB, "s", color=colour, fillstyle="none")
    memory_axis.axhline(cap_gib, color="grey", linestyle="--", linewidth=1)
    for axis, label in ((time_axis, "forward time (s)"), (memory_axis, "peak memory above the model (GiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("LR pixels per view (5x5 views, x4)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    time_axis.set_title("whole-light-field inference, CPU")
    memory_axis.set_title(f"{cap_gib:g} GiB search: squares under, crosses stopped over")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _run_worker(args, name: str, size: int, repeats: int, cap_gib: float | None = None,
                warmup_size: int | None = None) -> dict:
    competitors = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.competitors)]
    command = [sys.executable, "-m", "eval.benchmarks.mlfsr_scaling", "--worker", name, str(size),
               "--repeats", str(repeats), "--device", args.device, "--threads", str(args.threads),
               "--warmup-size", str(args.warmup_size if warmup_size is None else warmup_size)]
    if cap_gib is not None:
        command += ["--cap-gib", str(cap_gib)]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "size": size, "timed_out": True, "process_s": time.perf_counter() - start}
    finally:
        for competitor in competitors:
            competitor.kill()
            competitor.wait()
    lines = result.stdout.strip().splitlines()
    record = json.loads(lines[-1]) if lines else {}
    if result.returncode == EXCEEDED and record.get("exceeded"):
        return {"model": name, "size": size, "exceeded": True, "cap_gib": cap_gib,
                "process_s": time.perf_counter() - start, **record}
    if result.returncode:
        raise RuntimeError(f"{name} at {size}^2 failed:\n{result.stderr[-2000:]}")
    return record | {"process_s": time.perf_counter() - start}


def _print_row(row: dict) -> None:
    if row.get("timed_out"):
        print(f"{row['model']:9s} {row['size']:4d}^2: stopped after {row['process_s']:.0f} s (--worker-timeout)")
        return
    if row.get("exceeded"):
        print(f"{row['model']:9s} {row['size']:4d}^2: over {row['cap_gib']} GiB above the model after "
              f"{row['seconds_before_stop']:.0f} s, stopped", flush=True)
        return
    f = row["forwards"][0]
    print(f"{row['model']:9s} {row['size']:4d}^2 views: median {row['median_s']:8.2f} s (cpu {f['user_s']:.1f} user "
          f"+ {f['sys_s']:.1f} sys, {f['minor_faults']} faults)  peak {row['peak_bytes'] / GIB:6.2f} GiB  "
          f"load {row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f}", flush=True)


def search_limit(args, name: str, rows: list[dict]) -> dict:
    """Bracket the largest view size whose forward stays under `--limit-gib` (see the module docstring)."""
    cap = args.limit_gib * GIB
    measured = {r["size"]: r["peak_bytes"] for r in rows if r["model"] == name}
    stopped: set[int] = set()
    runs = []
    while len(runs) < args.limit_runs:
        size = next_limit_size(measured, stopped, cap, args.limit_step)
        if size is None:
            break
        available = meminfo_bytes("MemAvailable")
        if available < cap + 2 * GIB:
            print(f"{name} {size}^2: not run, only {available / GIB:.1f} GiB available", flush=True)
            break
        row = _run_worker(args, name, size, 1, cap_gib=args.limit_gib, warmup_size=4)
        _print_row(row)
        runs.append(row)
        if row.get("timed_out"):
            break
        if row.get("exceeded"):
            stopped.add(size)
        else:
            measured[size] = row["peak_bytes"]
    under = [s for s, m in measured.items() if m <= cap]
    over = [s for s, m in measured.items() if m > cap] + list(stopped)
    return {"cap_gib": args.limit_gib, "largest_under": max(under) if under else None,
            "smallest_over": min(over) if over else None, "runs": runs}


def meminfo_bytes(field: str) -> int:
    """A field of /proc/meminfo (MemAvailable, SwapTotal, ...) in bytes; 0 where there is none."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 48, 64, 96, 128])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--competitors", type=int, default=0,
                        help="CPU-bound busy loops run beside each worker (to measure sensitivity to a shared CPU)")
    parser.add_argument("--limit-search", action="store_true")
    parser.add_argument("--limit-gib", type=float, default=8.0)
    parser.add_argument("--limit-step", type=int, default=8)
    parser.add_argument("--limit-runs", type=int, default=3)
    parser.add_argument("--worker-timeout", type=float, default=900)
    parser.add_argument("--rows-from", help="a result JSON of this benchmark whose sizes are not run again")
    parser.add_argument("--cap-gib", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--output", default="eval/results/mlfsr-scaling")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.device, args.threads,
                                args.warmup_size, args.cap_gib)))
        return
    started, load_start = time.time(), os.getloadavg()
    rows: list[dict] = json.loads(Path(args.rows_from).read_text())["rows"] if args.rows_from else []
    for size in args.sizes:
        for name in MODELS:
            if any(r["model"] == name and r["size"] == size for r in rows):
                continue
            row = _run_worker(args, name, size, args.repeats)
            _print_row(row)
            if not row.get("timed_out"):
                rows.append(row)
    limits = {name: search_limit(args, name, rows) for name in MODELS} if args.limit_search else {}
    if not limits and args.rows_from:
        earlier = json.loads(Path(args.rows_from).read_text())["summary"]
        limits = {name: entry["limit"] for name, entry in earlier.items() if "limit" in entry}
    summary = summarise(rows, limits)
    for name, s in summary.items():
        print(f"{name}: time ~ pixels^{s['time_exponent']:.2f} (sizes {s['sizes']}), "
              f"^{s['upper_time_exponent']:.2f} over {s['upper_sizes']}; memory ~ pixels^{s['memory_exponent']:.2f}, "
              f"^{s['upper_memory_exponent']:.2f}")
        if "limit" in s:
            limit = s["limit"]
            print(f"  largest view in {limit['cap_gib']} GiB: between {limit['largest_under']}^2 (under, measured) "
                  f"and {limit['smallest_over']}^2 (over, measured)")
    for size in sorted({r["size"] for r in rows}):
        pair = {r["model"]: r for r in rows if r["size"] == size}
        if len(pair) == 2:
            m, e = pair["mlfsr-x4"], pair["epit-x4"]
            print(f"{size:4d}^2: EPIT / MLFSR time {e['median_s'] / m['median_s']:.2f}x, "
                  f"memory {e['peak_bytes'] / max(m['peak_bytes'], 1):.2f}x")
    record = {
        "benchmark": "mlfsr-scaling", "device": args.device, "threads": args.threads, "repeats": args.repeats,
        "competitors": args.competitors, "rows_from": args.rows_from,
        "malloc_env": {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")},
        "warmup_size": args.warmup_size, "torch": torch.__version__,
        "input": "5x5 views of s x s LR pixels, x4, batch 1, fp32, no_grad",
        "load_start": load_start, "load_end": os.getloadavg(), "wall_minutes": (time.time() - started) / 60,
        "rows": rows, "summary": summary,
        "note": "shared machine: compare the two models (alternated size by size), not absolute times",
    }
    path = Path(f"{args.output}-{args.device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    plot(rows, limits, path.with_suffix(".png"), args.limit_gib)
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
