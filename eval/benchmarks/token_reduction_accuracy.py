"""What each training-free visual token reduction costs in accuracy, against the prefill FLOPs it saves.

    flock /tmp/zoo-heavy.lock python -m eval.benchmarks.token_reduction_accuracy --threads 1

For two families (SmolVLM: 128 px images as 4 tiles + a global tile, 16 tokens each, 80 in all; Hulu-Med: the image
resized by its processor to 16 x 16 = 256 tokens), a tiny model is trained from scratch with `zoo train` on
`shapes-vqa-small` (small shapes whose kind, colour, position and count the answers ask), then
`zoo eval --token-reduction` scores every method at budgets 0.5, 0.25 and 0.1 of the visual tokens beside the
unreduced model (budget 1.0) on the same held-out questions: exact match, prefill FLOPs (FlopCounterMode, 2 x MAC,
mean per question) and TTFT (median, every setting timed in alternation). The JSON goes to eval/results/token_reduction_accuracy.json, with a text table beside it, and
the plot of accuracy against prefill FLOPs (one curve per method and family) to
eval/results/token_reduction_accuracy.png. The trained models stay in --runs (not committed); a model already
trained there with the same settings is reused unless --retrain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from eval.evaluate import EvalOptions, run_eval
from eval.system import machine_info

RESULTS = Path(__file__).resolve().parent.parent / "results"
BUDGETS = (1.0, 0.5, 0.25, 0.1)
DATA = "shapes-vqa-small"
IMAGE_SIZE = 128

# `zoo train` settings per family: the model, its config overrides and the task options that make its visual tokens
FAMILIES: dict[str, dict[str, Any]] = {
    "smolvlm": dict(
        model="smolvlm-tiny", model_options={"scale_factor": 2},
        task_options={"do_image_splitting": True, "longest_edge": IMAGE_SIZE},
        methods=("pool", "bilinear", "attention", "merge", "fastv"), fastv_layer=1, steps=1500,
    ),
    "hulumed": dict(
        model="hulu-med-tiny", model_options={}, task_options={},
        methods=("pool", "bilinear", "attention", "merge", "fastv"), fastv_layer=1, steps=1200,
    ),
}
ANSWER_TOKENS = 14  # "bottom right" and the end token, in bytes
TRAIN: dict[str, Any] = dict(batch_size=32, lr=3e-3, warmup_steps=50, num_workers=1,
                             data_options={"num_samples": 12000, "image_size": IMAGE_SIZE, "cache": True})


def train_args(family: str, out: Path, seed: int, steps: int) -> list[str]:
    """The `zoo train` command line of a family's model."""
    spec = FAMILIES[family]
    return [
        "train", spec["model"], "--task", "vlm-sft", "--data", DATA, "--max-steps", str(steps),
        "--batch-size", str(TRAIN["batch_size"]), "--lr", str(TRAIN["lr"]), "--warmup-steps",
        str(TRAIN["warmup_steps"]), "--seed", str(seed), "--output-dir", str(out), "--eval-samples", "100",
        "--num-workers", str(TRAIN["num_workers"]), "--log-every", "50", "--no-progress",
        "--model-options", json.dumps(spec["model_options"]), "--data-options", json.dumps(TRAIN["data_options"]),
        "--task-options", json.dumps({**spec["task_options"], "max_new_tokens": ANSWER_TOKENS}),
    ]


def train(family: str, runs: Path, seed: int, steps: int, retrain: bool) -> tuple[Path, float | None]:
    """The folder of the family's trained model (trained now unless the same run is there) and the seconds spent."""
    from zoo.cli import main

    out = runs / family
    args = train_args(family, out, seed, steps)
    stamp = out / "zoo-train-args.json"
    if not retrain and (out / "model" / "model.safetensors").is_file() and stamp.is_file() \
            and json.loads(stamp.read_text()) == args:
        return out / "model", None
    started = time.perf_counter()
    if main(args) != 0:
        raise SystemExit(f"zoo {' '.join(args)} failed")
    stamp.write_text(json.dumps(args) + "\n")
    return out / "model", time.perf_counter() - started


def specs(family: str) -> list[str]:
    spec = FAMILIES[family]
    out = []
    for method in spec["methods"]:
        layer = f":layer={spec['fastv_layer']}" if method == "fastv" else ""
        out += [f"{method}:{budget}{layer}" for budget in BUDGETS if budget < 1]
    return out


def evaluate(family: str, model_dir: Path, questions: int, seed: int, repeats: int) -> dict[str, Any]:
    options = EvalOptions(
        str(model_dir), data=DATA, num_samples=questions, batch_size=50, device="cpu", seed=seed,
        data_options={"image_size": IMAGE_SIZE}, task_options={"max_new_tokens": ANSWER_TOKENS},
        token_reduction=tuple(specs(family)), ttft_repeats=repeats,
    )
    return run_eval(options)


