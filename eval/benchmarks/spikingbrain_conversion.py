"""The SpikingBrain conversion recipe on tiny configs, on the CPU: how much of a Qwen2 model's loss a converted model
recovers with a short continued training.

1. train a tiny Qwen2 on the procedural-text corpus (train/configs/spikingbrain-qwen2-tiny-teacher.yaml);
2. convert it (`convert_from_qwen2`: layers 1 and 3 SWA with a 32-key window, 0 and 2 GLA with new gates) and
   evaluate it as it is;
3. continue training the converted model for a quarter of the teacher's steps
   (train/configs/spikingbrain-tiny-continue.yaml);
4. for comparison, train the same SpikingBrain architecture from scratch for those steps.

Eval loss is the mean next-token cross-entropy (bytes) over the same 64 held-out paragraphs.

    python -m eval.benchmarks.spikingbrain_conversion [--out eval/results/spikingbrain-conversion.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from train import TrainConfig, fit
from train.tasks import LanguageModelingTask, ModelSource
from zoo.backbones.spikingbrain import convert_from_qwen2
from zoo.data import load_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"
RESULTS = Path(__file__).resolve().parents[1] / "results"


def eval_loss(model: torch.nn.Module, samples: int = 64) -> float:
    task = LanguageModelingTask()
    task.setup(model, None, ModelSource("demo"))
    data = load_dataset("procedural-text", "text", "eval", eval_samples=samples)
    return task.evaluate(model, data)["loss"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/spikingbrain-demo"))
    parser.add_argument("--out", type=Path, default=RESULTS / "spikingbrain-conversion.json")
    args = parser.parse_args(argv)
    quiet = {"progress": False}
    teacher = fit(TrainConfig.from_yaml(CONFIGS / "spikingbrain-qwen2-tiny-teacher.yaml",
                                        output_dir=str(args.runs / "qwen2"), **quiet))
    converted = convert_from_qwen2(teacher.model.float().cpu(), attn_layers=(1, 3), sliding_window=32).eval()
    converted.save_pretrained(args.runs / "converted")
    continued = fit(TrainConfig.from_yaml(CONFIGS / "spikingbrain-tiny-continue.yaml",
                                          model=str(args.runs / "converted"), output_dir=str(args.runs / "continued"),
                                          **quiet))
    steps = continued.config.max_steps
    scratch = fit(TrainConfig.from_yaml(CONFIGS / "spikingbrain-tiny-continue.yaml", model="spikingbrain-tiny",
                                        model_options={"hidden_size": 128, "intermediate_size": 256, "vocab_size": 320,
                                                       "num_attention_heads": 4, "num_key_value_heads": 2,
                                                       "attn_layers": [1, 3], "sliding_window": 32},
                                        lr=3e-3, output_dir=str(args.runs / "scratch"), **quiet))
    results = {
        "qwen2_teacher": {"steps": teacher.config.max_steps, "eval_loss": eval_loss(teacher.model)},
        "converted_before_training": {"eval_loss": eval_loss(converted)},
        "converted_continued": {"steps": steps, "eval_loss": eval_loss(continued.model)},
        "spikingbrain_from_scratch": {"steps": steps, "eval_loss": eval_loss(scratch.model)},
        "initial_loss_uniform_bytes": float(torch.log(torch.tensor(320.0))),
    }
    gap = results["converted_before_training"]["eval_loss"] - results["qwen2_teacher"]["eval_loss"]
    left = results["converted_continued"]["eval_loss"] - results["qwen2_teacher"]["eval_loss"]
    results["gap_recovered"] = 1 - left / gap if gap > 0 else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for name, value in results.items():
        print(f"{name:28s} {value}")


if __name__ == "__main__":
    main()
