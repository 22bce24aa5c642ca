"""`zoo eval`: a model on a dataset, scored with the metrics of `eval.metrics`, written as JSON.

    from eval.evaluate import EvalOptions, run_eval
    result = run_eval(EvalOptions("lowformer-tiny", task="classification", data="shapes", checkpoint="runs/lf/model"))

The tasks (what a batch is, how the model is called), the datasets (embedded ones and the user formats: image
folders, .jsonl files, Hugging Face datasets) and the model loading are those of `zoo train` (`train.tasks`,
`zoo.data`), so a model is evaluated on exactly what it was trained on. This module adds the metrics:

    classification   top-1 and top-5 accuracy, cross-entropy
    restoration      PSNR and SSIM on RGB and on the BT.601 Y channel, with a border crop (default: the dataset's
                     super-resolution scale, else 0), L1
    vlm-sft          strict exact match (the training metric), VQA exact match (normalised answers) and ANLS,
                     overall and per question type
    diffusion        the task's denoising loss at fixed noise levels (Fréchet distance and CLIP score need
                     generated images and a feature extractor: see eval.metrics)

The JSON result holds the metrics, what was evaluated and how, and `card_data` ({"results": ...}) that
`model.save_pretrained(folder, card_data=...)` renders into the model card's Results table.

With `token_reduction` (specs as `zoo bench --token-reduction` reads them, e.g. "attention:0.25", "fastv:0.5:layer=1")
a VLM is scored once unreduced ("none") and once per setting on the same questions; each setting also gets its
prefill FLOPs (`eval.bench.count_call_flops` on answering the first questions one at a time with one new token, mean
per question) and TTFT (the same calls, every setting timed in alternation with the others; medians), under
"token_reduction" in the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from zoo.errors import ConfigError, InputError, ZooError

from . import metrics

DEFAULT_TASKS = {"backbone": "classification", "restoration": "restoration", "vlm": "vlm-sft", "diffusion": "diffusion",
                 "language": "language"}


@dataclasses.dataclass
class EvalOptions:
    """`model`: a registered name or a saved model folder; `checkpoint`: a folder or weights file for a registered
    name; `pretrained`: the name's published weights. Without either, a registered name has random weights."""

    model: str
    task: str | None = None
    data: str | None = None
    checkpoint: str | None = None
    pretrained: bool = False
    split: str = "eval"
    num_samples: int = 200
    batch_size: int = 32
    device: str | None = None
    dtype: str | None = None
    seed: int = 0
    crop_border: int | None = None
    data_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    token_reduction: tuple[str, ...] = ()  # VLM settings scored beside "none" (see the module docstring)
    flop_samples: int = 4  # questions whose prefill FLOPs and TTFT are measured per setting
    ttft_repeats: int = 5  # timed rounds of TTFT per setting (after one untimed round)


def _resolve(options: EvalOptions):
    """(registry entry or None, family name, folder or None, config of the model)."""
    from zoo.hub import folder_config
    from zoo.registry import get_entry, get_family

    folder = None
    for candidate in (options.checkpoint, options.model):
        if candidate and Path(candidate).expanduser().is_dir():
            folder = Path(candidate).expanduser()
            break
    entry = None
    if folder is None or folder != Path(options.model).expanduser():
        entry = get_entry(options.model)
    if folder is not None:
        values, _ = folder_config(folder)
        family = values.get("zoo_family")
        if family is None:
            raise ConfigError(f"{folder} is not a zoo model folder (no zoo_family in config.json); convert it with "
                              f"`zoo convert` first.")
        if entry is None and values.get("zoo_name"):
            try:
                entry = get_entry(values["zoo_name"])
            except KeyError:
                entry = None
        config = get_family(family).config_cls.from_dict({k: v for k, v in values.items() if not k.startswith("zoo_")})
        return entry, family, folder, config
    return entry, entry.family, None, entry.config.replace(**options.model_options)


