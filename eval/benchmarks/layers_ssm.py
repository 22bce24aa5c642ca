"""Timings of zoo.layers' recurrent scans: the chunked selective scan against the sequential reference, and
chunked gated linear attention against the recurrent one.

Each pair runs alternately in one process after one warm-up run each (eval.timing); medians and their ratio are
printed, with the largest absolute difference of the outputs. The sequential references are slow at the longest
lengths, so they run fewer times there (the count is printed). Run with `zoo bench --micro ssm` or
`python -m eval.benchmarks.layers_ssm [--device cuda] [--threads 1] [--lengths ...]`.
"""

from __future__ import annotations

import argparse
import math
from functools import partial

import torch
import torch.nn.functional as F

from eval.benchmarks import header, report_pair
from eval.timing import Contender, alternate
from zoo.layers.linear_attention import gated_linear_attention
from zoo.layers.selective_scan import selective_scan

LENGTHS = (256, 1024, 4096, 16384)
REPEATS = 5
# Runs of the sequential reference at a length: enough for a median where it is cheap.
REFERENCE_REPEATS = {256: 5, 1024: 5, 4096: 3, 16384: 1}


def _mamba_like_scan_inputs(dim: int, state: int, length: int, device: str) -> dict[str, torch.Tensor]:
    """Statistics of a freshly initialised Mamba layer: dt = softplus(delta + bias) in about [1e-3, 0.1]."""
    dt = torch.exp(torch.empty(dim).uniform_(math.log(1e-3), math.log(1e-1)))
    return {
        "u": torch.randn(1, dim, length, device=device),
        "delta": torch.randn(1, dim, length, device=device) * 0.1,
        "A": -torch.arange(1, state + 1, dtype=torch.float32, device=device).expand(dim, state).contiguous(),
        "B": torch.randn(1, state, length, device=device),
        "C": torch.randn(1, state, length, device=device),
        "D": torch.ones(dim, device=device),
        "z": torch.randn(1, dim, length, device=device),
        "delta_bias": (dt + torch.log(-torch.expm1(-dt))).to(device),
    }


def _pair(fast: tuple[str, object], slow: tuple[str, object], length: int, device: str, first=lambda out: out):
    """Time two implementations of one op (the slow reference fewer times at long lengths) and their max diff."""
    contenders = {fast[0]: Contender(run=fast[1], repeats=REPEATS),
                  slow[0]: Contender(run=slow[1], repeats=REFERENCE_REPEATS.get(length, 1))}
    diff = (first(fast[1]()) - first(slow[1]())).abs().max().item()  # also the warm-up
    return alternate(contenders, repeats=REPEATS, warmup=0, device=device), diff


@torch.inference_mode()
def bench_selective_scan(dim: int, state: int, lengths: tuple[int, ...], device: str) -> None:
    for length in lengths:
        inputs = _mamba_like_scan_inputs(dim, state, length, device)
        samples, diff = _pair(
            ("chunked", partial(selective_scan, **inputs, delta_softplus=True, backend="chunked")),
            ("ref", partial(selective_scan, **inputs, delta_softplus=True, backend="ref")), length, device,
        )  # fmt: skip
        report_pair(f"scan B1 D{dim} N{state} L{length}", samples, f"  max|diff| {diff:.1e}")


@torch.inference_mode()
def bench_gated_linear_attention(heads: int, key_dim: int, lengths: tuple[int, ...], device: str) -> None:
    for length in lengths:
        q, k, v = torch.randn(3, 1, heads, length, key_dim, device=device).unbind(0)
        gk = F.logsigmoid(torch.randn(1, heads, length, key_dim, device=device)) / 16
        samples, diff = _pair(
            ("chunked", partial(gated_linear_attention, q, k, v, gk, backend="chunked")),
            ("recurrent", partial(gated_linear_attention, q, k, v, gk, backend="recurrent")), length, device,
            first=lambda out: out[0],
        )  # fmt: skip
        report_pair(f"gla B1 H{heads} K=V{key_dim} L{length}", samples, f"  max|diff| {diff:.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=128, help="scan channels (d_inner)")
    parser.add_argument("--state", type=int, default=16, help="scan state size N")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--key-dim", type=int, default=64, help="GLA key and value head size")
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 on an oversubscribed CPU")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header(args.device))
    bench_selective_scan(args.dim, args.state, tuple(args.lengths), args.device)
    bench_gated_linear_attention(args.heads, args.key_dim, tuple(args.lengths), args.device)


if __name__ == "__main__":
    main()
