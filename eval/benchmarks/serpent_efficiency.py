"""Serpent's efficiency claim measured: parameters, FLOPs and peak memory per image at 256^2, 512^2 and 1024^2 for
the reconstructed Serpent (zoo's `serpent-recon-*`, a reconstruction: the published variants' sizes are unknown)
against SwinIR and Restormer built from spandrel at their published configs, in one run.

    python -m eval.benchmarks.serpent_efficiency [--sizes 256 512 1024] [--measure-cpu 256] [--out eval/results]

Two settings, named by the output size S:
    deblur  all three take the S x S degraded image (SwinIR: its colour-denoising config, upscale 1, as used for
            same-size restoration; Restormer: its published deblurring config)
    sr8     8x super-resolution: Serpent and SwinIR (its classical x8 config) take the S/8 x S/8 image; Restormer, a
            same-size network, takes the bicubically resized S x S image

FLOPs: torch's FlopCounterMode on the meta device (2 x multiply-accumulates of matmuls and convolutions), plus the
selective scans through zoo's registered scan formula (zoo.layers.flops); element-wise ops (norms, softmax,
activations) are not counted, for any model. Peak memory, two measures:
    tensor_peak_mib  the largest total size of live tensors during one forward (weights and input included),
                     traced op by op on the meta device (`LiveTensorPeak`): what an allocator without caching or
                     fragmentation would need; each op's internal workspace is not seen (the selective scan then
                     counts as a fused kernel, as mamba-ssm's on a GPU, and attention matmuls as unfused)
    cpu_rss_mib      measured: the process's peak resident memory above the level before one real forward on this
                     CPU (eval.timing.peak_memory), at the sizes given by --measure-cpu (slow for SwinIR)
The scaling exponent is the least-squares slope of log(value) against log(pixels) over the sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import zoo
from zoo.layers.flops import count_flops

SIZES = (256, 512, 1024)
MODELS = ("serpent", "swinir", "restormer")
MIB = 1024 * 1024

# SwinIR (arXiv 2108.10257) as in its official test script: the colour denoising model (same-size restoration)
# and the classical x8 SR model (training patch 48, window 8).
SWINIR_SAME_SIZE = dict(upscale=1, img_size=128, window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180,
                        num_heads=[6] * 6, mlp_ratio=2, upsampler="", resi_connection="1conv")
SWINIR_X8 = dict(upscale=8, img_size=48, window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180,
                 num_heads=[6] * 6, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
# Restormer (arXiv 2111.09881), its published deblurring configuration.
RESTORMER = dict(dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, heads=[1, 2, 4, 8],
                 ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias")
SERPENT = {"deblur": "serpent-recon-deblur-256", "sr8": "serpent-recon-sr8-512"}


class LiveTensorPeak(TorchDispatchMode):
    """The peak total size of the live tensors that ops create, traced op by op (works on the meta device).

    A storage counts from the op that creates it until the last tensor viewing it is freed; storages that
    existed before the mode (weights, inputs) are not counted: pass them as `existing`.
    """

    def __init__(self, existing: list[torch.Tensor] = ()):
        super().__init__()
        self.external = {t.untyped_storage()._cdata for t in existing}
        self.refs: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.external:
            return
        if key not in self.refs:
            self.refs[key] = 0
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self.refs[key] += 1
        weakref.finalize(tensor, self._release, key, storage.nbytes())

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.current -= nbytes


def build(model: str, setting: str, device: str = "cpu") -> torch.nn.Module:
    """A model with random weights, built on the CPU (SwinIR's constructor reads tensor values) and moved."""
    if model == "serpent":
        module = zoo.create(SERPENT[setting])
    elif model == "swinir":
        from spandrel.architectures.SwinIR import SwinIR

        module = SwinIR(**(SWINIR_X8 if setting == "sr8" else SWINIR_SAME_SIZE))
    else:
        from spandrel_extra_arches.architectures.Restormer import Restormer

        module = Restormer(**RESTORMER)
    return module.eval().to(device)


def model_input(model: str, setting: str, size: int, device: str = "cpu") -> torch.Tensor:
    low_res = setting == "sr8" and model != "restormer"
    side = size // 8 if low_res else size
    return torch.rand(1, 3, side, side, device=device)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tensor_peak(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Peak live tensor bytes of one forward, weights and input included, in MiB."""
    existing = [*module.parameters(), *module.buffers(), x]
    weights = sum(t.untyped_storage().nbytes() for t in {t.untyped_storage()._cdata: t for t in existing}.values())
    with torch.no_grad(), LiveTensorPeak(existing) as tracer:
        module(x)
    return (weights + tracer.peak) / MIB


def scaling_exponent(sizes, values) -> float:
    """Least-squares slope of log(value) against log(pixels)."""
    xs = [math.log(s * s) for s in sizes]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measure_cpu(model: str, setting: str, size: int) -> float:
    from eval.timing import peak_memory

    module = build(model, setting)
    x = model_input(model, setting, size)
    with torch.no_grad():
        module(model_input(model, setting, 64 if setting == "deblur" else 64))  # warm-up at a small size
        return peak_memory(lambda: module(x))["delta_mib"]


def run(sizes=SIZES, settings=("deblur", "sr8"), measure_cpu_sizes=()) -> dict:
    results = {"sizes": list(sizes), "settings": {}, "configs": {"swinir_same_size": SWINIR_SAME_SIZE,
               "swinir_x8": SWINIR_X8, "restormer": RESTORMER, "serpent": SERPENT}}
    for setting in settings:
        rows = {}
        for model in MODELS:
            meta_model = build(model, setting, "meta")
            row = {"params": count_params(meta_model), "gflops": [], "tensor_peak_mib": [], "cpu_rss_mib": {}}
            for size in sizes:
                x = model_input(model, setting, size, "meta")
                with torch.no_grad():
                    row["gflops"].append(count_flops(meta_model, x) / 1e9)
                row["tensor_peak_mib"].append(tensor_peak(meta_model, x))
            for size in measure_cpu_sizes:
                row["cpu_rss_mib"][size] = measure_cpu(model, setting, size)
            row["flops_exponent"] = scaling_exponent(sizes, row["gflops"])
            row["memory_exponent"] = scaling_exponent(sizes, row["tensor_peak_mib"])
            rows[model] = row
            print(f"{setting:6s} {model:9s} params {row['params'] / 1e6:7.2f}M  GFLOPs "
                  + " ".join(f"{v:10.1f}" for v in row["gflops"])
                  + "  tensor peak MiB " + " ".join(f"{v:8.1f}" for v in row["tensor_peak_mib"])
                  + f"  exponents {row['flops_exponent']:.3f} / {row['memory_exponent']:.3f}"
                  + (f"  CPU RSS MiB {row['cpu_rss_mib']}" if row["cpu_rss_mib"] else ""), flush=True)
        for other in ("swinir", "restormer"):
            rows[f"ratio_{other}"] = {
                "flops": [a / b for a, b in zip(rows[other]["gflops"], rows["serpent"]["gflops"])],
                "tensor_peak": [a / b for a, b in zip(rows[other]["tensor_peak_mib"],
                                                      rows["serpent"]["tensor_peak_mib"])],
                "cpu_rss": {s: rows[other]["cpu_rss_mib"][s] / rows["serpent"]["cpu_rss_mib"][s]
                            for s in measure_cpu_sizes},
            }
            ratio = rows[f"ratio_{other}"]
            print(f"{setting:6s} {other}/serpent  FLOPs x " + " ".join(f"{v:6.1f}" for v in ratio["flops"])
                  + "  tensor peak x " + " ".join(f"{v:6.2f}" for v in ratio["tensor_peak"])
                  + (f"  CPU RSS x {ratio['cpu_rss']}" if measure_cpu_sizes else ""))
        results["settings"][setting] = rows
    return results


def table(results: dict) -> str:
    """The README table: one row per setting, model and size."""
    lines = ["| Setting | Model | Params | Size | GFLOPs | x Serpent | Peak tensors (MiB) | x Serpent |",
             "|---|---|---|---|---|---|---|---|"]
    for setting, rows in results["settings"].items():
        for model in MODELS:
            row = rows[model]
            for i, size in enumerate(results["sizes"]):
                ratio = rows.get(f"ratio_{model}")
                lines.append(
                    f"| {setting} | {model} | {row['params'] / 1e6:.2f}M | {size}^2 | {row['gflops'][i]:,.1f} | "
                    f"{ratio['flops'][i]:.1f} | {row['tensor_peak_mib'][i]:,.0f} | {ratio['tensor_peak'][i]:.2f} |"
                    if ratio else
                    f"| {setting} | {model} | {row['params'] / 1e6:.2f}M | {size}^2 | {row['gflops'][i]:,.1f} | 1 | "
                    f"{row['tensor_peak_mib'][i]:,.0f} | 1 |"
                )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(results["settings"])
    fig, axes = plt.subplots(len(settings), 2, figsize=(10, 4 * len(settings)), squeeze=False)
    for r, setting in enumerate(settings):
        for c, (key, label) in enumerate((("gflops", "GFLOPs per image"), ("tensor_peak_mib", "peak tensor MiB"))):
            ax = axes[r][c]
            for model in MODELS:
                ax.loglog(results["sizes"], results["settings"][setting][model][key], "o-", label=model, base=2)
            ax.set_xlabel("output side (pixels)")
            ax.set_ylabel(label)
            ax.set_title(f"{setting}: {label}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle("Serpent (zoo reconstruction) vs SwinIR and Restormer (spandrel, published configs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--settings", nargs="+", default=["deblur", "sr8"], choices=["deblur", "sr8"])
    parser.add_argument("--measure-cpu", type=int, nargs="*", default=[], help="sizes to also measure on this CPU")
    parser.add_argument("--out", type=Path, default=None, help="folder for serpent-efficiency.{json,md,png}")
    args = parser.parse_args(argv)
    results = run(args.sizes, args.settings, args.measure_cpu)
    print(table(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serpent-efficiency.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "serpent-efficiency.md").write_text(table(results) + "\n")
        plot(results, args.out / "serpent-efficiency.png")


if __name__ == "__main__":
    main()
