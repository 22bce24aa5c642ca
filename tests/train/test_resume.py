"""Checkpoints and resume: a run stopped after step k and resumed to step n ends bit-identical (CPU) to an
uninterrupted n-step run; a process killed while writing a checkpoint leaves `latest` naming a complete one;
checkpoint rotation; settings that would change the run refuse to resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train import TrainConfig, Trainer, fit
from train import checkpoint as ckpt
from zoo.errors import ConfigError

CASES = {
    # a BatchNorm classifier: its running statistics are state too
    "classification": dict(model="lowformer-tiny", task="classification", batch_size=8, lr=3e-3, warmup_steps=2,
                           data_options={"num_samples": 40, "image_size": 32}),
    # per-sample noise, EMA weights and gradient accumulation
    "diffusion-ema-accum": dict(model="wan-tiny", task="diffusion", batch_size=4, gradient_accumulation_steps=2,
                                lr=2e-3, ema_decay=0.9, data_options={"num_samples": 24}),
}


class Stop(Exception):
    pass


def stop_at(step):
    def callback(info):
        if info.step == step:
            raise Stop(step)
    return callback


def config(tmp_path, name, case, **changes):
    settings = dict(CASES[case], max_steps=7, save_every=3, keep_last=5, eval_samples=8, log_every=1, progress=False,
                    output_dir=str(tmp_path / name))
    return TrainConfig(**{**settings, **changes})


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for name in ("model.safetensors", ckpt.TRAINING_WEIGHTS):
        if (folder / name).is_file():
            found.update({f"{name}:{k}": v for k, v in load_file(folder / name).items()})
    state = torch.load(folder / ckpt.TRAINING_STATE, weights_only=True)
    for index, values in state["optimizer"]["state"].items():
        found.update({f"optimizer:{index}:{k}": v for k, v in values.items()})
    return found


def assert_identical(a: Path, b: Path):
    left, right = tensors(a), tensors(b)
    assert left.keys() == right.keys()
    different = [key for key in left if not torch.equal(left[key], right[key])]
    assert not different, different[:5]


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_is_bit_identical(tmp_path, case):
    straight = fit(config(tmp_path, "straight", case))
    with pytest.raises(Stop):  # killed after step 5: steps 4-5 are lost, checkpoint-3 survives
        fit(config(tmp_path, "resumed", case), callbacks=[stop_at(5)])
    assert ckpt.latest_checkpoint(tmp_path / "resumed").name == "checkpoint-3"
    resumed = fit(config(tmp_path, "resumed", case, resume=True))
    assert resumed.resumed_from.name == "checkpoint-3" and resumed.step == straight.step == 7
    assert_identical(straight.checkpoint, resumed.checkpoint)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    losses = [r["loss"] for r in straight.history if "loss" in r]
    assert [r["loss"] for r in resumed.history if "loss" in r] == losses  # the log continues where it stopped


def test_checkpoint_layout_and_rotation(tmp_path):
    result = fit(config(tmp_path, "run", "classification", max_steps=9, save_every=2, keep_last=2))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["checkpoint-8", "checkpoint-9", "latest", "metrics.jsonl", "model", "train_config.yaml",
                     "training_curve.png"]
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-9"
    files = sorted(p.name for p in result.checkpoint.iterdir())
    assert {"config.json", "model.safetensors", "README.md", ckpt.TRAINING_STATE, "rng_state_0.pt",
            ckpt.STATE_FILE, "training_curve.png", "metrics.jsonl"} <= set(files)
    model_files = sorted(p.name for p in result.model_dir.iterdir())
    assert ckpt.TRAINING_STATE not in model_files and "model.safetensors" in model_files


def test_failure_while_writing_keeps_latest_complete(tmp_path, monkeypatch):
    """An error in the middle of writing checkpoint-6 (model files written, state not yet) leaves latest on
    checkpoint-3; the next run deletes the partial folder and resumes from checkpoint-3."""
    real = ckpt.write_state_file

    def failing(folder, values):
        if values["step"] == 6:
            raise OSError("disk full")
        real(folder, values)

    monkeypatch.setattr(ckpt, "write_state_file", failing)
    with pytest.raises(OSError, match="disk full"):
        fit(config(tmp_path, "run", "classification"))
    run = tmp_path / "run"
    assert (run / "checkpoint-6.tmp" / "model.safetensors").is_file()  # partial
    assert (run / "latest").read_text().strip() == "checkpoint-3"
    assert ckpt.latest_checkpoint(run).name == "checkpoint-3"
    monkeypatch.setattr(ckpt, "write_state_file", real)
    resumed = fit(config(tmp_path, "run", "classification", resume=True))
    assert resumed.resumed_from.name == "checkpoint-3" and not (run / "checkpoint-6.tmp").exists()
    assert (run / "latest").read_text().strip() == "checkpoint-7"


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from train import TrainConfig, fit
    from train import checkpoint as ckpt

    real = ckpt.save_torch
    def killing(obj, path):
        if path.name == ckpt.TRAINING_STATE and obj["step"] == 4:
            path.write_bytes(b"half a file")  # a truncated write
            os.kill(os.getpid(), signal.SIGKILL)
        real(obj, path)
    ckpt.save_torch = killing
    fit(TrainConfig("lowformer-tiny", task="classification", max_steps=6, save_every=2, batch_size=4,
                    output_dir=sys.argv[1], progress=False, eval_samples=4,
                    data_options={"num_samples": 16, "image_size": 32}))
""")


def test_process_killed_while_writing_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run)], env=env, capture_output=True,
                             text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert process.returncode == -9, process.stderr[-2000:]
    assert (run / "checkpoint-4.tmp" / ckpt.TRAINING_STATE).read_bytes() == b"half a file"
    assert not (run / "checkpoint-4").exists()
    assert (run / "latest").read_text().strip() == "checkpoint-2"
    assert ckpt.is_complete(run / "checkpoint-2")
    settings = dict(model="lowformer-tiny", task="classification", max_steps=6, save_every=2, batch_size=4,
                    output_dir=str(run), progress=False, eval_samples=4,
                    data_options={"num_samples": 16, "image_size": 32})
    resumed = fit(TrainConfig(**settings, resume=True))
    straight = fit(TrainConfig(**{**settings, "output_dir": str(tmp_path / "straight")}))
    assert resumed.resumed_from.name == "checkpoint-2"
    assert_identical(straight.checkpoint, resumed.checkpoint)


def test_resume_refuses_a_different_run(tmp_path):
    fit(config(tmp_path, "run", "classification", max_steps=3))
    with pytest.raises(ConfigError, match="lr: checkpoint 0.003, now 0.01"):
        Trainer(config(tmp_path, "run", "classification", max_steps=6, lr=0.01, resume=True))
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        Trainer(config(tmp_path, "run", "classification", max_steps=6))
    longer = fit(config(tmp_path, "run", "classification", max_steps=6, resume=True))  # max_steps may change
    assert longer.resumed_from.name == "checkpoint-3" and longer.step == 6


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    result = fit(config(tmp_path, "fresh", "classification", max_steps=2, resume=True))
    assert result.resumed_from is None and result.step == 2
