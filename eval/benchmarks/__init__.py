"""Micro-benchmarks of zoo's building blocks, timed by `eval.timing` like `zoo bench`.

    zoo bench --micro attention     SDPA vs the explicit reference; static vs dynamic KV cache decoding
    zoo bench --micro ssm           chunked vs sequential selective scan; chunked vs recurrent GLA

Each module also runs alone: `python -m eval.benchmarks.layers_ssm --help`. Model-level comparisons against
transformers, diffusers, timm and the papers' packages are `zoo bench MODEL --compare REFERENCE`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from eval.timing import Samples

MICRO: dict[str, str] = {"attention": "eval.benchmarks.layers_attention", "ssm": "eval.benchmarks.layers_ssm"}


def header(device: str = "cpu") -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, load average {load}\n"
            "medians of alternating runs after warm-up (run counts in brackets); ratio = slower / faster")


def report_pair(case: str, samples: dict[str, Samples], extra: str = "", out: Callable[[str], None] = print) -> None:
    """One line: the two contenders' wall and CPU medians and the ratio of the slower to the faster."""
    (fast, a), (slow, b) = samples.items()
    timings = (f"{fast} {a.p50 * 1e3:9.2f} ms (x{len(a.wall)})  {slow} {b.p50 * 1e3:9.2f} ms (x{len(b.wall)})")
    out(f"{case:38s} {timings}  ratio {b.p50 / a.p50:6.2f}x wall {b.cpu_p50 / a.cpu_p50:6.2f}x CPU{extra}")


def run_micro(name: str, argv: list[str] | None = None) -> None:
    import importlib

    from zoo.errors import ConfigError

    if name not in MICRO:
        raise ConfigError(f"Unknown micro-benchmark '{name}'; there are: {', '.join(MICRO)}.")
    importlib.import_module(MICRO[name]).main(argv or [])
