"""Hulu-Med on a 64-slice CT-like volume: visual tokens, prefill FLOPs and CPU time with and without token reduction.

The volume (a synthetic thorax phantom: body, lungs, spine, a lesion, 15 HU noise) goes through the released path:
written as NIfTI, sliced along z, min-max normalised, and processed at merge size 1 (no planar reduction) or 2, with
the inter-slice pruning off or on (frame 0 as released, or kept whole). The model is hulu-med-7b's config with 2
decoder layers.

FLOPs (2 x MAC, `FlopCounterMode` on the meta device, so any size counts): the vision encoder per slice times 64
(attention is block-diagonal per slice), the projector, the 2 decoder layers over the whole prompt and the LM head
on the last position. Times (CPU, fp32, real random weights, one process, alternating contenders): the vision encoder
on 8 slices scaled by 8 (slices are independent), and the 2-layer decoder prefill over each variant's prompt
(embedding lookup and the one-position LM head left out of the timing: their weights would not fit the memory cap).

    flock /tmp/zoo-heavy.lock python -m eval.benchmarks.hulumed_volume --side 112 --flops-sides 112 224 448
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eval.benchmarks import header
from eval.timing import Contender, alternate
from zoo.backbones.llama import LlamaModel
from zoo.backbones.navit import NaViTSiglip, navit_position_ids
from zoo.layers.flops import count_flops
from zoo.registry import build_config
from zoo.vlm.hulumed import HuluMed
from zoo.vlm.hulumed_processing import HuluMedProcessor, build_tokenizer

SLICES = 64
TEXT_TOKENS = 64 + 24  # a comma after each slice, and the chat scaffolding with a short question
VARIANTS = (  # name, merge size, pruning, first frame
    ("merge1", 1, False, "released"),
    ("merge2", 2, False, "released"),
    ("merge2+pruning", 2, True, "released"),
    ("merge2+pruning(frame0 whole)", 2, True, "all"),
)


def ct_phantom(side: int, slices: int = SLICES, seed: int = 0, texture: float = 60.0) -> np.ndarray:
    """A (side, side, slices) volume in HU: an elliptic body whose outline and organs change smoothly along z, with
    15 HU noise and, inside the body, a parenchyma-like texture of `texture` HU (smoothed 3D noise correlated over
    about 2 slices; 0 for a smooth phantom)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(side, side, slices)), sigma=(side / 56, side / 56, 2.0))
    field *= texture / (field.std() + 1e-12)
    y, x = np.mgrid[-1:1:complex(side), -1:1:complex(side)]
    volume = np.empty((side, side, slices))
    for k in range(slices):
        z = k / (slices - 1)
        plane = np.full((side, side), -1000.0)
        body = (x / (0.85 - 0.05 * z)) ** 2 + (y / (0.6 + 0.05 * np.sin(3 * z))) ** 2 < 1
        plane[body] = 40.0
        lung_size = max(0.0, np.sin(np.pi * min(1.0, z * 1.4))) * 0.3
        for cx in (-0.38, 0.38):
            lung = ((x - cx) / (lung_size + 1e-6)) ** 2 + ((y + 0.05) / (1.4 * lung_size + 1e-6)) ** 2 < 1
            plane[lung & body] = -850.0
        plane[(x ** 2 + (y - 0.42) ** 2) < 0.012] = 700.0  # the spine
        plane[((x - 0.1) ** 2 + (y + 0.1) ** 2) < (0.12 * max(0.0, 1 - abs(z - 0.5) / 0.15)) ** 2] = 90.0  # a lesion
        volume[..., k] = plane + (rng.normal(0, 15, size=plane.shape) + field[..., k]) * body
    return volume


def process(processor: HuluMedProcessor, scan: Path, merge: int) -> dict:
    modal, frames = processor.load({"type": "3d", "3d": str(scan)})
    return processor.preprocess([(modal, frames)], [merge])


