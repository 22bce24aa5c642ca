"""What `whole` and `patch` inference give for MLFSR: PSNR/SSIM of each against the HR light field, and how far apart
the two outputs are on the interior of the views.

MLFSR's Mamba body scans whole epipolar planes, views and angular patches, so every output pixel depends on the whole
light field: `whole` (the light field at once, the paper's point) and `patch` (BasicLFSR's test mode: LFdivide into
32 x 32 LR patches every 16 pixels, LFintegrate of the centres) cannot agree exactly. This measures by how much, on
held-out synthetic light fields (`lightfield-sr`, 5x5 views of 48 x 48 LR pixels, x2):

- `mlfsr-tiny` trained as the slow training test does (300 steps of L1 on 5x5 views of 8 x 8 LR pixels, batch 4,
  lr 5e-3 constant), or loaded from `--tiny-checkpoint` (a saved folder);
- the same model with its body taken out (convs, upsampler and bicubic skip only: a 5-pixel receptive field, so the
  two modes must agree on the interior; a check that the difference measured above comes from the body);
- `mlfsr-x4` and `epit-x4` at the published size with random weights (5x5 views of 32 x 32 LR pixels, x4), where only
  the difference between the modes means something (EPIT's attention along epipolar lines is global too).

The interior of a view leaves out (patch_size - stride) / 2 LR pixels (times the scale in HR pixels) at its edges,
where the modes differ for any model (symmetric extension against zero padding). Run under the shared lock:
`flock /tmp/zoo-heavy.lock python -m eval.benchmarks.mlfsr_whole_vs_patch`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from einops import rearrange

from eval.metrics import light_field_psnr_ssim
from eval.metrics import psnr as view_psnr


def interior(mosaic: torch.Tensor, angular_resolution: int, margin: int) -> torch.Tensor:
    """The views of a mosaic (..., U*H, V*W) without `margin` pixels at their edges: (..., U, H', V, W')."""
    a = angular_resolution
    views = mosaic.unflatten(-2, (a, -1)).unflatten(-1, (a, -1))
    return views[..., margin:views.shape[-3] - margin, :, margin:views.shape[-1] - margin]


def compare_modes(model, scenes: list[dict], patch_size: int = 32, stride: int = 16) -> dict:
    """PSNR/SSIM (per view, averaged over views then scenes) of `whole`, `patch` and bicubic against HR, their PSNR
    on the views' interior only, and the absolute difference between the two modes' outputs (max and mean, on the
    views' interior and everywhere)."""
    from zoo.restoration.mlfsr import interpolate_views

    a, s = model.config.angular_resolution, model.config.scale
    margin = (patch_size - stride) // 2 * s
    view = scenes[0]["degraded"].shape[-1] // a
    if view * s <= 2 * margin:
        raise ValueError(f"compare_modes: views of {view} LR pixels have no interior beyond {margin // s} pixels")
    totals: dict[str, float] = {}
    largest = {"interior_max_abs_diff": 0.0, "max_abs_diff": 0.0}
    seconds = {"whole": 0.0, "patch": 0.0}
    for scene in scenes:
        lr, hr = scene["degraded"][None], scene["clean"][None]
        outputs = {}
        for mode in ("whole", "patch"):
            start = time.perf_counter()
            outputs[mode] = model.super_resolve(lr, mode, patch_size=patch_size, stride=stride)
            seconds[mode] += time.perf_counter() - start
        outputs["bicubic"] = interpolate_views(lr, a, s)
        for name, image in outputs.items():
            psnr, ssim = light_field_psnr_ssim(image.clamp(0, 1), hr, a)
            totals[f"{name}_psnr"] = totals.get(f"{name}_psnr", 0.0) + float(psnr.mean())
            totals[f"{name}_ssim"] = totals.get(f"{name}_ssim", 0.0) + float(ssim.mean())
            crops = [rearrange(interior(x, a, margin), "b 1 u h v w -> (b u v) 1 h w").double() for x in (image, hr)]
            psnr = view_psnr(crops[0].clamp(0, 1), crops[1]).mean()  # per view, then averaged, as BasicLFSR
            totals[f"{name}_interior_psnr"] = totals.get(f"{name}_interior_psnr", 0.0) + float(psnr)
        diff = (outputs["whole"] - outputs["patch"]).abs()
        inner = interior(diff, a, margin)
        largest["interior_max_abs_diff"] = max(largest["interior_max_abs_diff"], float(inner.max()))
        largest["max_abs_diff"] = max(largest["max_abs_diff"], float(diff.max()))
        totals["interior_mean_abs_diff"] = totals.get("interior_mean_abs_diff", 0.0) + float(inner.mean())
        totals["mean_abs_diff"] = totals.get("mean_abs_diff", 0.0) + float(diff.mean())
        mse = float(inner.square().mean())
        totals["interior_whole_vs_patch_psnr"] = (totals.get("interior_whole_vs_patch_psnr", 0.0)
                                                  + (10 * math.log10(1 / mse) if mse else math.inf))
        totals["output_std"] = totals.get("output_std", 0.0) + float(outputs["whole"].std())
    result = {key: value / len(scenes) for key, value in totals.items()} | largest
    return result | {"scenes": len(scenes), "patch_size": patch_size, "stride": stride, "interior_margin_hr": margin,
                     "whole_s": seconds["whole"], "patch_s": seconds["patch"]}


def _scenes(count: int, view: int, scale: int) -> list[dict]:
    from zoo.data.lightfield import SyntheticLightFields

    data = SyntheticLightFields(count, image_size=5 * view * scale, scale=scale, split="test")
    return [data[i] for i in range(count)]


def train_tiny(steps: int, output_dir: str):
    from train import TrainConfig, fit

    data = {"num_samples": 2000, "image_size": 80, "cache": True}
    result = fit(TrainConfig("mlfsr-tiny", task="restoration", data="lightfield-sr", max_steps=steps, batch_size=4,
                             lr=5e-3, schedule="constant", output_dir=output_dir, progress=False, log_every=50,
                             eval_samples=8, data_options=data))
    return result.model


def _print(name: str, r: dict) -> None:
    print(f"{name}: whole {r['whole_psnr']:.3f} dB / {r['whole_ssim']:.4f}, patch {r['patch_psnr']:.3f} dB / "
          f"{r['patch_ssim']:.4f}, bicubic {r['bicubic_psnr']:.3f} dB / {r['bicubic_ssim']:.4f} (interior PSNR: whole "
          f"{r['whole_interior_psnr']:.3f}, patch {r['patch_interior_psnr']:.3f}, bicubic "
          f"{r['bicubic_interior_psnr']:.3f} dB); |whole - patch| on "
          f"the interior: max {r['interior_max_abs_diff']:.2e}, mean {r['interior_mean_abs_diff']:.2e} "
          f"({r['interior_whole_vs_patch_psnr']:.1f} dB apart; output std {r['output_std']:.3f}); "
          f"whole {r['whole_s']:.1f} s, patch {r['patch_s']:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-checkpoint", help="a saved mlfsr-tiny folder (default: train one)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--train-dir", default="runs/mlfsr-tiny-whole-vs-patch")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--view", type=int, default=48, help="LR pixels per view side for the trained tiny model")
    parser.add_argument("--published-view", type=int, default=32, help="LR view side for the published sizes")
    parser.add_argument("--skip-published", action="store_true", help="only the tiny model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="eval/results/mlfsr-whole-vs-patch-cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = {"benchmark": "mlfsr-whole-vs-patch", "torch": torch.__version__, "threads": args.threads,
              "load_start": os.getloadavg(), "data": "lightfield-sr, split 'test'", "results": {}}
    torch.manual_seed(0)
    if args.tiny_checkpoint:
        tiny = zoo.from_pretrained(args.tiny_checkpoint)
        record["tiny"] = f"loaded from {args.tiny_checkpoint}"
        recipe = Path(args.tiny_checkpoint).parent / "train_config.yaml"
        if recipe.is_file():
            record["tiny_train_config"] = recipe.read_text()
    else:
        start = time.perf_counter()
        tiny = train_tiny(args.train_steps, args.train_dir)
        record["tiny"] = (f"trained here: {args.train_steps} steps of L1, batch 4, 5x5 views of 8x8 LR pixels (x2), "
                          f"lr 5e-3 constant, {time.perf_counter() - start:.0f} s; saved in {args.train_dir}")
    tiny.eval()
    with torch.no_grad():
        scenes = _scenes(args.scenes, args.view, tiny.config.scale)
        runs = {"mlfsr-tiny (trained)": (tiny, scenes)}
        local = zoo.create("mlfsr-tiny").eval()
        local.load_state_dict(tiny.state_dict())
        local.altblock = torch.nn.Identity()
        runs["mlfsr-tiny (trained, body taken out)"] = (local, scenes)
        published = _scenes(1, args.published_view, 4)
        for name in () if args.skip_published else ("mlfsr-x4", "epit-x4"):
            torch.manual_seed(0)
            runs[f"{name} (random weights)"] = (zoo.create(name).eval(), published)
        for name, (model, data) in runs.items():
            result = compare_modes(model, data)
            result["view"] = data[0]["degraded"].shape[-1] // 5
            record["results"][name] = result
            _print(name, result)
    record["load_end"] = os.getloadavg()
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
