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
])
def test_invalid_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({"model": "lowformer-tiny", "task": "classification", **values})


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
