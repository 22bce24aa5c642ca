"""CPU forward time of zoo's Z-Image S3-DiT against diffusers' `ZImageTransformer2DModel`.

Both run at the published 6B width (dim 3840, 30 heads of 128, caption features 2560, 2 + 2 refiner blocks) with
fewer main blocks, on the same weights (zoo's model holds diffusers' tensors, converted without copies), in one
process, alternating after warm-up. Prints the medians of wall-clock and of process CPU time, and the ratios
diffusers / zoo (above 1: zoo is faster), also as the median of the ratios of runs side by side. On a shared
machine, `--threads 1` and the CPU-time ratio are the least exposed to other jobs.
Run with `python -m eval.benchmarks.zimage [--layers N] [--size PX] [--batch N] [--threads N] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from zoo.diffusion.zimage import DIFFUSERS, ZImageTransformer
from zoo.hub import load_weights

VAE_FACTOR = 8
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _alternating_times(
    contenders: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds of each run of each contender on each clock, run in turn (a, b, a, b, ...) after warm-up."""
    times = {clock: {name: [] for name in contenders} for clock in CLOCKS}
    for repeat in range(warmup + repeats):
        for name, run in contenders.items():
            starts = {clock: read() for clock, read in CLOCKS.items()}
            run()
            if repeat >= warmup:
                for clock, read in CLOCKS.items():
                    times[clock][name].append(read() - starts[clock])
    return times


def _models(num_layers: int) -> tuple[torch.nn.Module, ZImageTransformer]:
    """diffusers' model with random weights, and zoo's holding the same tensors."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    reference = ZImageTransformer2DModel(n_layers=num_layers, axes_lens=[1536, 512, 512]).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.02)  # the pad tokens start uninitialised
    config = DIFFUSERS.convert_config(dict(reference.config))
    with torch.device("meta"):
        ours = ZImageTransformer(config)
    load_weights(ours, DIFFUSERS.convert_state_dict(reference.state_dict(), config), DIFFUSERS)
    return reference, ours.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1, help="main blocks (the published model has 30)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--caption", type=int, default=100, help="caption tokens")
    parser.add_argument("--batch", type=int, default=1, help="2: a prompt and a shorter negative prompt")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    reference, ours = _models(args.layers)
    shared = len({p.data_ptr() for p in reference.parameters()} & {p.data_ptr() for p in ours.parameters()})
    generator = torch.Generator().manual_seed(0)
    side = args.size // VAE_FACTOR
    x = [torch.randn(16, 1, side, side, generator=generator) for _ in range(args.batch)]
    caption_lens = [max(1, args.caption // (1 + 2 * i)) for i in range(args.batch)]  # different: a masked batch
    cap_feats = [torch.randn(n, 2560, generator=generator) for n in caption_lens]
    t = torch.rand(args.batch, generator=generator)

    with torch.inference_mode():
        expected = reference(x, t, cap_feats, return_dict=False)[0]
        diff = max((a - b).abs().max().item() for a, b in zip(expected, ours(x, t, cap_feats), strict=True))
        times = _alternating_times(
            {
                "zoo": lambda: ours(x, t, cap_feats),
                "diffusers": lambda: reference(x, t, cap_feats, return_dict=False),
            },
            args.repeats, args.warmup,
        )  # fmt: skip

    params = sum(p.numel() for p in ours.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32")
    print(
        f"dim 3840, {args.layers} main + 2 + 2 refiner blocks ({params / 1e9:.2f}B params, {shared} of "
        f"{len(list(ours.parameters()))} tensors shared), batch {args.batch}, {args.size}x{args.size} px "
        f"({(side // 2) ** 2} image tokens), captions {caption_lens} tokens; max |zoo - diffusers| = {diff:.2e}"
    )
    print(f"{args.repeats} alternating runs after {args.warmup} warm-up")
    for clock, samples in times.items():
        for name, runs in samples.items():
            listed = ", ".join(f"{s:.2f}" for s in runs)
            print(f"{clock:>4s} {name:>9s}: median {statistics.median(runs):.3f} s, min {min(runs):.3f} s ({listed})")
        ratio = statistics.median(samples["diffusers"]) / statistics.median(samples["zoo"])
        paired = statistics.median(d / z for d, z in zip(samples["diffusers"], samples["zoo"], strict=True))
        print(f"{clock:>4s} ratio diffusers / zoo: {ratio:.3f} of the medians, {paired:.3f} median of paired runs")


if __name__ == "__main__":
    main()