def _load_model(options: EvalOptions, entry, folder: Path | None, task, dataset) -> tuple[torch.nn.Module, str]:
    import zoo

    if options.pretrained and (options.checkpoint or folder is not None):
        raise ConfigError("Pass either --pretrained (the published weights) or --checkpoint, not both.")
    if folder is not None:
        return zoo.from_pretrained(folder, dtype=options.dtype or torch.float32), f"checkpoint {folder}"
    if options.checkpoint:
        if not Path(options.checkpoint).expanduser().is_file():
            raise InputError(f"--checkpoint {options.checkpoint} is neither a model folder nor a weights file")
        return zoo.create(options.model, checkpoint_path=options.checkpoint, **options.model_options), \
            f"checkpoint {options.checkpoint}"
    if options.pretrained:
        return zoo.create(options.model, pretrained=True), f"published ({entry.source(None).hub_id})"
    overrides = {**task.model_overrides(entry, dataset, False), **options.model_options}
    return zoo.create(options.model, **overrides), "random (no checkpoint given)"


def run_eval(options: EvalOptions) -> dict[str, Any]:
    from train.tasks import ModelSource, get_task
    from zoo.data import load_dataset

    entry, family, folder, config = _resolve(options)
    task_name = options.task or (DEFAULT_TASKS.get(entry.task) if entry is not None else None)
    if task_name is None:
        raise ConfigError("Say which task to evaluate with --task (classification, restoration, vlm-sft, diffusion).")
    task = get_task(task_name, **options.task_options)
    task.check_entry(entry if folder is None else None, family)
    if options.split not in ("eval", "train"):
        raise ConfigError(f"--split takes eval or train, got {options.split!r}")
    data = options.data or task.default_data
    data_options = {**task.data_defaults(entry, config), **options.data_options}
    data_options.setdefault("eval_samples" if options.split == "eval" else "num_samples", options.num_samples)
    dataset = load_dataset(data, task.data_kind, options.split, seed=options.seed, **data_options)
    if dataset is None:
        raise InputError(f"Dataset '{data}' has no evaluation split; pass --split train, or for a .jsonl file "
                         f"--data-options '{{\"eval_data\": \"eval.jsonl\"}}' (or give the eval file as --data).")
    if len(dataset) > options.num_samples:
        dataset = torch.utils.data.Subset(dataset, range(options.num_samples))
    if len(dataset) == 0:
        raise InputError(f"Dataset '{data}' ({options.split} split) is empty.")

    model, weights = _load_model(options, entry, folder, task, dataset)
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    hub_id = entry.source(None).hub_id if options.pretrained and entry is not None else None
    task.setup(model, dataset, ModelSource(options.model, entry, folder, hub_id,
                                           pretrained=options.pretrained or folder is not None or bool(options.checkpoint)))
    scorer = SCORERS.get(task.name, _score_with_task)
    reductions = _token_reductions(options, task)
    with torch.no_grad():
        scores, conventions = scorer(task, model, dataset, options, device)
        settings = _score_token_reductions(scorer, task, model, dataset, options, device, reductions, scores) \
            if reductions else None
    result = {
        "model": getattr(model, "zoo_name", None) or options.model,
        "family": family,
        "weights": weights,
        "task": task.name,
        "data": data,
        "split": options.split,
        "num_samples": len(dataset),
        "metrics": scores,
        "conventions": conventions,
        "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "card_data": {"results": {f"{key} ({data})": round(value, 4) for key, value in scores.items()}},
    }
    if settings is not None:
        result["token_reduction"] = settings
        result["conventions"]["token_reduction"] = (
            f"each setting scored on the same {len(dataset)} questions; prefill_flops: FlopCounterMode (2 x MAC) on "
            f"answering the first {min(options.flop_samples, len(dataset))} questions one at a time with 1 new token, "
            f"mean per question; ttft_p50_ms: median wall time of those calls ({options.ttft_repeats} rounds, every "
            "setting in alternation, processor included)")
    return result


