"""Timings of zoo.layers' recurrent scans: the chunked selective scan against the sequential reference, and
chunked gated linear attention against the recurrent one.

Each pair runs alternately in one process after one warm-up run each; medians and their ratio are printed,
with the largest absolute difference of the outputs. The sequential references are slow at the longest
lengths, so they run fewer times there (the count is printed). Run with
`python -m eval.benchmarks.layers_ssm [--device cuda] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from zoo.layers.linear_attention import gated_linear_attention
from zoo.layers.selective_scan import selective_scan

LENGTHS = (256, 1024, 4096, 16384)
REPEATS = 5
# Runs of the sequential reference at a length: enough for a median where it is cheap.
REFERENCE_REPEATS = {256: 5, 1024: 5, 4096: 3, 16384: 1}


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _alternate(contenders: dict[str, tuple[Callable[[], object], int]], device: str):
    """Median seconds of each contender (run ``repeats`` times, in turn, after one warm-up) and its output."""
    times = {name: [] for name in contenders}
    outputs = {name: run() for name, (run, _) in contenders.items()}
    for repeat in range(max(repeats for _, repeats in contenders.values())):
        for name, (run, repeats) in contenders.items():
            if repeat < repeats:
                _synchronize(device)
                start = time.perf_counter()
                run()
                _synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}, outputs


def _report(case: str, medians: dict[str, float], counts: dict[str, int], max_diff: float) -> None:
    (fast, fast_s), (slow, slow_s) = medians.items()
    timings = f"{fast} {fast_s * 1e3:9.2f} ms (x{counts[fast]})  {slow} {slow_s * 1e3:9.2f} ms (x{counts[slow]})"
    print(f"{case:34s} {timings}  ratio {slow_s / fast_s:6.1f}x  max|diff| {max_diff:.1e}", flush=True)


def _mamba_like_scan_inputs(dim: int, state: int, length: int, device: str) -> dict[str, torch.Tensor]:
    """Statistics of a freshly initialised Mamba layer: dt = softplus(delta + bias) in about [1e-3, 0.1]."""
    dt = torch.exp(torch.empty(dim).uniform_(math.log(1e-3), math.log(1e-1)))
    return dict(
        u=torch.randn(1, dim, length, device=device),
        delta=torch.randn(1, dim, length, device=device) * 0.1,
        A=-torch.arange(1, state + 1, dtype=torch.float32, device=device).expand(dim, state).contiguous(),
        B=torch.randn(1, state, length, device=device),
        C=torch.randn(1, state, length, device=device),
        D=torch.ones(dim, device=device),
        z=torch.randn(1, dim, length, device=device),
        delta_bias=(dt + torch.log(-torch.expm1(-dt))).to(device),
    )


@torch.inference_mode()
def bench_selective_scan(dim: int, state: int, lengths: tuple[int, ...], device: str) -> None:
    for length in lengths:
        inputs = _mamba_like_scan_inputs(dim, state, length, device)
        contenders = {
            backend: (
                partial(selective_scan, **inputs, delta_softplus=True, backend=backend),
                REPEATS if backend == "chunked" else REFERENCE_REPEATS.get(length, 1),
            )
            for backend in ("chunked", "ref")
        }
        medians, outputs = _alternate(contenders, device)
        max_diff = (outputs["chunked"] - outputs["ref"]).abs().max().item()
        counts = {name: repeats for name, (_, repeats) in contenders.items()}
        _report(f"scan B1 D{dim} N{state} L{length}", medians, counts, max_diff)


@torch.inference_mode()
def bench_gated_linear_attention(heads: int, key_dim: int, lengths: tuple[int, ...], device: str) -> None:
    for length in lengths:
        q, k, v = torch.randn(3, 1, heads, length, key_dim, device=device).unbind(0)
        gk = F.logsigmoid(torch.randn(1, heads, length, key_dim, device=device)) / 16
        contenders = {
            backend: (
                partial(gated_linear_attention, q, k, v, gk, backend=backend),
                REPEATS if backend == "chunked" else REFERENCE_REPEATS.get(length, 1),
            )
            for backend in ("chunked", "recurrent")
        }
        medians, outputs = _alternate(contenders, device)
        max_diff = (outputs["chunked"][0] - outputs["recurrent"][0]).abs().max().item()
        counts = {name: repeats for name, (_, repeats) in contenders.items()}
        _report(f"gla B1 H{heads} K=V{key_dim} L{length}", medians, counts, max_diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=128, help="scan channels (d_inner)")
    parser.add_argument("--state", type=int, default=16, help="scan state size N")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--key-dim", type=int, default=64, help="GLA key and value head size")
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 on an oversubscribed CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}, {threads} CPU threads, load average {load}")
    print("medians of alternating runs after one warm-up each (run counts in brackets); ratio = slower / faster")
    bench_selective_scan(args.dim, args.state, tuple(args.lengths), args.device)
    bench_gated_linear_attention(args.heads, args.key_dim, tuple(args.lengths), args.device)


if __name__ == "__main__":
    main()
