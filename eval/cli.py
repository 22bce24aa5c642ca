"""`zoo bench` and `zoo eval`: the argument parsers and runners that `zoo.cli` calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.cli import (
    int_at_least,
    json_option,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_device,
)
from zoo.errors import ConfigError, InputError

DEFAULT_BENCH_OUT = "runs/bench"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"


# ---------------------------------------------------------------------------------------------------
# zoo bench


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  zoo bench lowformer-b1 --compare timm --threads 2\n"
        "  zoo bench smolvlm-256m --compare transformers --new-tokens 32\n"
        "  zoo bench wan2.1-t2v-1.3b --compare diffusers --layers 2 --input hidden_states=16x5x16x24\n"
        "  zoo bench --all --tiny            every family's tiny model\n"
        "  zoo bench --micro ssm             layer micro-benchmarks (attention, ssm)\n"
        "  zoo bench --readme                rewrite the README's table from eval/results/*.json\n"
    )
    parser.add_argument("model", nargs="?", help="a registered name (see `zoo list`)")
    parser.add_argument("--compare", metavar="REFERENCE",
                        help="also run this reference implementation (transformers, diffusers, timm, wavemix) with "
                             "the same weights, alternating, and print the ratios")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    parser.add_argument("--input", nargs="+", metavar="SPEC",
                        help="input shapes without the batch, NAME=SHAPE (e.g. pixel_values=3x384x384) or a bare "
                             "SHAPE; or a preset: default (the registered input) or small (CPU-sized; the CPU default)")
    parser.add_argument("--layers", type=positive_int, help="blocks per trunk (e.g. 2 of Wan's 30), for both implementations")
    parser.add_argument("--model-options", help="config overrides as JSON, e.g. '{\"num_layers\": 4}'")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=positive_int, help="timed rounds (default: as many as fit in --budget, 5 to 50)")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--budget", type=positive_float, default=20.0, help="seconds of timed rounds to aim for (default 20)")
    parser.add_argument("--new-tokens", type=int_at_least(2), default=32,
                        help="tokens to generate for TPOT, at least 2 (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true", help="4-D weights and inputs in channels-last layout")
    parser.add_argument("--compile", action="store_true",
                        help="zoo decodes with generate(compile=True): a torch.compile'd step, compiled before timing")
    parser.add_argument("--all", action="store_true", help="every registered model (with --tiny: the *-tiny ones)")
    parser.add_argument("--tiny", action="store_true", help="with --all: only each family's *-tiny model")
    parser.add_argument("--out", default=None, help=f"folder for the JSON, CSV and plots (default {DEFAULT_BENCH_OUT})")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--token-reduction", metavar="SPEC",
                        help="a VLM's visual token reduction, METHOD[:BUDGET][:layer=K][:threshold=T]: pool, bilinear, "
                             "attention, merge, frame_difference or fastv, e.g. attention:0.25 or fastv:0.5:layer=2")
    parser.add_argument("--micro", metavar="NAME", help="run a layer micro-benchmark instead: attention or ssm")
    parser.add_argument("--readme", nargs="?", const=str(README), metavar="README",
                        help="rewrite the README's bench table from --results (after the run, if a model is given)")
    parser.add_argument("--results", nargs="+", metavar="PATH",
                        help=f"result JSON files or folders for --readme (default {RESULTS_DIR.relative_to(README.parent)})")


def run_bench_command(args: argparse.Namespace) -> int:
    from .bench import (
        BenchOptions,
        fits_in_memory,
        resolve_dtype,
        run_many,
        tiny_models,
    )
    from .references import references_for
    from .report import (
        format_record,
        load_records,
        run_id,
        update_readme,
        write_results,
    )

    if args.micro:
        from .benchmarks import run_micro

        run_micro(args.micro, ["--threads", str(args.threads)] if args.threads else [])
        return 0
    if args.model and args.all:
        raise ConfigError("Give a model name or --all, not both.")
    if args.tiny and not args.all:
        raise ConfigError("--tiny selects models for --all; for one model, give its name (e.g. wan-tiny).")
    if not args.model and not args.all:
        if args.readme:
            return _readme(args, load_records, update_readme)
        raise ConfigError("Give a model to benchmark (see `zoo list`), --all, --micro NAME or --readme.")

    from zoo.registry import get_entry, list_models

    device = resolve_device(args.device)
    options = BenchOptions(
        model=args.model or "", compare=args.compare, device=device, dtype=args.dtype, batch=args.batch,
        input=args.input, layers=args.layers, model_options=json_option("--model-options", args.model_options),
        threads=args.threads, repeats=args.repeats, warmup=args.warmup, budget_s=args.budget,
        new_tokens=args.new_tokens, seed=args.seed, channels_last=args.channels_last, compile=args.compile,
        flops=not args.no_flops, memory=not args.no_memory, token_reduction=args.token_reduction,
    )
    if args.model:
        names = [args.model]
    else:
        names = tiny_models() if args.tiny else list_models()
        if args.compare:
            names = [n for n in names if args.compare in references_for(get_entry(n).family)]
            if not names:
                raise ConfigError(f"No {'tiny ' if args.tiny else ''}model has the reference '{args.compare}'.")
        if not args.tiny:
            fitting = []
            for name in names:
                fits, params = fits_in_memory(name, device, resolve_dtype(args.dtype))
                if fits:
                    fitting.append(name)
                else:
                    print(f"zoo bench: skipping {name}: its {params / 1e9:.1f}B parameters would take more than half "
                          f"of the {device} memory", file=sys.stderr)
            names = fitting
    records, failures = run_many(names, options, log=_progress, keep_going=args.all)
    for record in records:
        print(format_record(record), end="\n\n", flush=True)
    for name, error in failures:
        print(f"zoo bench: {name} failed: {error}", file=sys.stderr)
    if records:
        paths = write_results(records, args.out or DEFAULT_BENCH_OUT, run_id(records, args.all),
                              plots=not args.no_plots)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.readme:
        _readme(args, load_records, update_readme)
    return 1 if failures else 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _readme(args: argparse.Namespace, load_records, update_readme) -> int:
    """Rewrite the README's table from the result files; with one results folder, also its summary plots."""
    from .report import write_plots

    sources = [Path(p) for p in (args.results or [RESULTS_DIR])]
    records = load_records(sources)
    if not records:
        raise InputError(f"No zoo bench results in {', '.join(map(str, sources))}: the README table is left as it is.")
    path = update_readme(args.readme, records)
    print(f"rewrote the bench table of {path} from {len(records)} result(s)")
    if records and len(sources) == 1 and sources[0].is_dir() and not args.no_plots:
        plots = write_plots(records, sources[0], "summary")
        print("wrote " + ", ".join(str(p) for p in plots.values()))
    return 0