def _token_reductions(options: EvalOptions, task) -> dict[str, Any]:
    """The settings of `options.token_reduction`, by their specs; checked before the model is scored."""
    from zoo.vlm.token_reduction import TokenReduction

    if not options.token_reduction:
        return {}
    if not hasattr(task, "token_reduction"):
        raise ConfigError(f"--token-reduction applies to vision-language tasks (vlm-sft), not '{task.name}'")
    if getattr(task, "token_reduction", None) is not None:
        raise ConfigError("give the token reductions with --token-reduction only, not also in --task-options")
    settings: dict[str, Any] = {}
    for spec in options.token_reduction:
        reduction = TokenReduction.parse(spec)
        settings[reduction.describe()] = reduction
    return settings


@contextlib.contextmanager
def _reduced(task, reduction):
    """The task answers with `reduction` while open."""
    task.token_reduction = reduction
    try:
        yield
    finally:
        task.token_reduction = None


def _score_token_reductions(scorer, task, model, dataset, options, device, reductions, unreduced):
    """{"none" | spec: {"metrics", "prefill_flops", "ttft_p50_ms", ...}} for the unreduced model and each setting."""
    from .bench import count_call_flops
    from .timing import alternate

    settings = {"none": None, **reductions}
    rows: dict[str, dict[str, Any]] = {"none": {"metrics": unreduced}}
    for name, reduction in reductions.items():
        with _reduced(task, reduction):
            rows[name] = {"metrics": scorer(task, model, dataset, options, device)[0]}
    samples = [dataset[i] for i in range(min(options.flop_samples, len(dataset)))]

    def prefill(reduction):
        def call():
            with _reduced(task, reduction):
                for sample in samples:
                    task.answer(model, [sample["image"]], [sample["question"]], max_new_tokens=1)
        return call

    calls = {name: prefill(reduction) for name, reduction in settings.items()}
    for name in settings:
        rows[name]["prefill_flops"] = count_call_flops(model, calls[name]) / len(samples)
    timed = alternate(calls, repeats=options.ttft_repeats, warmup=1, device=device)
    for name, row in rows.items():
        row["ttft_p50_ms"] = timed[name].p50 * 1e3 / len(samples)
        row["flops_vs_none"] = row["prefill_flops"] / rows["none"]["prefill_flops"]
        row["ttft_vs_none"] = row["ttft_p50_ms"] / rows["none"]["ttft_p50_ms"]
    return rows


# ---------------------------------------------------------------------------------------------------
# scorers: (task, model, dataset, options, device) -> (metrics, conventions)


def _score_classification(task, model, dataset, options, device):
    logits, labels = [], []
    for batch in task.batches(dataset, options.batch_size, device):
        logits.append(task.forward(model, batch).float().cpu())
        labels.append(batch["labels"].cpu())
    logits, labels = torch.cat(logits), torch.cat(labels)
    scores = metrics.topk_accuracy(logits, labels, ks=(1, 5))
    scores["loss"] = float(torch.nn.functional.cross_entropy(logits, labels))
    return scores, {"accuracy": "fraction of samples whose label is among the k largest logits"}


