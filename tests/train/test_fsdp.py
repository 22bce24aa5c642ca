"""FSDP2 on CPU (gloo): two processes launched with the provided accelerate config (train/configs/fsdp.yaml) train a
tiny VLM, a tiny DiT and a tiny backbone (tests/train/fsdp_runs.py, one launch for all of them) and are compared with
one process at the same global batch.

The curves and weights agree to float rounding, not bit for bit: the gradient of each shard is the mean of two
processes' gradients (a reduce-scatter), summed in another order than one process's backward over the whole batch.
Parameters whose gradient is zero but for rounding (a conv bias that a BatchNorm follows) are the exception: Adam
scales that noise into steps of about the learning rate, so they are only checked against that bound.
A run resumed from the sharded checkpoint of step 3 ends bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from tests.hub_server import FakeHub
from tests.train.fsdp_runs import RUNS
from tests.train.test_distributed import free_port, losses
from train import TrainConfig, fit

ROOT = Path(__file__).parents[2]
# one process with the global batch; the backbone's BatchNorm normalises with each process's own batch, so its
# reference accumulates two micro-batches of one process's size (the same samples, in the same groups)
SINGLE = {"vlm": dict(batch_size=8), "dit": dict(batch_size=4),
          "backbone": dict(batch_size=4, gradient_accumulation_steps=2)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The launched FSDP runs (ROOT/NAME), the one-process results ({name: TrainResult}) and the Hub pushed to."""
    root = tmp_path_factory.mktemp("fsdp")
    hub = FakeHub().start()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_ENDPOINT": hub.endpoint,
           "HF_TOKEN": "hf_fake_token_for_tests", "HF_HOME": str(root / "hf_home")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "train/configs/fsdp.yaml"),
        "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "tests.train.fsdp_runs", str(root),
    ]
    launched = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        single = {}
        for name, settings in RUNS.items():  # while the launched processes start
            settings = {**settings, **SINGLE[name], "push_to_hub": None}
            single[name] = fit(TrainConfig(output_dir=str(root / "single" / name), **settings))
        output, _ = launched.communicate(timeout=400)
    finally:
        launched.kill()
        hub.stop()
    assert launched.returncode == 0, output[-4000:]
    return root, single, hub


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].double() - b[key].double()).abs().max().item() for key in a)


def rounding_noise_parameters(model: torch.nn.Module) -> set[str]:
    """The backbone's parameters whose gradient is zero up to rounding (whatever the data)."""
    model = copy.deepcopy(model).train()
    model(torch.randn(4, 3, 64, 64)).logsumexp(-1).mean().backward()
    return {name for name, parameter in model.named_parameters() if parameter.grad.abs().max() < 1e-7}


@pytest.mark.parametrize("name", list(RUNS))
def test_fsdp_matches_one_process(runs, name):
    root, single, _ = runs
    reference = single[name]
    sharded = losses(root / name)
    assert len(sharded) == len(reference.losses) == RUNS[name]["max_steps"]
    assert sharded == pytest.approx(reference.losses, rel=1e-5, abs=1e-6), (sharded, reference.losses)
    gathered = load_file(root / name / "gathered.safetensors")
    expected = reference.model.state_dict()
    buffers = {key for key, _ in reference.model.named_buffers()}
    noise = rounding_noise_parameters(reference.model) if name == "backbone" else set()
    assert len(noise) <= 5
    parameters = {key: value for key, value in gathered.items() if key not in buffers | noise}
    difference = max_difference(parameters, {key: expected[key] for key in parameters})
    print(f"{name}: max |loss difference| {max(abs(a - b) for a, b in zip(sharded, reference.losses)):.2e}, "
          f"max |weight difference| {difference:.2e}")
    assert difference < 1e-5
    if noise:  # Adam moves a parameter by at most about 3.2 lr per step
        bound = 3.2 * RUNS[name]["lr"] * RUNS[name]["max_steps"]
        assert max_difference({k: gathered[k] for k in noise}, {k: expected[k] for k in noise}) < bound
    if name == "backbone":  # BatchNorm's running statistics are rank 0's: one batch of 4 per step, not two
        tracked = {key: value for key, value in gathered.items() if key.endswith("num_batches_tracked")}
        assert tracked and all(int(value) == 4 for value in tracked.values())
        assert all(int(expected[key]) == 8 for key in tracked)
    if name == "dit":  # evaluated on the gathered weights at steps 2 and 4
        evals = [json.loads(line)["eval"]["loss"] for line in (root / name / "metrics.jsonl").read_text().splitlines()
                 if "eval" in line]
        expected_evals = [record["eval"]["loss"] for record in reference.history if "eval" in record]
        assert len(evals) == 3 and evals == pytest.approx(expected_evals, rel=1e-5)


def test_resumed_fsdp_run_is_bit_identical(runs):
    root, _, _ = runs
    state = json.loads((root / "resumed" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["sharded"] and state["num_processes"] == 2
    assert losses(root / "resumed") == losses(root / "vlm")
    resumed = load_file(root / "resumed" / "model" / "model.safetensors")
    uninterrupted = load_file(root / "vlm" / "model" / "model.safetensors")
    assert max_difference(resumed, uninterrupted) == 0


def test_consolidated_model_reloads_as_the_gathered_weights(runs):
    root, _, _ = runs
    checkpoint = root / "vlm" / "checkpoint-6"
    engine = sorted(path.name for path in (checkpoint / "engine").iterdir())
    assert engine == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each process wrote its shards
    model_dir = root / "vlm" / "model"
    assert not (model_dir / "engine").exists() and not list(model_dir.glob("rng_state_*"))
    reloaded = zoo.from_pretrained(model_dir)
    assert type(reloaded).__name__ == "SmolVLM"
    gathered = load_file(root / "vlm" / "gathered.safetensors")
    assert max_difference(reloaded.state_dict(), gathered) == 0


def test_pushed_from_rank_zero_only(runs):
    root, _, hub = runs
    commits = [request for request in hub.requests if "/commit/" in request]
    assert len(commits) == 1, commits
    files = hub.repos["me/fsdp-vlm"].commits[hub.repos["me/fsdp-vlm"].branches["main"]]
    assert files["model.safetensors"] == (root / "vlm" / "model" / "model.safetensors").read_bytes()
    assert not any(name.startswith("engine/") for name in files)