# ---------------------------------------------------------------------------------------------------
# zoo eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a registered name (see `zoo list`) or a saved model folder")
    parser.add_argument("--task", help="classification, restoration, vlm-sft or diffusion (default: the model's)")
    parser.add_argument("--data", help="an embedded dataset (shapes, shapes-vqa, shapes-vqa-small, shapes-captions, "
                                       "shapes-restoration, shapes-sr), an image folder, a .jsonl file or hf:NAME "
                                       "(default: the task's)")
    parser.add_argument("--checkpoint", help="a saved model folder or a weights file to load into the named model")
    parser.add_argument("--pretrained", action="store_true", help="evaluate the model's published weights")
    parser.add_argument("--split", default="eval", help="eval (default) or train")
    parser.add_argument("--num-samples", type=positive_int, default=200, help="evaluate at most this many samples (default 200)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the embedded datasets (default 0)")
    parser.add_argument("--crop-border", type=non_negative_int, help="restoration: pixels cropped on each side (default: the "
                                                        "dataset's super-resolution scale, else 0)")
    parser.add_argument("--data-options", help="dataset options as JSON, e.g. '{\"image_size\": 64}'")
    parser.add_argument("--task-options", help="task options as JSON, e.g. '{\"max_new_tokens\": 8}'")
    parser.add_argument("--model-options", help="config overrides as JSON (random or --checkpoint weights only)")
    parser.add_argument("--token-reduction", nargs="+", metavar="SPEC",
                        help="a VLM: also score each visual token reduction METHOD[:BUDGET][:layer=K] (as zoo bench "
                             "reads it, e.g. attention:0.25 merge:0.1 fastv:0.5:layer=1) on the same questions, with "
                             "its prefill FLOPs and TTFT beside the unreduced model's")
    parser.add_argument("--ttft-repeats", type=positive_int, default=5,
                        help="with --token-reduction: timed rounds per setting (default 5)")
    parser.add_argument("--out", help="the JSON file to write (default runs/eval/MODEL-TASK-DATA.json)")


def run_eval_command(args: argparse.Namespace) -> int:
    from .evaluate import EvalOptions, format_result, run_eval, write_result

    options = EvalOptions(
        model=args.model, task=args.task, data=args.data, checkpoint=args.checkpoint, pretrained=args.pretrained,
        split=args.split, num_samples=args.num_samples, batch_size=args.batch_size, device=resolve_device(args.device),
        seed=args.seed, crop_border=args.crop_border, data_options=json_option("--data-options", args.data_options),
        task_options=json_option("--task-options", args.task_options),
        model_options=json_option("--model-options", args.model_options),
        token_reduction=tuple(args.token_reduction or ()), ttft_repeats=args.ttft_repeats,
    )
    result = run_eval(options)
    print(format_result(result))
    print(f"wrote {write_result(result, args.out)}")
    return 0


__all__ = ["add_bench_arguments", "add_eval_arguments", "run_bench_command", "run_eval_command"]
