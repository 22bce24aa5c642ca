"""Sharded training with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`): the same code on CPU (gloo) and GPU.

It is switched on by accelerate's FSDP settings: `accelerate launch --config_file train/configs/fsdp.yaml ...` (or
`--use_fsdp --fsdp_version 2`). accelerate's own FSDP plugin runs only on GPUs (processes without one stay plain
MULTI_CPU and the plugin is ignored), so the loop shards the model itself and tells accelerate only about the
processes and devices.

- Each of the model's `fsdp_units()` (decoder layers, DiT blocks, backbone stages) is one FSDP unit, all-gathered
  only while it runs; the parameters outside them are sharded with the root module. Of accelerate's settings,
  `fsdp_reshard_after_forward` and `fsdp_offload_params` are honoured; mixed precision comes from the run's
  `mixed_precision` (bf16 parameters, fp32 gradient reduction).
- Buffers are not sharded: every process keeps its own. BatchNorm normalises with the statistics of each process's
  own batch (as under DDP; PyTorch's SyncBatchNorm runs only on GPUs) and updates its running statistics from that
  batch; what is saved is rank 0's, as under DDP, which copies rank 0's buffers to the others at each forward.
- Checkpoints hold the sharded weights and optimizer state in torch.distributed.checkpoint's format (one file per
  process, written in parallel to a folder every process can reach) and the weights gathered on rank 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from zoo.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class FSDPSettings:
    reshard_after_forward: bool = True
    offload_params: bool = False


def fsdp_settings() -> FSDPSettings | None:
    """The FSDP settings `accelerate launch` passed to this process (from its config file or flags), or None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"zoo train shards with FSDP2; the accelerate config asks for fsdp_version {version}. Set "
                          f"fsdp_version: 2 (train/configs/fsdp.yaml does).")
    return FSDPSettings(
        reshard_after_forward=os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true",
        offload_params=os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true",
    )


@contextlib.contextmanager
def accelerate_without_fsdp() -> Iterator[None]:
    """Hide the FSDP request from accelerate while an Accelerator is built: the loop shards the model itself."""
    saved = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def shard_model(model: nn.Module, device: torch.device, settings: FSDPSettings, mixed_precision: str = "no"
                ) -> nn.Module:
    """Shard `model` in place over every process: each of `model.fsdp_units()`, then the root. Returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    units = model.fsdp_units() if hasattr(model, "fsdp_units") else []
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    options = {
        "mesh": mesh,
        "reshard_after_forward": settings.reshard_after_forward,
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision == "bf16" else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if settings.offload_params and device.type != "cpu" else OffloadPolicy(),
    }
    model.to(device)
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options)
    return model


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally (no reduce-scatter) for the micro-batches before a step's last one."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip sharded gradients to a total norm of `max_norm` (over every process's shards); returns the norm."""
    from torch.distributed.tensor import DTensor

    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def gather_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0, in CPU memory (an empty dict on the other ranks). Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the sharded weights and optimizer state to `folder` (torch.distributed.checkpoint); every process
    writes its own shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what `save_sharded` wrote into the sharded `model` and its `optimizer` (same number of processes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"{folder} holds no sharded state (no .metadata); the checkpoint was not written by an "
                              f"FSDP run, or is incomplete.")
    weights, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
