"""The `zoo` command. Each subcommand is a `Command` in `COMMANDS`: a name, help, its arguments and a runner."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError, ZooError


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors: `zoo CMD: error: ... (see `zoo CMD --help`)`, exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes an integer, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def _finite_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"takes a finite number, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a finite number above 0."""
    number = _finite_float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def non_negative_float(value: str) -> float:
    """An argparse type: a finite number of at least 0."""
    number = _finite_float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return number


def resolve_device(value: str | None) -> str:
    """The `--device` to run on: `value` (cpu, cuda or cuda:N) if this machine has it; by default cuda when available."""
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ConfigError(f"--device takes cpu, cuda or cuda:N, got {value!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device takes cpu, cuda or cuda:N, got {value!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {value}: CUDA is not available on this machine; use --device cpu.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {value}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return value


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'smolvlm*'")
    parser.add_argument("--task", help="only this task (vlm, diffusion, restoration, backbone, language)")
    parser.add_argument("--pretrained", action="store_true", help="only models with published weights, as name.tag")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table (params, weights, paper, license)")


def _list(args: argparse.Namespace) -> None:
    from .registry import format_count, list_models, model_info

    names = list_models(args.pattern, pretrained=args.pretrained, task=args.task)
    if not args.markdown:
        print("\n".join(names) if names else _no_match(args))
        return
    print("| Model | Task | Params | Weights (tags) | Paper | License |")
    print("|---|---|---:|---|---|---|")
    for name in list_models(args.pattern, pretrained=args.pretrained, task=args.task, include_tags=False):
        info = model_info(name)
        tags = ", ".join(f"`{s['tag']}`" if s["tag"] else f"`{s['hub_id']}`" for s in info["sources"]) or "-"
        paper = f"[{info['paper']}](https://arxiv.org/abs/{info['paper'].removeprefix('arXiv:')})" if info["paper"] else "-"
        print(f"| `{name}` | {info['task']} | {format_count(info['params'])} | {tags} | {paper} | {info['license'] or '-'} |")


def _no_match(args: argparse.Namespace) -> str:
    from .registry import TASKS, list_models

    kind = f"{args.task} model" if args.task else "model"
    message = f"No {kind}{' with published weights' if args.pretrained else ''} matches '{args.pattern}'."
    if args.task and not list_models(task=args.task):
        tasks = [task for task in TASKS if list_models(task=task)]
        message = f"No {args.task} model is registered yet. Tasks with models: {', '.join(tasks)}."
    return message


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a registered name, optionally name.tag")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _info(args: argparse.Namespace) -> None:
    from .registry import format_count, model_info

    info = model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for key in ("name", "family", "task", "description", "paper", "license"):
        print(f"{key:>13}: {info[key] or '-'}")
    print(f"{'params':>13}: {info['params']:,} ({format_count(info['params'])})")
    for name, spec in info["default_input"].items():
        print(f"{'input':>13}: {name} {spec}")
    for source in info["sources"]:
        metrics = ", ".join(f"{k} {v}" for k, v in source["metrics"].items())
        name = f"{info['name']}.{source['tag']}" if source["tag"] else info["name"]
        host = "" if source["host"] == "huggingface" else f", on {source['host']}"
        print(f"{'weights':>13}: {name} <- {source['hub_id']} ({source['format']}{host})"
              f"{' | ' + metrics if metrics else ''}")
        if source["preprocess"]:
            print(f"{'':>13}  preprocessing: " + ", ".join(f"{k} {v}" for k, v in source["preprocess"].items()))


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name_or_repo", help="a registered name[.tag] or a Hub repo id (owner/name)")
    parser.add_argument("--revision", help="branch, tag or commit (repo ids only)")


def _download(args: argparse.Namespace) -> None:
    from . import hub
    from .factory import fetch_source
    from .registry import get_family, split_name

    if "/" in args.name_or_repo:
        print(hub.download(args.name_or_repo, revision=args.revision))
        return
    entry, tag = split_name(args.name_or_repo)
    source = entry.source(tag)
    if source.parts:  # a model assembled from several repos (TinyGPT-V): each part's folder or file
        for part, path in get_family(entry.family).model_cls.fetch_parts(source.parts).items():
            print(f"{part}: {path}")
        return
    print(fetch_source(source))


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a published checkpoint: folder, Hub repo id, or a weights file with --model")
    parser.add_argument("--out", required=True, help="folder to write zoo's format to")
    parser.add_argument("--family", help="force the family instead of detecting it from the config")
    parser.add_argument("--model", help="registered name whose config a bare weights file fits")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo")


def _convert(args: argparse.Namespace) -> None:
    from .factory import create, from_pretrained
    from .registry import count_parameters, format_count

    if Path(args.src).is_file():
        if not args.model:
            raise ZooError(f"{args.src} is a bare weights file: say which model it is with --model NAME.")
        model = create(args.model, checkpoint_path=args.src)
    else:
        model = from_pretrained(args.src, family=args.family, revision=args.revision)
    out = model.save_pretrained(args.out)
    print(f"Wrote {model.family} model ({format_count(count_parameters(model))} params) to {out}")


def _push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder written by save_pretrained or `zoo convert`")
    parser.add_argument("repo_id", help="owner/name on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--message", default="Upload model with zoo", help="commit message")
    parser.add_argument("--revision", help="branch to push to")


def _push(args: argparse.Namespace) -> None:
    from .hub import push_folder

    print(push_folder(args.folder, args.repo_id, private=args.private, commit_message=args.message,
                      revision=args.revision))


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a registered name[.tag]")
    parser.add_argument("--prompt", help="text prompt or question")
    parser.add_argument("--negative-prompt", help="what a diffusion model should avoid")
    parser.add_argument("--image", action="append", default=[], help="input image path (repeatable)")
    parser.add_argument("--video", help="input video path")
    parser.add_argument("--volume", help="3D medical volume: a NIfTI file (.nii, .nii.gz) or a DICOM series folder")
    parser.add_argument("--think", action="store_true", help="ask for step-by-step reasoning and show it")
    parser.add_argument("--out", help="output file (image or video) for generative models")
    parser.add_argument("--checkpoint", help="a local model folder to load instead of the published weights")
    parser.add_argument("--steps", type=positive_int, help="denoising steps (default: the model's published setting)")
    parser.add_argument("--guidance", type=non_negative_float, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=positive_int)
    parser.add_argument("--width", type=positive_int)
    parser.add_argument("--frames", type=positive_int, help="video frames to generate")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256)
    parser.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the model's own)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def _run(args: argparse.Namespace) -> None:
    from .registry import get_family, split_name

    entry, _ = split_name(args.name)
    family = get_family(entry.family)
    runner = family.load_runner()
    if runner is None:
        raise ZooError(f"`zoo run` does not support the '{family.name}' family yet.")
    if args.checkpoint is None and not entry.sources:
        raise ZooError(f"'{entry.name}' has no published weights: train it (`zoo train`) or convert a checkpoint "
                       f"(`zoo convert`), then use --checkpoint DIR.")
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise InputError(f"--checkpoint {args.checkpoint}: no such file or folder.")
    args.device = resolve_device(args.device)
    runner(args.name, args)


