"""The `zoo` command: list, info, download, convert, push, and errors without tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import zoo
from tests.hub_server import populate_cache
from tests.test_hub import _assert_same_weights, _original_state_dict
from zoo.backbones.classify import CIFAR10_CLASSES, class_names
from zoo.cli import COMMANDS, main
from zoo.registry import TASKS


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
    assert main(["run", "toy-base", "--seed", "3"]) == 0
    assert len(capsys.readouterr().out.split()) == 3
    family = zoo.registry.get_family("toy")
    runner, family.runner = family.runner, None
    try:
        assert main(["run", "toy-base"]) == 2
        assert "does not support the 'toy' family yet" in capsys.readouterr().err
    finally:
        family.runner = runner


def test_run_without_published_weights_says_use_checkpoint(capsys):
    assert main(["run", "toy-tiny"]) == 2
    assert "'toy-tiny' has no published weights" in capsys.readouterr().err
    assert main(["run", "lowformer-tiny", "--image", "x.png"]) == 2
    assert "use --checkpoint DIR" in capsys.readouterr().err


def test_run_checks_the_device_before_building_the_model(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(zoo.registry.get_family("toy"), "runner", lambda name, args: pytest.fail("model built"))
    assert main(["run", "toy-base", "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "zoo run: error: --device cuda: CUDA is not available on this machine; use --device cpu.\n"


def test_list_names_an_empty_task(monkeypatch, capsys):
    registry = zoo.registry
    monkeypatch.setattr(registry, "_MODELS", {n: e for n, e in registry._MODELS.items() if e.family == "toy"})
    assert main(["list", "--task", "restoration"]) == 0
    assert capsys.readouterr().out == "No restoration model is registered yet. Tasks with models: backbone.\n"
    assert main(["list", "nothing*", "--task", "backbone"]) == 0
    assert capsys.readouterr().out == "No backbone model matches 'nothing*'.\n"
    assert main(["list", "--task", "restoraton"]) == 2
    assert f"Tasks: {', '.join(TASKS)}." in capsys.readouterr().err


def _image(path: Path, size: tuple[int, int] = (80, 50)) -> str:
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return str(path)


def _top5(out: str) -> list[tuple[int, str]]:
    """(class index, name) of each ranked line of `zoo run`'s output."""
    rows = re.findall(r"^  \d\. +[\d.]+%  class (\d+)(.*)$", out, flags=re.M)
    return [(int(index), name.strip()) for index, name in rows]


