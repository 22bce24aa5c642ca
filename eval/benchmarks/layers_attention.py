"""CPU timings of zoo.layers.attention: SDPA against the explicit fp32 reference, and KV-cache decoding.

Each pair of contenders runs alternately in one process after warm-up (eval.timing); medians and their ratio are
printed. Run with `zoo bench --micro attention` or `python -m eval.benchmarks.layers_attention [--threads N]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch

from eval.benchmarks import header, report_pair
from eval.timing import Contender, alternate
from zoo.layers.attention import (
    Attention,
    DynamicCache,
    StaticCache,
    scaled_dot_product,
)

REPEATS = 7
WARMUP = 2


@torch.inference_mode()
def bench_sdpa_vs_reference() -> None:
    for heads, kv_heads, length in [(9, 9, 512), (9, 3, 512), (9, 9, 2048), (9, 3, 2048)]:
        q = torch.randn(1, heads, length, 64)
        k, v = torch.randn(2, 1, kv_heads, length, 64).unbind(0)
        contenders = {backend: partial(scaled_dot_product, q, k, v, is_causal=True, backend=backend)
                      for backend in ("sdpa", "reference")}
        report_pair(f"causal B1 H{heads}/{kv_heads} L{length} D64", alternate(contenders, REPEATS, WARMUP))


@torch.inference_mode()
def bench_cache_decoding(prompt: int = 2048, new_tokens: int = 32) -> None:
    """Greedy-decoding shape: one GQA layer of SmolLM2-135M's widths, a prompt, then one token at a time; the
    prefill of each run is set-up, not timed."""
    attention = Attention(576, 9, 3)
    x = torch.randn(1, prompt + new_tokens, 576)

    def prefilled(cache: DynamicCache | StaticCache) -> Callable[[], None]:
        attention(x[:, :prompt], is_causal=True, cache=cache, layer_idx=0)

        def decode() -> None:
            for t in range(prompt, prompt + new_tokens):
                attention(x[:, t : t + 1], is_causal=True, cache=cache, layer_idx=0)

        return decode

    contenders = {
        "static": Contender(setup=lambda: prefilled(StaticCache(prompt + new_tokens))),
        "dynamic": Contender(setup=lambda: prefilled(DynamicCache())),
    }
    report_pair(f"decode {new_tokens} tokens after {prompt} (1 layer)", alternate(contenders, REPEATS, WARMUP))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header())
    bench_sdpa_vs_reference()
    bench_cache_decoding()


if __name__ == "__main__":
    main()
