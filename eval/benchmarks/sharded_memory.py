"""Memory per process of sharded (FSDP2, as `zoo train` shards) against replicated (DDP) training, on CPU with gloo.

For each process count, `torchrun` starts the processes; each builds the model in full (as the training loop does),
wraps it (DDP, or `train.distributed.shard_model`), then trains a few AdamW steps on random inputs. Each process
reports its peak resident memory while building and, separately, while training (the peak is reset in between,
through /proc/self/clear_refs), and the bytes of weights, gradients and optimizer state it holds. Under DDP every
process holds all of them; under FSDP a 1/N shard plus the blocks being gathered, so the training peak per process
falls as processes are added. Linux only. Run with

    python -m eval.benchmarks.sharded_memory [--model wan2.1-t2v-1.3b] [--options '{"num_layers": 2}'] [--ranks 1 2 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

MODEL = "wan2.1-t2v-1.3b"
OPTIONS = {"num_layers": 2}  # 119M parameters: 475 MB in fp32, 1.9 GB with gradients and AdamW's state
MARK = "SHARDED_MEMORY "


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size


def _local_mb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Megabytes of weights and optimizer state this process holds (its shards under FSDP)."""
    from torch.distributed.tensor import DTensor

    def size(tensor: torch.Tensor) -> int:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        return local.numel() * local.element_size()

    total = sum(size(p) for p in model.parameters())
    total += sum(size(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))
    return total / 2**20


def _inputs(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    config = model.config
    latents = torch.randn(1, config.in_channels, 1, 16, 16)
    return latents, torch.tensor([500.0]), torch.randn(1, 16, config.text_dim)


def worker(mode: str, model_name: str, options: dict, steps: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import zoo
    from train.distributed import FSDPSettings, shard_model

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    baseline = _status_mb("VmRSS")
    model = zoo.create(model_name, **options).float().train()
    build_peak = _status_mb("VmHWM")
    if mode == "fsdp":
        model = shard_model(model, torch.device("cpu"), FSDPSettings())
        trained = model
    else:
        trained = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _reset_peak()
    inputs = _inputs(model if mode == "fsdp" else trained.module)
    for _ in range(steps):
        trained(*inputs).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    report = {"mode": mode, "ranks": dist.get_world_size(), "rank": dist.get_rank(), "baseline_mb": baseline,
              "build_peak_mb": build_peak, "train_peak_mb": _status_mb("VmHWM"),
              "state_mb": _local_mb(model, optimizer)}
    print(MARK + json.dumps(report), flush=True)
    dist.destroy_process_group()


def launch(mode: str, ranks: int, model_name: str, options: dict, steps: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "MALLOC_MMAP_THRESHOLD_": "65536"}  # large buffers in their own mappings: freed memory leaves the RSS
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "eval.benchmarks.sharded_memory", "--worker", mode, "--model", model_name,
               "--options", json.dumps(options), "--steps", str(steps)]
    process = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    if process.returncode != 0:
        raise RuntimeError(f"{mode} with {ranks} process(es) failed:\n{process.stderr[-3000:]}")
    lines = [line[len(MARK):] for line in process.stdout.splitlines() if line.startswith(MARK)]
    return sorted((json.loads(line) for line in lines), key=lambda r: r["rank"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--options", default=json.dumps(OPTIONS), help="config overrides as JSON")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    if args.worker:
        worker(args.worker, args.model, options, args.steps)
        return
    with torch.device("meta"):
        import zoo

        params = sum(p.numel() for p in zoo.create(args.model, **options).parameters())
    print(f"{args.model} {options}: {params / 1e6:.1f}M parameters ({params * 4 / 2**20:.0f} MB in fp32), "
          f"AdamW, {args.steps} steps, CPU (gloo). Per process, max over processes; MB = 2**20 bytes.")
    print("| mode | processes | weights+optimizer held (MB) | peak RSS training (MB) | peak RSS building (MB) | "
          "RSS before building (MB) |")
    print("|---|---|---|---|---|---|")
    for mode in ("ddp", "fsdp"):
        for ranks in args.ranks:
            reports = launch(mode, ranks, args.model, options, args.steps)
            print(f"| {mode.upper()} | {ranks} | {max(r['state_mb'] for r in reports):.0f} | "
                  f"{max(r['train_peak_mb'] for r in reports):.0f} | {max(r['build_peak_mb'] for r in reports):.0f} | "
                  f"{max(r['baseline_mb'] for r in reports):.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
