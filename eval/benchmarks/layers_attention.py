"""CPU timings of zoo.layers.attention: SDPA against the explicit fp32 reference, and KV-cache decoding.

Each pair of contenders runs alternately in one process after warm-up; medians and their ratio are
printed. Run with `python -m eval.benchmarks.layers_attention`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from zoo.layers.attention import Attention, DynamicCache, StaticCache, scaled_dot_product

REPEATS = 7
WARMUP = 2


def _median_times(contenders: dict[str, Callable[[], Callable[[], object]]]) -> dict[str, float]:
    """Median seconds of each contender, run in turn (a, b, a, b, ...) after warm-up.

    A contender is a setup function (not timed) returning the function to time.
    """
    times = {name: [] for name in contenders}
    for repeat in range(WARMUP + REPEATS):
        for name, setup in contenders.items():
            run = setup()
            start = time.perf_counter()
            run()
            if repeat >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def _without_setup(run: Callable[[], object]) -> Callable[[], Callable[[], object]]:
    return lambda: run


def _report(case: str, medians: dict[str, float]) -> None:
    (fast, fast_s), (slow, slow_s) = medians.items()
    timings = f"{fast:>8s} {fast_s * 1e3:8.2f} ms  {slow:>9s} {slow_s * 1e3:8.2f} ms"
    print(f"{case:40s} {timings}  ratio {slow_s / fast_s:5.2f}x")


@torch.inference_mode()
def bench_sdpa_vs_reference() -> None:
    for heads, kv_heads, length in [(9, 9, 512), (9, 3, 512), (9, 9, 2048), (9, 3, 2048)]:
        q = torch.randn(1, heads, length, 64)
        k, v = torch.randn(2, 1, kv_heads, length, 64).unbind(0)
        contenders = {
            backend: _without_setup(partial(scaled_dot_product, q, k, v, is_causal=True, backend=backend))
            for backend in ("sdpa", "reference")
        }
        _report(f"causal B1 H{heads}/{kv_heads} L{length} D64", _median_times(contenders))


@torch.inference_mode()
def bench_cache_decoding(prompt: int = 2048, new_tokens: int = 32) -> None:
    """Greedy-decoding shape: one GQA layer of SmolLM2-135M's widths, a prompt, then one token at a time."""
    attention = Attention(576, 9, 3)
    x = torch.randn(1, prompt + new_tokens, 576)

    def prefilled(cache: DynamicCache | StaticCache) -> Callable[[], None]:
        attention(x[:, :prompt], is_causal=True, cache=cache, layer_idx=0)

        def decode() -> None:
            for t in range(prompt, prompt + new_tokens):
                attention(x[:, t : t + 1], is_causal=True, cache=cache, layer_idx=0)

        return decode

    contenders = {
        "static": lambda: prefilled(StaticCache(prompt + new_tokens)),
        "dynamic": lambda: prefilled(DynamicCache()),
    }
    _report(f"decode {new_tokens} tokens after {prompt} (1 layer)", _median_times(contenders))


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32")
    print(f"medians of {REPEATS} alternating runs after {WARMUP} warm-up; ratio = slower / faster")
    bench_sdpa_vs_reference()
    bench_cache_decoding()


if __name__ == "__main__":
    main()
