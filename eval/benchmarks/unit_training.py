"""UNIT's training on CPU: unit-tiny pretrained on the embedded shapes, then `unit-pretrain` with the residual vision
decoder (the default), without a vision decoder, and with a plain MLP vision decoder. Prints and writes each run's
evaluations (OCR exact match and CER on rendered documents, feature retention on natural images).

    flock /tmp/zoo-heavy.lock python -m eval.benchmarks.unit_training --out eval/results/unit-tiny-training.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import zoo
from train import TrainConfig, fit
from train.unit import pretrain_on_shapes

DECODER = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 512}
RUNS = {"residual vision decoder": (1.0, True), "no vision decoder": (0.0, True), "plain MLP vision decoder": (1.0, False)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocabulary", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="unit-training-"))
    torch.manual_seed(0)
    start = zoo.create("unit-tiny")
    results = {"shapes_probe_accuracy": pretrain_on_shapes(start, steps=args.shape_steps), "settings": vars(args) | {
        "out": str(args.out), "batch_size": 32, "image_size": 32, "document_size": 64, "max_text_length": 16,
        "decoder": DECODER, "eval_samples": 128}}
    start.save_pretrained(work / "start")
    for label, (weight, residual) in RUNS.items():
        began = time.perf_counter()
        output = work / label.replace(" ", "-")
        fit(TrainConfig(str(work / "start"), task="unit-pretrain", output_dir=str(output), max_steps=args.steps,
                        batch_size=32, lr=args.lr, warmup_steps=20, eval_every=args.steps // 4, eval_samples=128,
                        progress=False, data_options={"num_samples": 50000, "vocabulary_size": args.vocabulary},
                        task_options={"image_size": 32, "document_size": 64, "max_text_length": 16,
                                      "vision_weight": weight, "vision_residual": residual, "decoder": DECODER}))
        evals = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
        results[label] = {"evals": evals, "seconds": time.perf_counter() - began}
        for record in evals:
            print(f"{label:26s} step {record['step']:5d}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in record["eval"].items()))
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