def json_option(flag: str, value: str | None) -> dict[str, Any]:
    """The JSON mapping given to an option such as --model-options ({} when absent), or a ConfigError naming it."""
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{flag} takes a JSON mapping, got {value!r} ({error.msg})") from error
    if not isinstance(parsed, dict):
        raise ConfigError(f"{flag} takes a JSON mapping, got {value!r}")
    return parsed


def _lazy(module: str, function: str) -> Callable:
    """`module.function`, imported on first call, so that a command imports its stack only when it is used."""

    def call(*args: object) -> object:
        import importlib

        return getattr(importlib.import_module(module), function)(*args)

    return call


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command("list", "list registered models", _list_arguments, _list),
        Command("info", "show a model's params, paper, license, weights and default input", _info_arguments, _info),
        Command("download", "download published weights into the Hugging Face cache", _download_arguments, _download),
        Command("convert", "convert a published checkpoint to zoo's format", _convert_arguments, _convert),
        Command("push", "upload a saved model folder to the Hub", _push_arguments, _push),
        Command("run", "run a model on an image, video or prompt", _run_arguments, _run),
        Command("train", "train a model on a task (also under `accelerate launch -m zoo.cli train`)",
                _lazy("train.cli", "add_train_arguments"), _lazy("train.cli", "run_train")),
        Command("quickstart", "train smolvlm-tiny on shapes VQA on CPU and check it learned (a few minutes)",
                _lazy("train.cli", "add_quickstart_arguments"), _lazy("train.cli", "run_quickstart")),
        Command("eval", "evaluate a model on a dataset and write the metrics as JSON",
                _lazy("eval.cli", "add_eval_arguments"), _lazy("eval.cli", "run_eval_command")),
        Command("bench", "params, FLOPs, latency, throughput and memory, optionally against a reference "
                "implementation", _lazy("eval.cli", "add_bench_arguments"), _lazy("eval.cli", "run_bench_command")),
    )
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = ArgumentParser(prog="zoo", description="A zoo of small, fast multimodal models.")
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's parser, which has the options that were meant
        parser.exit(2, f"zoo {args.command}: error: unrecognized arguments: {' '.join(unknown)} "
                       f"(see `zoo {args.command} --help`)\n")
    try:
        return args.run(args) or 0
    except ZooError as error:
        message = " ".join(str(error).split())  # one line, whatever the message's layout
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
