"""PSNR/SSIM of a light-field SR model on BasicLFSR's test sets, as BasicLFSR's test.py reports them.

Each scene's Y is super-resolved in `whole` or `patch` mode (`LightFieldSR.super_resolve`); PSNR and SSIM are computed
per view (`eval.metrics.light_field_psnr_ssim`), averaged over the views, then over the scenes of each dataset.
`--data` is a folder of BasicLFSR test files (`SR_5x5_4x/` holding one sub-folder per dataset, or one dataset's
folder), or `synthetic` for held-out scenes of the embedded light fields (no download). The bicubic row is the
model's own bicubic skip (PyTorch bicubic per view).

    python -m eval.benchmarks.mlfsr_eval mlfsr-x4 --checkpoint MLFSR_5x5_4x.pth --data data_for_test/SR_5x5_4x
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eval.metrics import light_field_psnr_ssim


def evaluate_scenes(model, scenes, mode: str = "whole", **patching) -> dict[str, float]:
    """Mean per-view PSNR/SSIM over `scenes` (dicts with "degraded", "clean" Y mosaics (1, U*h, V*w)), for the model
    and for its bicubic skip."""
    from zoo.restoration.mlfsr import interpolate_views

    a, s = model.config.angular_resolution, model.config.scale
    totals = {"psnr": 0.0, "ssim": 0.0, "bicubic_psnr": 0.0, "bicubic_ssim": 0.0}
    for scene in scenes:
        lr, hr = scene["degraded"][None], scene["clean"][None]
        sr = model.super_resolve(lr, mode, **patching).clamp(0, 1)
        bicubic = interpolate_views(lr, a, s).clamp(0, 1)
        for prefix, image in (("", sr), ("bicubic_", bicubic)):
            psnr, ssim = light_field_psnr_ssim(image, hr, a)
            totals[prefix + "psnr"] += float(psnr)
            totals[prefix + "ssim"] += float(ssim)
    return {key: value / len(scenes) for key, value in totals.items()} | {"scenes": len(scenes)}


def _datasets(data: str, scale: int, samples: int, size: int) -> dict[str, list]:
    if data == "synthetic":
        from zoo.data.lightfield import SyntheticLightFields

        scenes = SyntheticLightFields(samples, image_size=size, scale=scale, split="test")
        return {"synthetic": [scenes[i] for i in range(len(scenes))]}
    from zoo.data.lightfield import BasicLFSRTestSet

    root = Path(data)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) or [root]
    return {folder.name: list(BasicLFSRTestSet(folder)) for folder in folders}


def main(argv: list[str] | None = None) -> None:
    import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a registered light-field model (mlfsr-x4, epit-x2, ...) or a saved folder")
    parser.add_argument("--checkpoint", help="the release's .pth (default: random weights, or the folder's)")
    parser.add_argument("--pretrained", action="store_true", help="download the registered weights")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--mode", choices=("whole", "patch"), default="whole")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="synthetic scenes")
    parser.add_argument("--size", type=int, default=160, help="synthetic clean mosaic size (5 views)")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if Path(args.model).is_dir():
        model = zoo.from_pretrained(args.model)
    else:
        model = zoo.create(args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
    model.eval()
    results = {}
    patching = {"patch_size": args.patch_size, "stride": args.stride} if args.mode == "patch" else {}
    for name, scenes in _datasets(args.data, model.config.scale, args.samples, args.size).items():
        results[name] = evaluate_scenes(model, scenes, args.mode, **patching)
        r = results[name]
        print(f"{name:16s} {args.mode}: PSNR {r['psnr']:.3f} SSIM {r['ssim']:.4f} | "
              f"bicubic PSNR {r['bicubic_psnr']:.3f} SSIM {r['bicubic_ssim']:.4f} ({r['scenes']} scenes)")
    if args.output:
        Path(args.output).write_text(json.dumps({"model": args.model, "mode": args.mode, "results": results}, indent=1))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
