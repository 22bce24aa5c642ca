"""The FSDP trainings of tests/train/test_fsdp.py, run in one `accelerate launch` (one start-up for all of them):

    accelerate launch --config_file train/configs/fsdp.yaml --num_processes 2 -m tests.train.fsdp_runs ROOT

Each run in `RUNS` writes to ROOT/NAME, plus `gathered.safetensors`: the weights gathered from the shards after the
run. `resumed` copies checkpoint-3 of `vlm` into ROOT/resumed and resumes from it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch

COMMON = dict(lr=3e-3, warmup_steps=1, log_every=1, eval_samples=4, progress=False)
# name -> TrainConfig settings of each process (batch_size is per process: the global batch is twice as large)
RUNS: dict[str, dict[str, Any]] = {
    "vlm": dict(model="smolvlm-tiny", task="vlm-sft", batch_size=4, max_steps=6, save_every=3,
                data_options={"num_samples": 48}, push_to_hub="me/fsdp-vlm", **COMMON),
    "dit": dict(model="wan-tiny", task="diffusion", batch_size=2, max_steps=4, eval_every=2,
                data_options={"num_samples": 16}, **COMMON),
    "backbone": dict(model="lowformer-tiny", task="classification", batch_size=4, max_steps=4,
                     data_options={"num_samples": 32}, **COMMON),
}
RESUMED_FROM = ("vlm", 3)


def main(root: Path) -> None:
    from safetensors.torch import save_file

    from train import TrainConfig
    from train.loop import Trainer

    for name, settings in RUNS.items():
        trainer = Trainer(TrainConfig(output_dir=str(root / name), **settings))
        trainer.fit()
        weights = trainer.gather_weights()
        if trainer.is_main:
            save_file({key: value.contiguous() for key, value in weights.items()}, root / name / "gathered.safetensors")
        if name == RESUMED_FROM[0]:
            resume(root, trainer, settings)


def resume(root: Path, stopped: Any, settings: dict[str, Any]) -> None:
    """A run that stopped at step 3 (the checkpoint the uninterrupted run wrote there), resumed to the end."""
    from train import TrainConfig
    from train.loop import Trainer

    source, step = RESUMED_FROM
    if stopped.is_main:
        shutil.copytree(root / source / f"checkpoint-{step}", root / "resumed" / f"checkpoint-{step}")
    torch.distributed.barrier()
    settings = {key: value for key, value in settings.items() if key != "push_to_hub"}
    Trainer(TrainConfig(output_dir=str(root / "resumed"), resume=True, **settings)).fit()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
