"""`zoo train`: flags, a YAML config that flags override, the files a run writes, and the training-curve PNG."""

from __future__ import annotations

import json

from PIL import Image

from zoo.cli import main


def test_train_with_a_yaml_config_and_flags(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(
        "model: lowformer-tiny\ntask: classification\nmax_steps: 50\nbatch_size: 4\nlr: 0.003\n"
        "data_options:\n  num_samples: 16\n  image_size: 32\neval_samples: 8\nlog_every: 2\n"
    )
    code = main(["train", "--config", str(tmp_path / "run.yaml"), "--max-steps", "4",
                 "--output-dir", str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Trained lowformer-tiny (classification) for 4 steps" in out and "eval accuracy" in out
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert {"loss", "lr", "grad_norm", "samples_per_second", "accuracy"} <= set(records[0])
    assert records[-1]["eval"]["accuracy"] >= 0
    assert "max_steps: 4" in (run / "train_config.yaml").read_text()  # the flag won over the file
    with Image.open(run / "training_curve.png") as curve:
        assert curve.format == "PNG" and curve.size[0] >= 600
        curve.verify()
    assert (run / "model" / "training_curve.png").is_file()


def test_train_help_lists_the_options(capsys):
    try:
        main(["train", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for flag in ("--task", "--data", "--max-steps", "--batch-size", "--lr", "--output-dir", "--resume",
                 "--push-to-hub", "--config", "--lora-rank", "--ema", "--mixed-precision"):
        assert flag in out
