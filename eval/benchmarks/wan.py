"""CPU forward time of zoo's Wan DiT against diffusers' `WanTransformer3DModel`.

Both run at the Wan2.1 T2V-1.3B width (dim 1536, 12 heads of 128, MLP 8960, umT5 features 4096) with fewer
blocks, on the same weights (zoo's model adopts diffusers' tensors through the converter, no copies), a small
latent and the 512 zero-padded text tokens the pipelines pass, in one process, alternating after warm-up.
Prints the medians, the ratio diffusers / zoo (above 1: zoo is faster) and the achieved FLOP rate.
Run with `python -m eval.benchmarks.wan [--layers N] [--latent F H W] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from zoo.diffusion.wan import DIFFUSERS, WanConfig, WanTransformer
from zoo.hub import load_weights

TEXT_TOKENS = 512


def _alternating_medians(
    contenders: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds per contender; each repeat runs every contender once, in turn, after `warmup`.

    CPU time (of the whole process) is the steadier figure on a shared machine: it leaves out the time the
    process waits for a core, though it counts threads that spin while waiting for each other.
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for repeat in range(warmup + repeats):
        for name, run in contenders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            if repeat >= warmup:
                samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: tuple(statistics.median(column) for column in zip(*runs)) for name, runs in samples.items()}


def _models(num_layers: int) -> tuple[torch.nn.Module, WanTransformer]:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    reference = WanTransformer3DModel(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                                      num_layers=num_layers).eval()  # fmt: skip
    config = DIFFUSERS.convert_config(dict(reference.config))
    with torch.device("meta"):
        ours = WanTransformer(config)
    load_weights(ours, DIFFUSERS.convert_state_dict(reference.state_dict(), config), DIFFUSERS)
    return reference, ours.eval()


def forward_flops(config: WanConfig, video_tokens: int, text_tokens: int) -> float:
    """Matmul FLOPs (2 x multiply-accumulates) of one forward; norms, rotary and softmax are left out."""
    d, n, s = config.dim, video_tokens, text_tokens
    text = s * (config.text_dim * d + d * d)
    per_block = (
        n * 4 * d * d + 2 * n * n * d  # self-attention: q, k, v, o and the two attention products
        + 2 * n * d * d + 2 * s * d * d + 2 * n * s * d  # cross-attention: q, o; k, v of the text; attention
        + 2 * n * d * config.ffn_dim  # MLP
    )  # fmt: skip
    head = n * d * config.out_channels * 4 + n * config.in_channels * 4 * d  # patch embedding and head
    return 2.0 * (text + config.num_layers * per_block + head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="blocks (the published 1.3B model has 30)")
    parser.add_argument("--latent", type=int, nargs=3, default=(5, 16, 24), metavar=("F", "H", "W"),
                        help="latent frames, height and width (patches of 1 x 2 x 2)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    reference, ours = _models(args.layers)
    shared = len({p.data_ptr() for p in reference.parameters()} & {p.data_ptr() for p in ours.parameters()})
    generator = torch.Generator().manual_seed(0)
    frames, height, width = args.latent
    latents = torch.randn(args.batch, 16, frames, height, width, generator=generator)
    timestep = torch.full((args.batch,), 999.0)
    text = torch.randn(args.batch, TEXT_TOKENS, 4096, generator=generator)
    text[:, 40:] = 0  # a prompt of 40 tokens, zero-padded as the pipelines do

    with torch.inference_mode():
        diff = (ours(latents, timestep, text) - reference(latents, timestep, text, return_dict=False)[0]).abs().max()
        medians = _alternating_medians(
            {
                "zoo": lambda: ours(latents, timestep, text),
                "diffusers": lambda: reference(latents, timestep, text, return_dict=False),
            },
            args.repeats, args.warmup,
        )  # fmt: skip

    video_tokens = frames * (height // 2) * (width // 2)
    flops = args.batch * forward_flops(ours.config, video_tokens, TEXT_TOKENS)
    params = sum(p.numel() for p in ours.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32")
    print(
        f"Wan dim 1536, {args.layers} blocks ({params / 1e6:.0f}M params, {shared} tensors shared), batch "
        f"{args.batch}, latent {frames}x{height}x{width} ({video_tokens} video tokens) + {TEXT_TOKENS} text "
        f"tokens; max |zoo - diffusers| = {diff:.2e}"
    )
    print(f"{args.repeats} alternating runs after {args.warmup} warm-up; {flops / 1e9:.1f} GFLOP per forward (2 x MAC)")
    for name, (wall, cpu) in medians.items():
        rate = flops / wall / 1e9
        print(f"{name:>10s}: median {wall * 1e3:8.1f} ms wall ({rate:5.1f} GFLOP/s), {cpu * 1e3:8.1f} ms CPU")
    (zoo_wall, zoo_cpu), (reference_wall, reference_cpu) = medians["zoo"], medians["diffusers"]
    print(f"ratio diffusers / zoo = {reference_wall / zoo_wall:.3f} wall, {reference_cpu / zoo_cpu:.3f} CPU "
          f"(above 1: zoo is faster)")


if __name__ == "__main__":
    main()