def visual_counts(model_meta: HuluMed, inputs: dict, pruning: bool, first_frame: str) -> int:
    model_meta.config.first_frame = first_frame
    if not pruning:
        return int(inputs["grid_sizes"].prod() // inputs["merge_sizes"][0] ** 2)
    masks = model_meta.visual_token_masks(inputs["pixel_values"], inputs["grid_sizes"], inputs["merge_sizes"],
                                          inputs["modals"])
    return int(masks[0].sum())


def prefill_flops(model_meta: HuluMed, grid: list[int], merge: int, visual_tokens: int) -> dict[str, int]:
    """FLOPs of each part of the prefill, counted on the meta device."""
    t, h, w = grid
    patch = model_meta.config.vision.num_channels * model_meta.config.vision.patch_size ** 2
    one_frame = torch.empty(h * w, patch, device="meta")
    vision = count_flops(_vision_frame, model_meta.vision_encoder, one_frame, torch.tensor([[1, h, w]]),
                         torch.tensor([merge])) * t
    width = model_meta.config.vision.hidden_size
    projector = count_flops(model_meta.mm_projector, torch.empty(t * h * w // merge ** 2, width, device="meta"))
    length = TEXT_TOKENS + visual_tokens
    embeds = torch.empty(1, length, model_meta.config.text.hidden_size, device="meta")
    decoder = count_flops(model_meta.model, inputs_embeds=embeds)
    head = count_flops(model_meta.lm_head, embeds[:, -1:])
    return {"vision": vision, "projector": projector, "decoder": decoder, "lm_head": head,
            "total": vision + projector + decoder + head}


def _vision_frame(encoder: NaViTSiglip, patches: torch.Tensor, grid: torch.Tensor, merge: torch.Tensor) -> None:
    """The encoder's layers on one frame (full attention within it), on the meta device: NaViTSiglip.forward reads
    its frame offsets as numbers, which meta tensors do not hold."""
    cos, sin = encoder.rotary(navit_position_ids(grid, merge).to(patches.device))
    x = encoder.embeddings(patches)[None]
    for layer in encoder.encoder.layers:
        x = layer(x, rotary=(cos, sin), cu_seqlens=None)
    encoder.post_layernorm(x)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=112, help="slice side for the timed runs (pixels)")
    parser.add_argument("--flops-sides", type=int, nargs="+", default=[112, 224, 448],
                        help="slice sides whose tokens and FLOPs are counted (meta device)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vision-slices", type=int, default=8, help="slices the vision encoder is timed on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-timing", action="store_true", help="tokens and FLOPs only")
    parser.add_argument("--texture", type=float, default=60.0, help="parenchyma texture in HU (0: smooth phantom)")
    parser.add_argument("--out", default="eval/results/hulumed-7b-l2--volume64-cpu-float32.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(header())

    config = build_config("hulu-med-7b").replace(text=build_config("hulu-med-7b").text.replace(num_hidden_layers=2))
    with torch.device("meta"):
        model_meta = HuluMed(config)
    processor = HuluMedProcessor(build_tokenizer())
    records: dict = {"model": "hulu-med-7b", "decoder_layers": 2, "slices": SLICES, "text_tokens": TEXT_TOKENS,
                     "flops_convention": "2 x MAC (FlopCounterMode)", "readme_claim": "~55% token reduction",
                     "phantom_texture_hu": args.texture,
                     "sides": {}}
    inputs_at: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        import nibabel

        for side in sorted({*args.flops_sides, args.side}):
            scan = Path(folder) / f"ct{side}.nii.gz"
            volume = ct_phantom(side, texture=args.texture)
            nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(scan))
            per_merge = {merge: process(processor, scan, merge) for merge in (1, 2)}
            inputs_at[side] = per_merge
            rows = {}
            for name, merge, pruning, first in VARIANTS:
                inputs = per_merge[merge]
                tokens = visual_counts(model_meta, inputs, pruning, first)
                grid = inputs["grid_sizes"][0].tolist()
                rows[name] = {"grid": grid, "visual_tokens": tokens,
                              "flops": prefill_flops(model_meta, grid, merge, tokens)}
            base = rows["merge2"]["visual_tokens"]
            for row in rows.values():
                row["tokens_vs_merge2"] = row["visual_tokens"] / base
                row["tokens_vs_merge1"] = row["visual_tokens"] / rows["merge1"]["visual_tokens"]
            records["sides"][side] = rows
            sides = {merge: int(per_merge[merge]["grid_sizes"][0, 1]) * 14 for merge in (1, 2)}
            print(f"\n64 slices of {side}x{side} (processed at {sides[1]} px with merge 1, {sides[2]} px with merge 2):")
            for name, row in rows.items():
                flops = row["flops"]
                print(f"  {name:30s} visual tokens {row['visual_tokens']:6d} ({row['tokens_vs_merge2']:6.1%} of merge 2,"
                      f" {row['tokens_vs_merge1']:6.1%} of merge 1)  prefill {flops['total'] / 1e12:8.2f} TFLOP "
                      f"(vision {flops['vision'] / 1e12:.2f}, decoder {flops['decoder'] / 1e12:.2f})")

    if not args.no_timing:
        records["timing"] = time_side(config, inputs_at[args.side], records["sides"][args.side], args)
    records["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "torch": torch.__version__, "load_average_end": os.getloadavg(),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=1) + "\n")
    print(f"\nwrote {args.out}")


@torch.inference_mode()
def time_side(config, inputs: dict, rows: dict, args: argparse.Namespace) -> dict:
    """CPU times at one slice side: the vision encoder once (on `vision_slices` slices, scaled to 64), then the
    decoder prefill of each variant, alternating."""
    timing: dict = {"side": args.side, "load_average_start": os.getloadavg()}
    encoder = NaViTSiglip(config.vision).eval()
    merged = inputs[2]
    t, h, w = merged["grid_sizes"][0].tolist()
    part = merged["pixel_values"][: args.vision_slices * h * w]
    grid = torch.tensor([[args.vision_slices, h, w]])
    samples = alternate({"vision": lambda: encoder(part, grid, torch.tensor([2]))}, repeats=2, warmup=1)
    scale = t / args.vision_slices
    timing["vision_s"] = {"wall": samples["vision"].p50 * scale, "cpu": samples["vision"].cpu_p50 * scale,
                          "measured_on_slices": args.vision_slices}
    print(f"\nvision encoder, 64 slices of {h * 14}x{w * 14} (timed on {args.vision_slices}, x{scale:g}): "
          f"{timing['vision_s']['wall']:.1f} s wall, {timing['vision_s']['cpu']:.1f} s CPU")
    encoder = None  # freed before the decoder is built

    decoder = LlamaModel(config.text).eval()
    decoder(inputs_embeds=torch.randn(1, 16, config.text.hidden_size))  # warm the kernels once
    contenders = {}
    for name, row in rows.items():
        length = TEXT_TOKENS + row["visual_tokens"]
        embeds = torch.randn(1, length, config.text.hidden_size)
        contenders[name] = Contender(run=lambda embeds=embeds: decoder(inputs_embeds=embeds),
                                     repeats=1 if name == "merge1" else args.repeats)
    samples = alternate(contenders, repeats=args.repeats, warmup=0)
    timing["decoder_prefill_s"] = {name: {"wall": s.p50, "cpu": s.cpu_p50, "runs": len(s.wall)}
                                   for name, s in samples.items()}
    base = samples["merge2"]
    for name, s in samples.items():
        print(f"decoder prefill (2 layers) {name:30s} {s.p50:8.2f} s wall (x{len(s.wall)})  {s.cpu_p50:8.2f} s CPU"
              f"  {base.p50 / s.p50:5.2f}x faster than merge 2")
    timing["load_average_end"] = os.getloadavg()
    return timing


if __name__ == "__main__":
    main()
