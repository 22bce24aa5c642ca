"""Checkpoints and resume: a run stopped after step k and resumed to step n ends bit-identical (CPU) to an
uninterrupted n-step run, with the same metrics.jsonl; a process killed while writing a checkpoint leaves `latest`
naming a complete one; a checkpoint that does not read back whole is skipped; checkpoint rotation; settings that
would change the run refuse to resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train import TrainConfig, Trainer, fit, loop
from train import checkpoint as ckpt
from train.curves import read_jsonl
from zoo.cli import main
from zoo.errors import CheckpointError, ConfigError

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


def records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "samples_per_second")} for r in read_jsonl(path)]


def assert_same_metrics(straight, resumed):
    expected = records(straight.output_dir / "metrics.jsonl")
    assert expected and any("eval" in r for r in expected)
    assert records(resumed.output_dir / "metrics.jsonl") == expected
    assert records(resumed.model_dir / "metrics.jsonl") == expected
    assert [{k: v for k, v in r.items() if k not in ("time", "samples_per_second")} for r in resumed.history] \
        == expected
    assert resumed.metrics == straight.metrics


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_is_bit_identical(tmp_path, case):
    straight = fit(config(tmp_path, "straight", case))
    with pytest.raises(Stop):  # killed after step 5: steps 4-5 are lost, checkpoint-3 survives
        fit(config(tmp_path, "resumed", case), callbacks=[stop_at(5)])
    assert ckpt.list_checkpoints(tmp_path / "resumed")[-1][1].name == "checkpoint-3"
    resumed = fit(config(tmp_path, "resumed", case, resume=True))
    assert resumed.resumed_from.name == "checkpoint-3" and resumed.step == straight.step == 7
    assert_identical(straight.checkpoint, resumed.checkpoint)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    losses = [r["loss"] for r in straight.history if "loss" in r]
    assert [r["loss"] for r in resumed.history if "loss" in r] == losses  # the log continues where it stopped


@pytest.mark.parametrize("log_every, save_every, stop", [
    (1, 3, 5),
    (4, 6, 8),  # the record of step 8 averages steps 5-8, across the checkpoint of step 6; step 8 is logged, then lost
])
def test_resumed_run_logs_the_same_metrics(tmp_path, log_every, save_every, stop):
    settings = dict(max_steps=10, log_every=log_every, save_every=save_every, eval_every=5)
    straight = fit(config(tmp_path, "straight", "classification", **settings))
    with pytest.raises(Stop):
        fit(config(tmp_path, "resumed", "classification", **settings), callbacks=[stop_at(stop)])
    resumed = fit(config(tmp_path, "resumed", "classification", resume=True, **settings))
    assert resumed.resumed_from.name == f"checkpoint-{save_every * (stop // save_every)}"
    assert_same_metrics(straight, resumed)


def test_killed_while_linking_the_final_model(tmp_path, monkeypatch):
    """Killed after the final checkpoint, while `model/` is linked: the resumed run finishes it without training
    or evaluating again, and without a second final record."""
    straight = fit(config(tmp_path, "straight", "classification"))

    def killed(checkpoint, model_dir):
        tmp = model_dir.with_name(model_dir.name + ".tmp")
        tmp.mkdir()
        (tmp / "config.json").write_text("{")
        raise Stop(checkpoint.name)

    monkeypatch.setattr(loop, "_link_model_files", killed)
    with pytest.raises(Stop, match="checkpoint-7"):
        fit(config(tmp_path, "resumed", "classification"))
    monkeypatch.undo()
    resumed = fit(config(tmp_path, "resumed", "classification", resume=True))
    assert resumed.resumed_from.name == "checkpoint-7" and resumed.step == 7
    assert_same_metrics(straight, resumed)
    assert not (tmp_path / "resumed" / "model.tmp").exists()


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
    assert ckpt.list_checkpoints(run)[-1][1].name == "checkpoint-3"
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


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("broken", [ckpt.TRAINING_STATE, "rng_state_0.pt", "model.safetensors"])
def test_resume_skips_a_checkpoint_that_does_not_read_back(tmp_path, caplog, broken):
    with pytest.raises(Stop):
        fit(config(tmp_path, "run", "classification", max_steps=4, save_every=2), callbacks=[stop_at(4)])
    truncate(tmp_path / "run" / "checkpoint-4" / broken)
    with caplog.at_level("WARNING", logger="train.loop"):
        resumed = fit(config(tmp_path, "run", "classification", max_steps=4, save_every=2, resume=True))
    assert resumed.resumed_from.name == "checkpoint-2" and resumed.step == 4
    warning = caplog.text
    assert f"skipping checkpoint-4: {tmp_path / 'run' / 'checkpoint-4' / broken} is truncated or corrupt" in warning
    assert "resuming from checkpoint-2" in warning
    assert ckpt.is_complete(tmp_path / "run" / "checkpoint-4")
    assert records(resumed.output_dir / "metrics.jsonl")[-1]["step"] == 4  # the eval of the re-written step 4


def test_resume_with_no_readable_checkpoint_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    fit(config(tmp_path, "run", "classification", max_steps=4, save_every=2))
    for step in (2, 4):
        truncate(run / f"checkpoint-{step}" / ckpt.TRAINING_STATE)
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be used"):
        Trainer(config(tmp_path, "run", "classification", max_steps=4, save_every=2, resume=True))
    code = main(["train", "lowformer-tiny", "--task", "classification", "--output-dir", str(run), "--resume",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"zoo train: error: Cannot resume: no checkpoint in {run} can be used; checkpoint-4: "
                          f"{run / 'checkpoint-4' / ckpt.TRAINING_STATE} is truncated or corrupt")
    assert "download" not in err
    assert "Delete those checkpoint folders" in err


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
