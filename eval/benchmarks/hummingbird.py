"""CPU timings of the Hummingbird U-Net at its published sizes (random weights, reduced resolution).

1. One denoising step of zoo's HummingbirdUNet against diffusers' UNet3DConditionModel at the 0.7B and 0.9B configs,
   the two sharing the same weight tensors (diffusers gets the fps embedding by a forward hook, as in the parity
   test), alternating in one process after warm-up.
2. The paper's speed-up: 4 steps of Hummingbird 0.7B against 50 steps of the VideoCrafter2-sized U-Net (1.4B: two
   ResBlocks per level and the middle block), as steps x median step time, both zoo U-Nets timed alternately.

Published sizes take 3-9 GB of memory: run under the shared lock,
    flock /tmp/zoo-heavy.lock python -m eval.benchmarks.hummingbird [--frames 8 --latent 16 16 --out DIR]
Timings on a shared CPU are noisy: only the ratios of alternating runs are meaningful.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
from torch import nn

from eval.benchmarks import header, report_pair
from eval.system import load_average
from eval.timing import alternate, ratios
from zoo.diffusion.hummingbird import HummingbirdConfig, HummingbirdUNet, _diffusers_to_zoo, guidance_embedding
from zoo.layers.embed import timestep_embedding
from zoo.registry import count_parameters

CONFIGS = {
    "hummingbird-t2v-0.7b": HummingbirdConfig(),
    "hummingbird-t2v-0.9b": HummingbirdConfig(has_middle_block=True),
    "videocrafter2-1.4b": HummingbirdConfig(num_res_blocks=2, has_middle_block=True),
}


def _inputs(config: HummingbirdConfig, frames: int, latent: tuple[int, int]) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(1, config.in_channels, frames, *latent, generator=generator),
        "timesteps": torch.tensor([759]),
        "context": torch.randn(1, 77, config.context_dim, generator=generator),
        "fps": torch.tensor([8]),
        "timestep_cond": guidance_embedding(7.5, config.time_cond_proj_dim, 1),
    }


def _shared_pair(config: HummingbirdConfig) -> tuple[nn.Module, nn.Module]:
    """diffusers' UNet3DConditionModel (random weights, fps embedding added by a hook) and zoo's U-Net holding the
    very same tensors."""
    from diffusers import UNet3DConditionModel

    levels = range(len(config.channel_mult))
    attention = [2**level in config.attention_resolutions for level in levels]
    reference = UNet3DConditionModel(
        block_out_channels=tuple(m * config.model_channels for m in config.channel_mult),
        down_block_types=tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attention)),
        layers_per_block=config.num_res_blocks, norm_num_groups=config.norm_groups,
        cross_attention_dim=config.context_dim, attention_head_dim=config.num_head_channels,
        time_cond_proj_dim=config.time_cond_proj_dim,
    ).eval()  # fmt: skip
    if not config.has_middle_block:
        reference.mid_block = None
    with torch.device("meta"):
        model = HummingbirdUNet(config)
    state = _diffusers_to_zoo(reference.state_dict(), config)
    mc, emb = config.model_channels, config.time_embed_dim
    fps_mlp = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
    state.update({f"fps_embedding.{k}": v for k, v in fps_mlp.state_dict().items()})
    model.load_state_dict(state, strict=True, assign=True)
    reference.fps_features = None

    def add_fps(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out + fps_mlp(reference.fps_features)

    reference.time_embedding.register_forward_hook(add_fps)
    return reference, model.eval()


@torch.inference_mode()
def bench_step(name: str, frames: int, latent: tuple[int, int], repeats: int) -> dict:
    config = CONFIGS[name]
    reference, model = _shared_pair(config)
    inputs = _inputs(config, frames, latent)
    reference.fps_features = timestep_embedding(inputs["fps"], config.model_channels, flip_sin_to_cos=True,
                                                downscale_freq_shift=0)
    args = (inputs["x"], inputs["timesteps"], inputs["context"])
    ours = model(**inputs)
    theirs = reference(*args, timestep_cond=inputs["timestep_cond"]).sample
    samples = alternate({
        "zoo": lambda: model(**inputs),
        "diffusers": lambda: reference(*args, timestep_cond=inputs["timestep_cond"]),
    }, repeats, warmup=1)  # fmt: skip
    report_pair(f"{name} step {frames}x{latent[0]}x{latent[1]}", samples)
    return {
        "params": count_parameters(model),
        "max_abs_diff_vs_diffusers": float((ours - theirs).abs().max()),
        "zoo_ms": samples["zoo"].p50 * 1e3,
        "diffusers_ms": samples["diffusers"].p50 * 1e3,
        "diffusers_over_zoo": samples["diffusers"].p50 / samples["zoo"].p50,
        "speedup": ratios(samples["diffusers"], samples["zoo"]),
        "zoo": samples["zoo"].summary(),
        "diffusers": samples["diffusers"].summary(),
        "runs": len(samples["zoo"].wall),
    }


@torch.inference_mode()
def bench_speedup(frames: int, latent: tuple[int, int], repeats: int) -> dict:
    """4 x step(Hummingbird 0.7B) against 50 x step(VideoCrafter2 1.4B), zoo's U-Net for both."""
    models = {name: HummingbirdUNet(CONFIGS[name]).eval() for name in ("hummingbird-t2v-0.7b", "videocrafter2-1.4b")}
    inputs = _inputs(CONFIGS["hummingbird-t2v-0.7b"], frames, latent)
    samples = alternate({name: (lambda m=model: m(**inputs)) for name, model in models.items()}, repeats, warmup=1)
    report_pair(f"step 0.7B vs 1.4B {frames}x{latent[0]}x{latent[1]}", samples)
    hb, vc2 = samples["hummingbird-t2v-0.7b"].p50, samples["videocrafter2-1.4b"].p50
    result = {
        "params": {name: count_parameters(model) for name, model in models.items()},
        "step_ms": {"hummingbird-t2v-0.7b": hb * 1e3, "videocrafter2-1.4b": vc2 * 1e3},
        "step_ratio": vc2 / hb,
        "hummingbird_4_steps_s": 4 * hb,
        "videocrafter2_50_steps_s": 50 * vc2,
        "speedup_4_vs_50_steps": 50 * vc2 / (4 * hb),
        "runs": len(samples["hummingbird-t2v-0.7b"].wall),
    }
    print(f"U-Net time of a video: Hummingbird 0.7B x4 steps {4 * hb:.2f} s, VideoCrafter2 1.4B x50 steps "
          f"{50 * vc2:.2f} s: {result['speedup_4_vs_50_steps']:.1f}x")
    del models
    gc.collect()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--latent", type=int, nargs=2, default=(16, 16), help="latent height and width (pixels / 8)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=("step", "speedup", "all"), default="all")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, help="folder for hummingbird-*.json results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header())
    latent = tuple(args.latent)
    results = {"header": header(), "load_average_start": load_average(), "frames": args.frames, "latent": latent,
               "repeats": args.repeats}
    if args.part in ("step", "all"):
        results["step_vs_diffusers"] = {name: bench_step(name, args.frames, latent, args.repeats)
                                        for name in ("hummingbird-t2v-0.7b", "hummingbird-t2v-0.9b")}
    if args.part in ("speedup", "all"):
        results["speedup"] = bench_speedup(args.frames, latent, args.repeats)
    results["load_average_end"] = load_average()
    print(f"load average at the end: {results['load_average_end']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"hummingbird-{args.part}-cpu-float32-f{args.frames}-{latent[0]}x{latent[1]}.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(path)


if __name__ == "__main__":
    main()
