"""CPU throughput of zoo's vision backbones against their reference implementations.

LowFormer-B1 against timm's `lowformer_b1` and WaveMix-192/16 (3-level, ImageNet) against the authors' pip
package `wavemix`, with the same weights, at the published input size (224x224), batch 1 and 16. Contenders
run alternately in one process after warm-up; the medians of wall-clock time (images/s) and of process CPU
time (steadier on a shared machine) are printed with their ratios, next to this machine's single-GEMM
ceiling. Run with `python -m eval.benchmarks.backbones` (`--help` for threads, repeats, channels-last).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from collections.abc import Callable
from functools import partial

import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.registry import get_family

WARMUP = 2


def _import_pip_wavemix() -> types.ModuleType:
    """wavemix 0.2.4 imports `hamming` from numpy.lib.function_base, which numpy 2 removed; it never uses it."""
    import numpy

    if "numpy.lib.function_base" not in sys.modules:
        try:
            importlib.import_module("numpy.lib.function_base")
        except ImportError:
            shim = types.ModuleType("numpy.lib.function_base")
            shim.hamming = numpy.hamming
            sys.modules["numpy.lib.function_base"] = shim
    return importlib.import_module("wavemix.classification")


def lowformer_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("lowformer_b1").eval()
    model = zoo.create("lowformer-b1").eval()
    model.load_state_dict(reference.state_dict())
    return model, reference


def wavemix_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    classification = _import_pip_wavemix()
    torch.manual_seed(0)
    reference = classification.WaveMix(
        num_classes=1000, depth=16, mult=2, ff_channel=192, final_dim=192, dropout=0.5, level=3,
        initial_conv="pachify", patch_size=4,
    ).eval()
    model = zoo.create("wavemix-192-16-l3").eval()
    convert = get_family("wavemix").converter("original").convert_state_dict
    model.load_state_dict(convert(reference.state_dict(), model.config))
    return model, reference


CASES: dict[str, tuple[str, Callable[[], tuple[torch.nn.Module, torch.nn.Module]]]] = {
    "lowformer-b1": ("timm", lowformer_pair),
    "wavemix-192-16-l3": ("wavemix pip", wavemix_pair),
}


def gemm_ceiling(size: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s (2 x MAC) of a float32 size^3 matmul: the best this machine's BLAS does."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops()


def measure(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(median wall seconds, median CPU seconds) per contender, run alternately (a, b, b, a, ...) after warm-up."""
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    order = list(contenders.items())
    for repeat in range(WARMUP + repeats):
        for name, run in order if repeat % 2 else order[::-1]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            if repeat >= WARMUP:
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in contenders}


@torch.inference_mode()
def bench(case: str, batch_sizes: list[int], repeats: dict[int, int], channels_last: bool) -> None:
    reference_name, make_pair = CASES[case]
    model, reference = make_pair()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model, reference = model.to(memory_format=memory_format), reference.to(memory_format=memory_format)
    gflop_per_image = flops(model, torch.randn(1, 3, 224, 224)) / 1e9
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=memory_format)
        difference = (model(x) - reference(x)).abs().max().item()
        if difference > 1e-4:
            raise RuntimeError(f"{case}: zoo and {reference_name} disagree by {difference:.2e}")
        results = measure({"zoo": partial(model, x), reference_name: partial(reference, x)}, repeats[batch])
        (zoo_wall, zoo_cpu), (ref_wall, ref_cpu) = results["zoo"], results[reference_name]
        print(
            f"{case:18s} B{batch:<3d} zoo {batch / zoo_wall:7.2f} img/s  "
            f"{reference_name} {batch / ref_wall:7.2f} img/s"
            f"  ratio {ref_wall / zoo_wall:4.2f}x | CPU time ratio {ref_cpu / zoo_cpu:4.2f}x"
            f" | zoo {gflop_per_image * batch / zoo_wall:5.1f} GFLOP/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, help="timed runs per contender (default: 15 at batch 1, 5 above)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true", help="run both contenders in channels-last")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = {b: args.repeats or (15 if b == 1 else 5) for b in args.batch_sizes}
    layout = "channels-last" if args.channels_last else "NCHW"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {layout}; "
          f"GEMM ceiling {gemm_ceiling():.0f} GFLOP/s (fp32, 2 x MAC)")
    for case in args.cases:
        bench(case, args.batch_sizes, repeats, args.channels_last)


if __name__ == "__main__":
    main()
