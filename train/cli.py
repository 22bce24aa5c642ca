"""`zoo train MODEL --task T ...` and `zoo quickstart`: the argument parsers and runners used by `zoo.cli`.

Settings come from, lowest to highest priority: TrainConfig's defaults, the `--config FILE.yaml` mapping, then
the flags given on the command line. Under `accelerate launch -m zoo.cli train ...` every process runs this.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from zoo.cli import json_option
from zoo.errors import ConfigError

# flag -> (TrainConfig field, type, help); types: int, float, str, "bool" (store_true), "json" (a mapping)
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--task": ("task", str, "classification, restoration, vlm-sft or diffusion"),
    "--data": ("data", str, "an embedded dataset (shapes, shapes-vqa, shapes-captions, shapes-restoration, "
                            "shapes-sr), an image folder, a .jsonl file or hf:NAME (default: the task's)"),
    "--max-steps": ("max_steps", int, "optimizer steps to train (default 100)"),
    "--batch-size": ("batch_size", int, "samples per process and micro-step (default 8)"),
    "--grad-accum": ("gradient_accumulation_steps", int, "micro-steps per optimizer step (default 1)"),
    "--lr": ("lr", float, "peak learning rate (default 1e-3)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay on matrices (default 0)"),
    "--warmup-steps": ("warmup_steps", int, "linear warmup steps (default 0)"),
    "--schedule": ("schedule", str, "cosine (default), linear or constant after warmup"),
    "--max-grad-norm": ("max_grad_norm", float, "gradient clipping norm (default 1.0)"),
    "--mixed-precision": ("mixed_precision", str, "no (default), bf16 or fp16 (CUDA)"),
    "--seed": ("seed", int, "seed of the model init, the data order and the noise (default 0)"),
    "--output-dir": ("output_dir", str, "where checkpoints, metrics, the curve and the model go (default runs/train)"),
    "--save-every": ("save_every", int, "checkpoint every N steps (default: at the end only)"),
    "--keep-last": ("keep_last", int, "checkpoints to keep (default 2)"),
    "--eval-every": ("eval_every", int, "evaluate every N steps (default: at the end only)"),
    "--eval-samples": ("eval_samples", int, "evaluation samples (default 200)"),
    "--log-every": ("log_every", int, "steps per metrics.jsonl line (default 10)"),
    "--ema-decay": ("ema_decay", float, "keep an EMA of the weights (e.g. 0.999); it is what gets saved"),
    "--lora-rank": ("lora_rank", int, "train LoRA adapters of this rank on q/k/v/o projections (peft)"),
    "--lora-alpha": ("lora_alpha", float, "LoRA alpha (default: the rank)"),
    "--num-workers": ("num_workers", int, "data loader worker processes (default 0)"),
    "--report-to": ("report_to", str, "also log the metrics to experiment trackers (accelerate's): tensorboard, "
                                      "wandb, comet_ml, mlflow, ... or all; comma-separated"),
    "--push-to-hub": ("push_to_hub", str, "push the model, its card and curves to this Hub repo at the end"),
    "--model-options": ("model_options", "json", "config overrides as JSON, e.g. '{\"num_layers\": 4}'"),
    "--data-options": ("data_options", "json", "dataset options as JSON, e.g. '{\"num_samples\": 2000}'"),
    "--task-options": ("task_options", "json", "task options as JSON, e.g. '{\"timestep_shift\": 3}'"),
}
_SWITCHES: dict[str, tuple[str, str]] = {
    "--resume": ("resume", "continue the run in --output-dir from its latest checkpoint"),
    "--pretrained": ("pretrained", "start from the model's published weights"),
    "--push-every-save": ("push_every_save", "also push (in the background) at every checkpoint"),
    "--ema": ("ema", "shorthand for --ema-decay 0.999"),
    "--gradient-checkpointing": ("gradient_checkpointing", "recompute activations in the backward pass"),
    "--compile": ("compile", "torch.compile the model"),
    "--no-progress": ("no_progress", "no progress bar"),
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="a registered name (see `zoo list`) or a saved model folder")
    parser.add_argument("--config", help="a YAML file of TrainConfig settings; flags given here override it")
    for flag, (_, kind, text) in _FLAGS.items():
        parser.add_argument(flag, type=str if kind == "json" else kind, default=None, help=text)
    for flag, (_, text) in _SWITCHES.items():
        parser.add_argument(flag, action="store_true", default=None, help=text)


def config_from_args(args: argparse.Namespace):
    from .config import TrainConfig, read_yaml

    values: dict[str, Any] = read_yaml(args.config) if args.config else {}
    if args.model is not None:
        values["model"] = args.model
    for flag, (field, kind, _) in _FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        values[field] = json_option(flag, value) if kind == "json" else value
    for flag, (field, _) in _SWITCHES.items():
        if getattr(args, flag[2:].replace("-", "_")):
            if field == "ema":
                values.setdefault("ema_decay", 0.999)
            elif field == "no_progress":
                values["progress"] = False
            else:
                values[field] = True
    if values.get("model") is None or values.get("task") is None:
        raise ConfigError("zoo train needs a MODEL and --task (on the command line or in --config).")
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    from .loop import fit

    result = fit(config_from_args(args))
    if not _is_main():
        return 0
    print(f"Trained {result.config.model} ({result.config.task}) for {result.step} steps in {result.seconds:.0f} s.")
    if result.losses:
        print(f"  loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g}")
    for key, value in result.metrics.items():
        print(f"  eval {key}: {value:.4g}")
    print(f"  model: {result.model_dir}")
    print(f"  checkpoint: {result.checkpoint}")
    print(f"  metrics: {result.output_dir / 'metrics.jsonl'}, curve: {result.curve}")
    if result.push is not None and result.push.ok:
        print(f"  pushed: {result.push.url}")
    failures = result.push_failures
    if failures:
        last = failures[-1]
        print(
            f"zoo train: error: pushing to '{last.repo_id}' failed after {last.attempts} attempt(s): {last.error}. "
            f"The training finished and everything is saved locally; push it later with "
            f"`zoo push {result.model_dir} {last.repo_id}`.",
            file=sys.stderr,
        )
        return 1
    return 0


def _is_main() -> bool:
    from accelerate.state import PartialState

    return PartialState().is_main_process


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/quickstart", help="where the run and the model go")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the tuned budget)")
    parser.add_argument("--eval-samples", type=int, default=None, help="questions to evaluate on (default 200)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    report = quickstart(output_dir=args.output_dir, max_steps=args.max_steps, eval_samples=args.eval_samples,
                        progress=not args.no_progress)
    print(report.text())
    return 0 if report.passed else 1
