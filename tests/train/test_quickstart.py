"""`zoo quickstart`: a reduced run by default (structure, save, reload, report), the full one with -m slow
(>= 80% exact match from chance, in under 5 minutes on 2 CPU cores)."""

from __future__ import annotations

import json

import pytest

from train.quickstart import THRESHOLD, TIME_BUDGET_S, quickstart
from zoo.cli import main
from zoo.errors import ConfigError


def test_reduced_quickstart(tmp_path, capsys):
    code = main(["quickstart", "--output-dir", str(tmp_path / "qs"), "--max-steps", "30", "--eval-samples", "16",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1  # 30 steps do not teach it enough: the report says so, and the exit status too
    assert "zoo quickstart: smolvlm-tiny" in out and "exact match" in out and "FAILED" in out
    assert "same answers to all 16 questions" in out and str(tmp_path / "qs" / "training_curve.png") in out
    report = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert report["steps"] == 30 and report["reloaded_identical"] and report["loss_end"] < report["loss_start"] * 0.7
    assert report["before"]["exact_match"] <= 0.3 and set(report["after"]) >= {
        "exact_match", "exact_match/color", "exact_match/shape", "exact_match/count", "exact_match/position"}
    model = tmp_path / "qs" / "model"
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json", "processor_config.json",
            "training_curve.png"} <= {p.name for p in model.iterdir()}
    # run again: the earlier quickstart's folder is replaced, a foreign folder is refused
    assert main(["quickstart", "--output-dir", str(tmp_path / "qs"), "--max-steps", "2", "--eval-samples", "4",
                 "--no-progress"]) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not written by `zoo quickstart`"):
        quickstart(output_dir=tmp_path / "mine", max_steps=1)
    assert (tmp_path / "mine" / "notes.txt").is_file()


@pytest.mark.slow
def test_full_quickstart(tmp_path):
    report = quickstart(output_dir=tmp_path / "qs", progress=False)
    print(report.text())
    assert report.before["exact_match"] <= report.chance["overall"]
    assert report.after["exact_match"] >= THRESHOLD and report.reloaded_identical
    assert report.total_seconds < TIME_BUDGET_S
