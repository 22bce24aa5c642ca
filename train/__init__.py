"""The common training loop (accelerate) and its tasks; `zoo train` drives it.

    from train import TrainConfig, fit
    result = fit(TrainConfig("lowformer-tiny", task="classification", max_steps=200, output_dir="runs/lowformer"))
    result.metrics, result.model_dir, result.curve

Tasks: classification, restoration, vlm-sft, diffusion (see `train.tasks`). Extra loss terms: `train.tasks.LossTerm`.
The names below are imported on first use, so that `zoo --help` does not pay for accelerate and the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config", "TrainResult": "loop", "Trainer": "loop", "fit": "loop", "TASKS": "tasks",
    "DistillationLoss": "tasks", "LossTerm": "tasks", "Task": "tasks", "get_task": "tasks",
    "register_denoiser": "tasks", "register_loss_term": "tasks", "quickstart": "quickstart",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