def _score_restoration(task, model, dataset, options, device):
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    crop = options.crop_border if options.crop_border is not None else int(getattr(base, "scale", 1) or 1)
    crop = 0 if crop == 1 and options.crop_border is None else crop
    values: dict[str, list[float]] = {}
    lpips_note = "alex v0.1 on RGB in [-1, 1], no crop"
    for batch in task.batches(dataset, options.batch_size, device):
        restored = task.forward(model, batch).float().clamp(0, 1).cpu()
        clean = batch["clean"].float().cpu()
        per_image = {
            "psnr": metrics.psnr(restored, clean, crop_border=crop),
            "psnr_y": metrics.psnr(restored, clean, crop_border=crop, y_channel=True),
            "l1": (restored - clean).abs().flatten(1).mean(1),
        }
        if min(clean.shape[-2:]) - 2 * crop >= 11:
            per_image["ssim"] = metrics.ssim(restored, clean, crop_border=crop)
            per_image["ssim_y"] = metrics.ssim(restored, clean, crop_border=crop, y_channel=True)
        if lpips_note.startswith("alex") and clean.shape[1] == 3:
            try:
                per_image["lpips"] = metrics.lpips(restored, clean)
            except ZooError as error:  # not installed, or its backbone's weights cannot be had: no LPIPS
                lpips_note = f"not computed: {error}"
        for key, value in per_image.items():
            values.setdefault(key, []).extend(value.tolist())
    scores = {key: statistics.fmean(v) for key, v in values.items()}
    return scores, {"images": "outputs clamped to [0, 1], not rounded to 8 bits", "crop_border": crop,
                    "y_channel": "ITU-R BT.601 studio swing (MATLAB rgb2ycbcr, BasicSR)",
                    "ssim": "Gaussian 11x11, sigma 1.5, valid window positions", "lpips": lpips_note,
                    "average": "mean over images"}


def _score_vlm(task, model, dataset, options, device):
    predictions, references, types = [], [], []
    for start in range(0, len(dataset), options.batch_size):
        samples = [dataset[i] for i in range(start, min(start + options.batch_size, len(dataset)))]
        predictions += task.answer(model, [s["image"] for s in samples], [s["question"] for s in samples])
        references += [s.get("answers") or [s["answer"]] for s in samples]
        types += [s.get("type") for s in samples]
    scores = {
        "exact_match": statistics.fmean(p == refs[0].strip() for p, refs in zip(predictions, references)),
        "vqa_exact_match": metrics.vqa_exact_match(predictions, references),
        "anls": metrics.anls(predictions, references),
    }
    for kind in sorted({t for t in types if t is not None}):
        chosen = [i for i, t in enumerate(types) if t == kind]
        scores[f"vqa_exact_match/{kind}"] = metrics.vqa_exact_match([predictions[i] for i in chosen],
                                                                    [references[i] for i in chosen])
    return scores, {"answers": "greedy, up to the end-of-utterance token, stripped",
                    "exact_match": "strict string equality with the first reference (the training metric)",
                    "vqa_exact_match": "VQA answer normalisation, any reference", "anls": "threshold 0.5"}


def _score_with_task(task, model, dataset, options, device):
    return task.evaluate(model, dataset, batch_size=options.batch_size, device=device), \
        {"metrics": f"the '{task.name}' task's own evaluation"}


SCORERS = {"classification": _score_classification, "restoration": _score_restoration, "vlm-sft": _score_vlm}


def default_output(result: dict[str, Any]) -> Path:
    name = Path(str(result["model"])).name
    return Path("runs") / "eval" / f"{name}-{result['task']}-{Path(result['data']).name}.json"


def write_result(result: dict[str, Any], path: str | Path | None = None) -> Path:
    path = Path(path).expanduser() if path else default_output(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def format_result(result: dict[str, Any]) -> str:
    lines = [(f"{result['model']} on {result['data']} ({result['split']}, {result['num_samples']} samples), task "
              f"{result['task']}, weights: {result['weights']}")]
    lines += [f"  {key:28s} {value:.4f}" for key, value in result["metrics"].items()]
    if "token_reduction" in result:
        lines.append(f"  {'token reduction':24s} {'exact match':>11s} {'prefill GFLOP':>13s} {'x none':>7s} "
                     f"{'TTFT ms':>8s} {'x none':>7s}")
        for name, row in result["token_reduction"].items():
            lines.append(f"  {name:24s} {row['metrics']['exact_match']:11.4f} {row['prefill_flops'] / 1e9:13.4f} "
                         f"{row['flops_vs_none']:7.3f} {row['ttft_p50_ms']:8.1f} {row['ttft_vs_none']:7.3f}")
    return "\n".join(lines)


__all__ = ["SCORERS", "EvalOptions", "format_result", "run_eval", "write_result"]
