"""--push-to-hub through the local Hub server: the pushed model reloads identical, with its card, curve and
processor; with the Hub down, training completes, everything is on disk and the failure is reported."""

from __future__ import annotations

import os

import pytest
import torch

import zoo
import zoo.hub
from train import TrainConfig, fit
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
    assert "exact_match" in card and "datasets:\n- shapes-vqa\n" in card
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
    assert "503" in result.push.error and result.push.folder == result.model_dir
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


def test_hub_refusing_connections_is_retried_and_reported_in_one_line(tmp_path, backoff_waits, capsys):
    """HF_ENDPOINT is a closed port (tests/conftest.py): every push, in the background at each save and at the end,
    fails with a connection error that is retried and recorded; the hint names the model folder."""
    code = main(["train", "smolvlm-tiny", "--task", "vlm-sft", "--max-steps", "4", "--save-every", "2",
                 "--batch-size", "2", "--output-dir", str(tmp_path / "run"), "--push-to-hub", "me/down",
                 "--push-every-save", "--eval-samples", "4",
                 "--data-options", '{"num_samples": 8}', "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "Exception in thread" not in err
    summary = [line for line in err.splitlines() if line.startswith("zoo train: error:")]
    assert len(summary) == 1 and "failed after 4 attempt(s): the Hub at http://127.0.0.1:9 is unreachable" in summary[0]
    assert summary[0].endswith(f"`zoo push {tmp_path / 'run' / 'model'} me/down`.") and "checkpoint-" not in summary[0]
    assert len(backoff_waits) >= 2 * 3 and set(backoff_waits) == {2.0, 4.0, 8.0}  # background push(es), final push
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoint-4" / "training_state.pt").is_file()


def test_trained_model_names_its_data_and_its_files_follow_the_umask(tmp_path):
    from huggingface_hub import ModelCard

    previous = os.umask(0o022)
    try:
        result = fit(TrainConfig(model="lowformer-tiny", task="classification", data="shapes", max_steps=2,
                                 save_every=2, ema_decay=0.9, batch_size=4, eval_samples=4, progress=False,
                                 output_dir=str(tmp_path / "run"), data_options={"num_samples": 8, "image_size": 32}))
    finally:
        os.umask(previous)
    card = (result.model_dir / "README.md").read_text()
    assert ModelCard(card).data.datasets == ["shapes"] and "imagenet" not in card.lower()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "training_weights.safetensors").is_file()  # EMA: the trained weights are kept apart
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*checkpoint.iterdir(), *result.model_dir.iterdir()]}
    assert set(modes.values()) == {0o644}, modes
