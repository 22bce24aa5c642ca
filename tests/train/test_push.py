"""--push-to-hub through the local Hub server: the pushed model reloads identical, with its card, curve and
processor; with the Hub down, training completes, everything is on disk and the failure is reported."""

from __future__ import annotations

import pytest
import torch

import zoo
from train import TrainConfig, fit
from train import push as push_module
from zoo.cli import main


def settings(tmp_path, **changes):
    values = dict(model="smolvlm-tiny", task="vlm-sft", max_steps=4, batch_size=4, lr=3e-3, save_every=2,
                  eval_samples=8, progress=False, output_dir=str(tmp_path / "run"),
                  data_options={"num_samples": 16}, push_to_hub="me/shapes-vlm")
    return {**values, **changes}


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(zoo.hub.time, "sleep", lambda seconds: None)


def test_pushed_model_reloads_identical(tmp_path, fake_hub, no_backoff):
    result = fit(TrainConfig(**settings(tmp_path, push_every_save=True)))
    assert result.push is not None and result.push.ok, result.push
    assert not result.push_failures
    files = fake_hub.repos["me/shapes-vlm"].commits[fake_hub.repos["me/shapes-vlm"].branches["main"]]
    assert {"config.json", "model.safetensors", "README.md", "training_curve.png", "metrics.jsonl",
            "tokenizer.json", "processor_config.json"} <= set(files)
    card = files["README.md"].decode()
    assert "## Training" in card and "![Training curve](training_curve.png)" in card and "## Results" in card
    assert "exact_match" in card
    reloaded = zoo.from_pretrained("me/shapes-vlm")
    expected = result.model.state_dict()
    assert reloaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in reloaded.state_dict().items())
    commits = [r for r in fake_hub.requests if "/commit/" in r]
    assert len(commits) >= 2  # a background push at a save, and the final one
    pushed = {name for snapshot in fake_hub.repos["me/shapes-vlm"].commits.values() for name in snapshot}
    assert not {"training_state.pt", "rng_state_0.pt", "trainer_state.json"} & pushed  # the model only
    assert not list((tmp_path / "run").glob(".push-*"))  # snapshots cleaned up


def test_hub_outage_keeps_everything_and_reports(tmp_path, fake_hub, no_retry_wait, no_backoff):
    fake_hub.fail_with = 503
    result = fit(TrainConfig(**settings(tmp_path, hub_retries=1)))
    assert result.step == 4
    assert result.push is not None and not result.push.ok and result.push.attempts == 2
    assert "Could not push" in result.push.error and str(result.model_dir) in result.push.error
    assert (result.model_dir / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoint-4" / "model.safetensors").is_file()
    assert zoo.from_pretrained(result.model_dir) is not None


def test_cli_reports_a_failed_push(tmp_path, fake_hub, no_retry_wait, no_backoff, capsys):
    fake_hub.fail_with = 503
    code = main(["train", "smolvlm-tiny", "--task", "vlm-sft", "--max-steps", "2", "--batch-size", "2",
                 "--output-dir", str(tmp_path / "run"), "--push-to-hub", "me/down", "--eval-samples", "4",
                 "--data-options", '{"num_samples": 8}', "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "pushing to 'me/down' failed" in captured.err
    assert f"zoo push {tmp_path / 'run' / 'model'} me/down" in captured.err
    assert "Traceback" not in captured.err
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
