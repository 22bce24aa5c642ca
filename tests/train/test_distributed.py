"""Two processes (gloo, CPU) under `accelerate launch --multi_gpu --num_processes 2` follow the same loss curve as one process with the same
global batch. The loss of vlm-sft averages answer tokens, whose count differs between the processes' halves of a
batch: the loop weights them by token counts, so the curves agree to float rounding, not only on average."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train import TrainConfig, fit

ARGS = dict(max_steps=6, lr=3e-3, warmup_steps=2, log_every=1, eval_samples=4, data_options={"num_samples": 48})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(folder: Path) -> list[float]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line and "eval" not in line]


def test_two_processes_match_one(tmp_path):
    one = fit(TrainConfig("smolvlm-tiny", task="vlm-sft", batch_size=8, output_dir=str(tmp_path / "one"),
                          progress=False, **ARGS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        # `--multi_gpu` selects accelerate's torchrun launcher; without a GPU the processes use the CPU and gloo
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "zoo.cli", "train", "smolvlm-tiny", "--task", "vlm-sft", "--batch-size", "4",
        "--output-dir", str(tmp_path / "two"), "--max-steps", "6", "--lr", "3e-3", "--warmup-steps", "2",
        "--log-every", "1", "--eval-samples", "4", "--data-options", '{"num_samples": 48}', "--no-progress",
    ]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400,
                             cwd=Path(__file__).parents[2])
    assert process.returncode == 0, process.stderr[-3000:]
    two = losses(tmp_path / "two")
    assert len(two) == len(one.losses) == 6
    for a, b in zip(one.losses, two):
        assert a == pytest.approx(b, rel=1e-5), (one.losses, two)  # measured: <= 1e-7
    state = json.loads((tmp_path / "two" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    assert (tmp_path / "two" / "checkpoint-6" / "rng_state_1.pt").is_file()
