"""What a launch asks for that the loop cannot do is refused before any work, with what to use instead."""

from __future__ import annotations

import pytest

from train import TrainConfig
from train.loop import Trainer
from zoo.errors import ConfigError


@pytest.fixture
def launched(monkeypatch):
    """The environment of one of two processes started by `accelerate launch` (the check comes before any setup)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    return monkeypatch


def config(tmp_path):
    return TrainConfig("lowformer-tiny", task="classification", output_dir=str(tmp_path / "run"), progress=False)


def test_fsdp_version_1_is_refused(tmp_path, launched):
    launched.setenv("ACCELERATE_USE_FSDP", "true")
    launched.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        Trainer(config(tmp_path))


def test_deepspeed_on_cpu_is_refused(tmp_path, launched):
    launched.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed does not run on CPU.*train/configs/fsdp.yaml"):
        Trainer(config(tmp_path))