def test_run_classifies_an_image_with_imagenet_names(tmp_path, capsys):
    from timm.data import ImageNetInfo, create_transform

    model = zoo.create("lowformer-tiny", num_classes=1000).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4), "crop_pct": 0.8}
    folder = model.save_pretrained(tmp_path / "model")
    image = _image(tmp_path / "x.png")
    assert main(["run", "lowformer-tiny", "--checkpoint", str(folder), "--image", image]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{image}:\n")
    transform = create_transform(input_size=(3, 64, 64), interpolation="bicubic", crop_pct=0.8,
                                 mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    with torch.no_grad():
        logits = model(transform(Image.open(image).convert("RGB"))[None])
    info = ImageNetInfo()
    assert _top5(out) == [(i, info.index_to_description(i)) for i in logits[0].topk(5).indices.tolist()]


def test_run_classifies_with_wavemix_and_prints_indices_without_names(tmp_path, capsys):
    folder = zoo.create("wavemix-tiny").save_pretrained(tmp_path / "model")
    images = [_image(tmp_path / "a.png"), _image(tmp_path / "b.png", (20, 40))]
    assert main(["run", "wavemix-tiny", "--checkpoint", str(folder), "--image", images[0], "--image", images[1]]) == 0
    out = capsys.readouterr().out
    assert out.count("class ") == 10 and f"{images[1]}:\n" in out
    assert all(name == "" and 0 <= index < 10 for index, name in _top5(out))


def test_class_names_are_the_published_ones():
    assert class_names(10, "cifar10") == list(CIFAR10_CLASSES) and class_names(10, None) is None
    assert class_names(1000, None)[1] == "goldfish, Carassius auratus"


# ---------------------------------------------------------------------------------------------------
# every command with bad arguments: one line on stderr, exit code 2, no traceback


def _bad_arguments(tmp: Path, saved: str) -> list[tuple[list[str], str]]:
    """(argv, part of the expected message), for every command."""
    (tmp / "bad.yaml").write_text("lr: [1, 2\n")
    (tmp / "empty").mkdir()
    train = ["train", "lowformer-tiny", "--task", "classification", "--max-steps", "1"]
    cases = [
        (["list", "--task", "nope"], "Unknown task 'nope'"),
        (["list", "--bogus"], "unrecognized arguments: --bogus"),
        (["info", "no-such-model"], "Unknown model 'no-such-model'"),
        (["info"], "required: name"),
        (["download", "no-such-model"], "Unknown model"),
        (["download", "lowformer-tiny"], "has no published weights"),
        (["convert", str(tmp / "missing"), "--out", str(tmp / "out")], "neither an existing folder nor a Hub repo id"),
        (["convert", saved, "--out", str(tmp / "out"), "--family", "nope"], "not 'nope'"),
        (["convert", str(tmp / "bad.yaml"), "--model", "lowformer-tiny", "--out", str(tmp / "out")],
         "Unsupported checkpoint format"),
        (["push", str(tmp / "missing"), "me/x"], "is not a saved model folder"),
        (["run", "no-such-model"], "Unknown model"),
        (["run", "lowformer-b1", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
        (["run", "smolvlm-256m", "--prompt", "hi", "--max-new-tokens", "-5"], "--max-new-tokens: must be at least 1"),
        (["run", "z-image-turbo", "--prompt", "a cat", "--steps", "0"], "--steps: must be at least 1"),
        (["run", "z-image-turbo", "--prompt", "a cat", "--height", "-8"], "--height: must be at least 1"),
        (["run", "z-image-turbo", "--prompt", "a cat", "--width", "0"], "--width: must be at least 1"),
        (["run", "wan2.1-t2v-1.3b", "--prompt", "a cat", "--frames", "0"], "--frames: must be at least 1"),
        (["run", "z-image-turbo", "--prompt", "a cat", "--guidance", "nan"], "--guidance: takes a finite number"),
        (["run", "lowformer-tiny", "--checkpoint", saved, "--image", str(tmp / "missing.png")], "missing.png: no such file"),
        (["run", "lowformer-b1", "--device", "gpu"], "--device takes cpu, cuda or cuda:N"),
        (["run", "lowformer-tiny", "--checkpoint", str(tmp / "missing")], "--checkpoint"),
        (["run", "lowformer-tiny", "--image", str(tmp / "bad.yaml")], "use --checkpoint DIR"),
        (["run", "lowformer-tiny", "--checkpoint", saved], "give one or more with --image PATH"),
        (["run", "lowformer-tiny", "--checkpoint", saved, "--image", str(tmp / "bad.yaml")], "cannot read it as an image"),
        (["train"], "needs a MODEL and --task"),
        (["train", "no-such-model", "--task", "classification"], "Unknown model"),
        (["train", "lowformer-tiny", "--task", "nope"], "Unknown task 'nope'"),
        (["train", "lowformer-tiny", "--task", "classification", "--max-steps", "0"], "max_steps"),
        ([*train, "--model-options", "{bad"], "takes a JSON mapping"),
        ([*train, "--config", str(tmp / "bad.yaml")], "not valid YAML"),
        (["quickstart", "--max-steps", "0"], "max_steps"),
        (["quickstart", "--eval-samples", "-1"], "eval_samples"),
        (["eval", "no-such-model"], "Unknown model"),
        (["eval", "lowformer-tiny", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["eval", "lowformer-tiny", "--batch-size", "-3"], "argument --batch-size: must be at least 1, got -3"),
        (["eval", "lowformer-tiny", "--num-samples", "0"], "--num-samples: must be at least 1"),
        (["eval", "lowformer-tiny", "--batch-size", "two"], "--batch-size: takes an integer, got 'two'"),
        (["eval", "lowformer-tiny", "--data-options", "{bad"], "--data-options takes a JSON mapping"),
        (["eval", "lowformer-tiny", "--checkpoint", str(tmp / "missing")], "neither a model folder nor a weights file"),
        (["eval", "lowformer-tiny", "--split", "test"], "--split takes eval or train"),
        (["bench", "no-such-model"], "Unknown model"),
        (["bench", "toy-tiny", "--threads", "0"], "--threads: must be at least 1"),
        (["bench", "toy-tiny", "--repeats", "0"], "--repeats: must be at least 1"),
        (["bench", "toy-tiny", "--batch", "0"], "--batch: must be at least 1"),
        (["bench", "toy-tiny", "--layers", "0"], "--layers: must be at least 1"),
        (["bench", "toy-tiny", "--warmup", "-1"], "--warmup: must be at least 0"),
        (["bench", "toy-tiny", "--budget", "0"], "--budget: must be above 0"),
        (["bench", "toy-tiny", "--new-tokens", "1"], "--new-tokens: must be at least 2"),
        (["bench", "toy-tiny", "--model-options", "[1]"], "takes a JSON mapping"),
        (["bench", "toy-tiny", "--device", "cuda:99"], "--device cuda:99"),
        (["bench", "toy-tiny", "--compare", "nope"], "no reference 'nope'"),
        (["bench", "--readme", str(tmp / "README.md"), "--results", str(tmp / "empty")], "No zoo bench results"),
        # These need the hub and train branches of issue 17 merged (repo ids validated, refused pushes retried and
        # reported with the folder to push later, --lr range-checked):
        (["download", "a/b/c"], "a/b/c"),
        (["download", "me/has space"], "me/has space"),
        (["push", saved, "bad repo id"], "bad repo id"),
        (["push", saved, "me/x"], saved),
        ([*train, "--lr", "nan"], "lr"),
    ]
    if not torch.cuda.is_available():
        cases += [
            (["run", "lowformer-b1", "--device", "cuda"], "CUDA is not available on this machine; use --device cpu"),
            (["eval", "lowformer-tiny", "--device", "cuda"], "CUDA is not available"),
        ]
    return cases


def test_every_command_with_bad_arguments_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the retry back-off of the refused pushes
    monkeypatch.chdir(tmp_path)  # whatever a command might write stays out of the checkout
    saved = str(zoo.create("lowformer-tiny").save_pretrained(tmp_path / "saved"))
    cases = _bad_arguments(tmp_path, saved)
    assert {argv[0] for argv, _ in cases} == set(COMMANDS)
    failures = []
    for argv, expected in cases:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
        except Exception as error:  # noqa: BLE001  report every failing case, not only the first
            code = f"{type(error).__name__}: {error}"
        err = capsys.readouterr().err
        lines = err.splitlines()
        if not (code == 2 and len(lines) == 1 and lines[0].startswith(f"zoo {argv[0]}: error: ")
                and expected in lines[0]):
            failures.append(f"zoo {' '.join(argv)} -> {code}: {err!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("argv, expected", [
    (["eval", "lowformer-tiny", "--batch-size", "0"], "zoo eval: error: argument --batch-size: must be at least 1"),
    (["run", "lowformer-tiny", "--image", "x.png"], "zoo run: error: 'lowformer-tiny' has no published weights"),
])
def test_bad_arguments_in_a_fresh_process(argv, expected):
    result = subprocess.run([sys.executable, "-m", "zoo.cli", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(expected) and result.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------
# start-up: --help and --version import no torch; list imports no timm, transformers, diffusers or torch._dynamo

HEAVY = ("torch", "torch._dynamo", "timm", "transformers", "diffusers")


def _imported_by(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom zoo.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(*[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                            check=True)
    return set(result.stderr.split())


def test_help_and_version_import_no_torch():
    assert _imported_by(["--version"]) == set()
    assert _imported_by(["--help"]) == set()
    assert _imported_by(["list"]) == {"torch"}


def test_import_zoo_is_lazy_and_create_still_works():
    code = ("import sys, zoo\nassert 'torch' not in sys.modules\n"
            "model = zoo.create('lowformer-tiny')\nprint(type(model).__name__, zoo.list_models('wavemix-tiny'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LowFormer ['wavemix-tiny']"


def test_run_published_classifier_prints_imagenet_top5(monkeypatch, tmp_path, capsys):
    """`zoo run lowformer-b1 --image X` (the README's example), with random weights in place of the download."""
    from timm.data import ImageNetInfo

    loaded = []

    def create(name, pretrained, dtype, device):
        loaded.append((name, pretrained))
        return zoo.create("lowformer-b1", device=device)

    monkeypatch.setattr("zoo.backbones.classify.create", create)
    assert main(["run", "lowformer-b1", "--image", _image(tmp_path / "cat.png")]) == 0
    assert loaded == [("lowformer-b1", True)]
    top5 = _top5(capsys.readouterr().out)
    assert len(top5) == 5 and all(name == ImageNetInfo().index_to_description(i) for i, name in top5)
