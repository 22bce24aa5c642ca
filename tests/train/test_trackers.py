"""`--report-to`: accelerate's experiment trackers get the metrics.jsonl records (as `train/NAME` and `eval/NAME`) and
the settings; a tracker whose package is missing or an unknown name is a one-line error before anything is built."""

from __future__ import annotations

import accelerate.tracking
import pytest
from accelerate.tracking import GeneralTracker

from train import TrainConfig, Trainer, fit
from train.curves import read_jsonl
from zoo.cli import main
from zoo.errors import ConfigError

SETTINGS = dict(model="lowformer-tiny", task="classification", max_steps=4, batch_size=4, log_every=2, eval_every=2,
                eval_samples=4, progress=False, data_options={"num_samples": 16, "image_size": 32})
FLAGS = ["train", "lowformer-tiny", "--task", "classification", "--max-steps", "4", "--batch-size", "4",
         "--log-every", "2", "--eval-samples", "4", "--no-progress", "--data-options",
         '{"num_samples": 16, "image_size": 32}']


class MemoryTracker(GeneralTracker):
    """Keeps what it is given; `runs` holds every instance."""

    name = "memory"
    requires_logging_directory = True
    runs: list[MemoryTracker] = []

    def __init__(self, run_name, logging_dir, **kwargs):
        super().__init__()
        self.run_name, self.logging_dir = run_name, logging_dir
        self.config, self.logged, self.finished = None, [], False
        MemoryTracker.runs.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


@pytest.fixture
def memory_tracker(monkeypatch):
    monkeypatch.setitem(accelerate.tracking.LOGGER_TYPE_TO_CLASS, "memory", MemoryTracker)
    monkeypatch.setattr(MemoryTracker, "runs", [])
    return MemoryTracker.runs


def expected_logs(records):
    logs = []
    for record in records:
        if "eval" in record:
            logs.append((record["step"], {f"eval/{k}": v for k, v in record["eval"].items()}))
        else:
            logs.append((record["step"], {f"train/{k}": v for k, v in record.items() if k not in ("step", "time")}))
    return logs


def test_trackers_get_every_metrics_record(tmp_path, memory_tracker):
    result = fit(TrainConfig(**SETTINGS, report_to="memory", output_dir=str(tmp_path / "run")))
    [tracker] = memory_tracker
    assert tracker.finished and tracker.run_name == "zoo" and tracker.logging_dir == str(tmp_path / "run" / "logs")
    assert tracker.config["lr"] == 1e-3 and tracker.config["max_steps"] == 4
    assert tracker.config["data_options"] == '{"num_samples": 16, "image_size": 32}'
    assert all(isinstance(value, (bool, int, float, str)) for value in tracker.config.values())
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 2, 2, 4, 4]  # eval at 0, train and eval at 2 and 4
    assert tracker.logged == expected_logs(records) == expected_logs(result.history)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/epoch"} <= set(tracker.logged[1][1])
    assert "eval/accuracy" in tracker.logged[-1][1]


def test_trackers_are_finished_when_training_fails(tmp_path, memory_tracker):
    def fail(info):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        fit(TrainConfig(**SETTINGS, report_to=["memory"], output_dir=str(tmp_path / "run")), callbacks=[fail])
    [tracker] = memory_tracker
    assert tracker.finished and tracker.logged


def test_tensorboard_through_the_cli(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main([*FLAGS, "--output-dir", str(tmp_path / "run"), "--report-to", "tensorboard"]) == 0
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "zoo")).Reload()
    losses = [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in records if "loss" in r and "eval" not in r]
    assert [event.step for event in events.Scalars("eval/accuracy")] == [4]


def test_report_to_settings():
    assert TrainConfig(**SETTINGS, report_to="tensorboard, wandb").report_to == ("tensorboard", "wandb")
    assert TrainConfig(**SETTINGS, report_to="none").report_to == ()
    assert TrainConfig(**SETTINGS, report_to=["all"]).to_dict()["report_to"] == ["all"]
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord' \\(did you mean 'tensorboard'\\?\\)"):
        TrainConfig(**SETTINGS, report_to="tensorbord")


@pytest.mark.parametrize("flag, message", [
    ("tensorboard", "--report-to tensorboard needs the tensorboard package: pip install tensorboard"),
    ("wandb", "--report-to wandb needs the wandb package: pip install wandb"),
    ("comet_ml", "--report-to comet_ml needs the comet-ml package: pip install comet-ml"),
    ("tensorbord", "report_to: unknown tracker 'tensorbord' (did you mean 'tensorboard'?). Trackers: all, "),
])
def test_missing_or_unknown_tracker_is_a_one_line_error(tmp_path, capsys, monkeypatch, flag, message):
    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])  # as if no tracker package were installed
    with pytest.raises(ConfigError, match="needs the|unknown tracker"):
        Trainer(TrainConfig(**SETTINGS, report_to=flag, output_dir=str(tmp_path / "run")))
    code = main([*FLAGS, "--output-dir", str(tmp_path / "run"), "--report-to", flag])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"zoo train: error: {message}")
    assert not (tmp_path / "run").exists()
