"""The `zoo` command: list, info, download, convert, push, and errors without tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

import zoo
from tests.hub_server import populate_cache
from tests.test_hub import _assert_same_weights, _original_state_dict
from zoo.cli import main


def test_list_plain_pattern_and_pretrained(capsys):
    assert main(["list", "toy*"]) == 0
    assert capsys.readouterr().out.split() == ["toy-base", "toy-tiny"]
    main(["list", "toy*", "--pretrained"])
    assert capsys.readouterr().out.split() == ["toy-base.orig", "toy-base.zoo"]
    main(["list", "nothing-like-this*"])
    assert "No model matches" in capsys.readouterr().out


def test_list_markdown_table(capsys):
    main(["list", "toy*", "--markdown"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Model | Task | Params | Weights (tags) | Paper | License |"
    assert lines[2] == ("| `toy-base` | backbone | 2.56K | `zoo`, `orig` | "
                        "[arXiv:2401.00001](https://arxiv.org/abs/2401.00001) | mit |")
    assert lines[3].startswith("| `toy-tiny` | backbone |") and lines[3].endswith("| - | - | - |")


def test_info_text_and_json(capsys):
    main(["info", "toy-base"])
    out = capsys.readouterr().out
    assert "params: 2,563 (2.56K)" in out and "toy-base.orig <- zoo-test/toy-original (original)" in out
    assert "input: x (B, 8) float32" in out and "top1 99.0" in out
    main(["info", "toy-base", "--json"])
    assert json.loads(capsys.readouterr().out)["params"] == 2563


def test_errors_are_one_line_without_traceback(capsys):
    assert main(["info", "toy-bsae"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo info: error: Unknown model 'toy-bsae'. Did you mean: toy-base")
    assert "Traceback" not in err


def test_download_registered_name_and_repo(tmp_path, capsys, fake_hub):
    model = zoo.create("toy-base")
    fake_hub.upload_folder("zoo-test/toy-base", model.save_pretrained(tmp_path / "pub"))
    assert main(["download", "toy-base.zoo"]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert folder.endswith(tuple(fake_hub.repos["zoo-test/toy-base"].branches.values()))
    assert main(["download", "zoo-test/toy-base"]) == 0
    assert "snapshots" in capsys.readouterr().out


def test_convert_published_folder_and_bare_file(tmp_path, capsys):
    reference = zoo.create("toy-base")
    torch.save(_original_state_dict(reference), tmp_path / "toy.pth")
    assert main(["convert", str(tmp_path / "toy.pth"), "--out", str(tmp_path / "a")]) == 2
    assert "say which model it is with --model" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "toy.pth"), "--model", "toy-base", "--out", str(tmp_path / "a")]) == 0
    assert "Wrote toy model (2.56K params)" in capsys.readouterr().out
    _assert_same_weights(reference, zoo.from_pretrained(tmp_path / "a"))
    assert main(["convert", str(tmp_path / "a"), "--family", "toy", "--out", str(tmp_path / "b")]) == 0
    _assert_same_weights(reference, zoo.from_pretrained(tmp_path / "b"))


def test_push_folder(tmp_path, capsys, fake_hub):
    model = zoo.create("toy-tiny")
    folder = model.save_pretrained(tmp_path / "saved")
    assert main(["push", str(folder), "me/tiny", "--message", "hello"]) == 0
    assert "/me/tiny/commit/" in capsys.readouterr().out
    _assert_same_weights(model, zoo.from_pretrained("me/tiny"))
    assert main(["push", str(tmp_path), "me/tiny"]) == 2
    assert "is not a saved model folder" in capsys.readouterr().err


def test_download_offline_not_cached_is_a_clear_error(capsys, offline, hf_cache, tmp_path):
    assert main(["download", "toy-base"]) == 2
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err
    populate_cache(hf_cache, "zoo-test/toy-base", zoo.create("toy-base").save_pretrained(tmp_path / "p"))
    assert main(["download", "toy-base"]) == 0


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"zoo {zoo.__version__}"
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "info", "no-such-model"], capture_output=True, text=True)
    assert result.returncode == 2 and "Unknown model 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_model_table_is_current():
    """The README's table is `zoo list --markdown` of the registered families (a fresh process: no test models)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- models -->\n(.*?)<!-- /models -->", readme, flags=re.S).group(1)
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "list", "--markdown"], capture_output=True, text=True,
                            check=True)
    assert table == result.stdout, "the README's model table is stale: paste `zoo list --markdown` between its markers"


def test_run_dispatches_to_the_family_runner(capsys):
    assert main(["run", "toy-tiny", "--seed", "3"]) == 0
    assert len(capsys.readouterr().out.split()) == 3
    family = zoo.registry.get_family("toy")
    runner, family.runner = family.runner, None
    try:
        assert main(["run", "toy-tiny"]) == 2
        assert "does not support the 'toy' family yet" in capsys.readouterr().err
    finally:
        family.runner = runner