def curves(result: dict[str, Any]) -> dict[str, list[tuple[float, float, float]]]:
    """Per method: (budget, prefill GFLOPs, exact match) from budget 1.0 (the unreduced model) down."""
    rows = result["token_reduction"]
    none = rows["none"]
    out: dict[str, list[tuple[float, float, float]]] = {}
    for name, row in rows.items():
        if name == "none":
            continue
        method, budget = name.split(":")[:2]
        out.setdefault(method, [(1.0, none["prefill_flops"] / 1e9, none["metrics"]["exact_match"])])
        out[method].append((float(budget), row["prefill_flops"] / 1e9, row["metrics"]["exact_match"]))
    return out


def best_per_budget(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each budget below 1: the method with the highest exact match and its drop from the unreduced one."""
    base = result["token_reduction"]["none"]["metrics"]["exact_match"]
    best: dict[str, dict[str, Any]] = {}
    for method, points in curves(result).items():
        for budget, gflops, accuracy in points[1:]:
            key = str(budget)
            if key not in best or accuracy > best[key]["exact_match"]:
                best[key] = {"method": method, "exact_match": accuracy, "drop": base - accuracy, "gflops": gflops}
    return best


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (family, result) in zip(axes[0], results.items()):
        for method, points in curves(result).items():
            ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=method)
            for budget, gflops, accuracy in points[1:]:
                ax.annotate(f"{budget:g}", (gflops, accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        chance = result["chance"]
        ax.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.2f})")
        ax.set_title(f"{family} ({result['model_name']}, {result['num_samples']} questions)")
        ax.set_xlabel("prefill GFLOPs per question")
        ax.set_ylabel("exact match")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Visual token reduction on {DATA}: exact match against prefill FLOPs (points: budgets)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_result(family: str, result: dict[str, Any]) -> str:
    lines = [f"{family}: {result['model_name']} trained on {DATA} ({result['train']}), {result['num_samples']} "
             f"held-out questions (seed {result['seed']}), chance {result['chance']:.3f}",
             f"{'setting':22s} {'exact':>6s} {'color':>6s} {'shape':>6s} {'count':>6s} {'posit.':>6s} "
             f"{'GFLOP':>8s} {'x none':>7s} {'TTFT ms':>8s} {'x none':>7s}"]
    for name, row in result["token_reduction"].items():
        m = row["metrics"]
        per_type = " ".join(f"{m.get('vqa_exact_match/' + kind, float('nan')):6.3f}"
                            for kind in ("color", "shape", "count", "position"))
        lines.append(f"{name:22s} {m['exact_match']:6.3f} {per_type} {row['prefill_flops'] / 1e9:8.4f} "
                     f"{row['flops_vs_none']:7.3f} {row['ttft_p50_ms']:8.1f} {row['ttft_vs_none']:7.3f}")
    lines.append("best per budget: " + "; ".join(
        f"{budget}: {b['method']} {b['exact_match']:.3f} ({-b['drop']:+.3f})" for budget, b in result["best"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--questions", type=int, default=200, help="held-out questions per setting (default 200)")
    parser.add_argument("--steps", type=int, help="training steps per model (default: the family's, 1200-1500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training run and of the data (default 0)")
    parser.add_argument("--repeats", type=int, default=5, help="TTFT rounds per setting (default 5)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--runs", type=Path, default=Path("runs/token_reduction_accuracy"),
                        help="where the trained models go (reused when trained with the same settings)")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "token_reduction_accuracy.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from zoo.data.shapes import SmallShapesVQA

    results: dict[str, dict[str, Any]] = {}
    start_info = machine_info("cpu")
    for family in args.families:
        steps = args.steps or FAMILIES[family]["steps"]
        model_dir, seconds = train(family, args.runs, args.seed, steps, args.retrain)
        print(f"{family}: model {model_dir} ({'trained in %.0f s' % seconds if seconds else 'reused'})", flush=True)
        started = time.perf_counter()
        result = evaluate(family, model_dir, args.questions, args.seed, args.repeats)
        result.update(model_name=FAMILIES[family]["model"], seed=args.seed,
                      train=f"{steps} steps x {TRAIN['batch_size']}, lr {TRAIN['lr']}, seed {args.seed}",
                      train_seconds=seconds, eval_seconds=time.perf_counter() - started,
                      chance=SmallShapesVQA.chance_accuracy()["overall"],
                      zoo_train=" ".join(train_args(family, args.runs / family, args.seed, steps)))
        result["best"] = best_per_budget(result)
        results[family] = result
        print(format_result(family, result), end="\n\n", flush=True)
        write(args.out, results, start_info)  # after each family: a run cut short keeps what it measured
    print(f"wrote {args.out}, {args.out.with_suffix('.txt')}, {args.out.with_suffix('.png')}")
    return 0


def write(out: Path, results: dict[str, dict[str, Any]], start_info: dict[str, Any]) -> None:
    record = {"machine_start": start_info, "machine_end": machine_info("cpu"), "threads": torch.get_num_threads(),
              "data": DATA, "image_size": IMAGE_SIZE, "budgets": BUDGETS, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".txt").write_text("\n\n".join(format_result(f, r) for f, r in results.items()) + "\n")
    plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    sys.exit(main())
