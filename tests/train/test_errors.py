"""Bad input fails with a clear error before any training step: an unknown task or model, a dataset that does not
exist or has the wrong format, a task that does not fit the model, settings that cannot work. Through the CLI the
error is one line, without a traceback."""

from __future__ import annotations

import pytest

from train import TrainConfig, Trainer, loop
from zoo.cli import main
from zoo.errors import ConfigError, InputError, UnknownModelError


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a run gets as far as training."""
    def fail(self):
        raise AssertionError("training started")
    monkeypatch.setattr(loop.Trainer, "fit", fail)


def trainer(tmp_path, **settings):
    values = dict(model="lowformer-tiny", task="classification", output_dir=str(tmp_path / "run"), progress=False,
                  data_options={"num_samples": 8, "image_size": 32})
    return Trainer(TrainConfig(**{**values, **settings}))


@pytest.mark.parametrize("settings, error, message", [
    (dict(task="clasification"), ConfigError, "Unknown task 'clasification'. Did you mean 'classification'?"),
    (dict(model="lowformer-tinny"), UnknownModelError, "Unknown model 'lowformer-tinny'. Did you mean"),
    (dict(data="no/such/folder"), InputError, "neither an embedded dataset nor an existing path"),
    (dict(data="shapes-vqa"), InputError, "holds vqa samples, but this task needs classification"),
    (dict(model="smolvlm-tiny"), ConfigError, "trains backbone models, but 'smolvlm-tiny' is a vlm model. "
                                              "Tasks for it: vlm-sft"),
    (dict(task="vlm-sft"), ConfigError, "'lowformer-tiny' is a backbone model. Tasks for it: classification"),
    (dict(model="toy-tiny"), ConfigError, "'toy-tiny' cannot be trained with task 'classification' on 'shapes'"),
    (dict(task_options={"temperature": 2}), ConfigError, "does not take these options"),
    (dict(mixed_precision="fp16"), ConfigError, "fp16 needs a CUDA GPU"),
    (dict(lora_rank=4), ConfigError, "No Linear layer of LowFormer is named q_proj"),
    (dict(model="smolvlm-tiny", task="vlm-sft", gradient_checkpointing=True), ConfigError,
     "does not support gradient checkpointing"),
    (dict(model="smolvlm-tiny", task="vlm-sft", model_options={"text": {"vocab_size": 299}}), ConfigError,
     "The tokenizer has 300 tokens but 'smolvlm-tiny' has a vocabulary of 299"),
    (dict(model="smolvlm-tiny", task="vlm-sft", model_options={"image_token_id": 5}), ConfigError,
     "expects image_token_id=5; build the model with image_token_id=298"),
])
def test_bad_input_fails_before_training(tmp_path, no_training, settings, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        trainer(tmp_path, **settings).fit()
    assert not (tmp_path / "run").exists()  # nothing written


def test_wrong_file_formats(tmp_path, no_training):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="is a .csv file"):
        trainer(tmp_path, data=str(tmp_path / "data.csv"))
    (tmp_path / "captions.jsonl").write_text('{"image": "a.png", "caption": "x"}\n')
    with pytest.raises(InputError, match="holds captions samples, but this task needs classification"):
        trainer(tmp_path, data=str(tmp_path / "captions.jsonl"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="is not an image folder"):
        trainer(tmp_path, data=str(tmp_path / "folder"))


@pytest.mark.parametrize("values, message", [
    (dict(max_steps=0), "max_steps must be an integer >= 1"),
    (dict(lr="fast"), "lr must be float or int, got 'fast'"),
    (dict(schedule="step"), "schedule must be one of cosine, linear, constant"),
    (dict(lr_rate=1), "Unknown training setting 'lr_rate'"),
    (dict(push_to_hub="no-owner"), "push_to_hub takes a Hub repo id"),
    (dict(ema_decay=0.9, lora_rank=4), "cannot be combined"),
    (dict(lr=float("nan")), r"lr must be a finite number > 0, got nan"),
    (dict(lr=float("inf")), r"lr must be a finite number > 0, got inf"),
    (dict(lr=-1e-3), r"lr must be a finite number > 0"),
    (dict(weight_decay=-0.1), r"weight_decay must be a finite number >= 0"),
    (dict(max_grad_norm=float("nan")), r"max_grad_norm must be a finite number > 0, or None"),
    (dict(betas=[0.9, 1.0]), r"betas\[1\] must be in \[0, 1\)"),
    (dict(betas=[0.9]), r"betas must be two numbers"),
    (dict(lora_dropout=1.5), r"lora_dropout must be in \[0, 1\)"),
    (dict(lora_alpha=0), r"lora_alpha must be a finite number > 0"),
    (dict(seed=-1), r"seed must be an integer >= 0"),
    (dict(max_steps=1.5), "max_steps must be int, got 1.5"),
    (dict(max_steps=float("inf")), "max_steps must be int, got inf"),
])
def test_invalid_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({"model": "lowformer-tiny", "task": "classification", **values})


def test_yaml_reads_numbers_as_the_readme_writes_them(tmp_path):
    """PyYAML alone reads `3e-3` as a string (YAML 1.1); settings and nested options get numbers."""
    path = tmp_path / "run.yaml"
    path.write_text("model: lowformer-tiny\ntask: classification\nlr: 3e-3\nweight_decay: 1e-4\nmax_steps: 5e5\n"
                    "min_lr_ratio: 1E-2\nmax_grad_norm: +5e-1\nmodel_options: {drop_path_rate: 1e-1}\n"
                    "data: 1e5x\n")
    config = TrainConfig.from_yaml(path)
    assert (config.lr, config.weight_decay, config.min_lr_ratio, config.max_grad_norm) == (3e-3, 1e-4, 1e-2, 0.5)
    assert config.max_steps == 500000 and isinstance(config.max_steps, int)
    assert config.model_options == {"drop_path_rate": 0.1} and config.data == "1e5x"
    path.write_text("model: lowformer-tiny\ntask: classification\nlr: 3e-3x\n")
    with pytest.raises(ConfigError, match="lr must be float or int, got '3e-3x'"):
        TrainConfig.from_yaml(path)
    path.write_text("model: lowformer-tiny\ntask: classification\nlr: .nan\n")
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got nan"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
    (["--lr", "-0.1"], "lr must be a finite number > 0, got -0.1"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--max-steps", "0"], "max_steps must be an integer >= 1, got 0"),
    (["--max-steps", "-5"], "max_steps must be an integer >= 1, got -5"),
    (["--grad-accum", "0"], "gradient_accumulation_steps must be an integer >= 1, got 0"),
    (["--save-every", "-1"], "save_every must be an integer >= 0, got -1"),
    (["--log-every", "0"], "log_every must be an integer >= 1, got 0"),
    (["--max-grad-norm", "nan"], "max_grad_norm must be a finite number > 0, or None (no clipping), got nan"),
    (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0, got -1.0"),
    (["--ema-decay", "1.5"], r"ema_decay must be in (0, 1), got 1.5"),
])
def test_cli_rejects_out_of_range_numbers(tmp_path, capsys, no_training, flags, message):
    code = main(["train", "lowformer-tiny", "--task", "classification", "--output-dir", str(tmp_path / "run"),
                 "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"zoo train: error: {message}"]
    assert not (tmp_path / "run").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["train", "lowformer-tiny", "--task", "detection", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "zoo train: error: Unknown task 'detection'" in err and "Traceback" not in err
    assert main(["train", "--task", "classification"]) == 2
    assert "needs a MODEL" in capsys.readouterr().err
    assert main(["train", "lowformer-tiny", "--task", "classification", "--data-options", "{oops"]) == 2
    assert "--data-options takes a JSON mapping" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: lowformer-tiny\ntask: classification\nmax_step: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "Unknown training setting 'max_step' (did you mean 'max_steps'?)" in capsys.readouterr().err
