"""Training tasks: what a batch is, what the loss is and how a model is evaluated, for each kind of model.

    classification   backbones: cross-entropy; top-1 accuracy
    restoration      restoration / super-resolution models: L1; PSNR
    vlm-sft          vision-language models: next-token loss on the answer tokens only (the prompt, the image
                     tokens and the padding are masked); exact-match accuracy of greedy answers
    tinygpt-v-sft    vlm-sft with TinyGPT-V's prompt templates, <ImageHere> expansion and image transform
    diffusion        denoisers: flow matching with a timestep shift (the DiTs), or epsilon / v-prediction on a
                     DDPM schedule (U-Nets); eval loss at fixed noise
    language         language models: next-token loss on text (every token); eval loss and perplexity

A task turns dataset samples into model inputs in two stages: `encode(sample)` per sample (in the data loader,
cacheable) and `collate(encoded samples)` per batch. `loss(model, batch)` returns the mean loss over the batch's
items (samples, or answer tokens) and how many items it averaged, so that the loop can weight micro-batches and
processes into the exact mean of the global batch.

Families add loss terms without forking the loop: a `LossTerm` (e.g. `DistillationLoss`) is called with the
task, the model, the batch and the model's outputs, and its weighted value is added to the task's loss. Register
one with `register_loss_term` to make it available from YAML configs (`extra_losses: [{name: ..., ...}]`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from eval.metrics import psnr
from zoo.errors import ConfigError, InputError, closest
from zoo.registry import ModelEntry

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the trained model came from: `name` as given (a registered name or a folder), its registry `entry`
    (None for a folder), the local `folder` it was read from, the Hub repo of the published weights it was
    loaded from (`hub_id`), and whether it started from trained weights (`pretrained`)."""

    name: str
    entry: ModelEntry | None = None
    folder: Path | None = None
    hub_id: str | None = None
    pretrained: bool = False


@dataclasses.dataclass
class TaskOutput:
    """`loss`: mean over `num_items` items (with extra terms added); `metrics`: floats for the logs;
    `outputs`: what the model returned (extra loss terms read it)."""

    loss: torch.Tensor
    num_items: int
    metrics: dict[str, float]
    outputs: Any = None


class LossTerm:
    """An extra loss term: `__call__(task, model, batch, outputs)` returns a scalar, a mean over the batch's items,
    which the task adds to its loss times `weight`. `name` labels it in the metrics."""

    name: ClassVar[str] = "extra"

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def __call__(self, task: Task, model: nn.Module, batch: dict[str, Any], outputs: Any) -> torch.Tensor:
        raise NotImplementedError


class DistillationLoss(LossTerm):
    """Knowledge distillation from a frozen teacher (a registered name, a saved folder or a module) run on the same
    batch: KL(teacher || student) of the item logits softened by `temperature` (times T^2, as Hinton et al.) for
    classification and vlm-sft, mean squared error of the predictions for restoration and diffusion."""

    name = "distillation"

    def __init__(self, teacher: str | nn.Module, weight: float = 1.0, temperature: float = 1.0, **overrides: Any):
        super().__init__(weight)
        if isinstance(teacher, str):
            import zoo

            teacher = zoo.from_pretrained(teacher) if Path(teacher).is_dir() else zoo.create(teacher, **overrides)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = float(temperature)

    def __call__(self, task: Task, model: nn.Module, batch: dict[str, Any], outputs: Any) -> torch.Tensor:
        device = task.item_outputs(outputs, batch).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_outputs = task.forward(self.teacher, batch)
        student = task.item_outputs(outputs, batch).float()
        teacher = task.item_outputs(teacher_outputs, batch).float()
        if task.output_kind == "logits":
            t = self.temperature
            return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                            reduction="batchmean") * t * t
        return F.mse_loss(student, teacher)


class FeatureDistillationLoss(LossTerm):
    """MLFSR's T2M (Transformer-to-Mamba) loss: L1 between the body features of a frozen teacher and the student's,
    `forward_features(degraded)[1]` of each (MLFSR and EPIT: the body's output before the global residual), so
    `weight` 0.1 with the task's L1 gives L1(SR, HR) + 0.1 L1(F_teacher, F_student). A registered teacher name
    loads its published weights with `pretrained`, or a local file with `checkpoint_path`. Any model whose
    `forward_features` gives features of the student's shape can teach. The student's features come from a forward
    hook on its `feature_module` during the task's own forward (computed once more only at the first step)."""

    name = "t2m"

    def __init__(self, teacher: str | nn.Module, weight: float = 0.1, feature_module: str = "altblock",
                 pretrained: bool = False, checkpoint_path: str | None = None, **overrides: Any):
        super().__init__(weight)
        if isinstance(teacher, str):
            import zoo

            teacher = (zoo.from_pretrained(teacher) if Path(teacher).is_dir() else
                       zoo.create(teacher, pretrained=pretrained, checkpoint_path=checkpoint_path, **overrides))
        if not hasattr(teacher, "forward_features"):
            raise ConfigError(f"t2m: the teacher {type(teacher).__name__} has no forward_features(lr) -> (out, "
                              f"features); MLFSR and EPIT have one")
        self.teacher = teacher.eval().requires_grad_(False)
        self.feature_module = feature_module
        self._hooked: set[int] = set()
        self._features: torch.Tensor | None = None

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self._features = output

    def __call__(self, task: Task, model: nn.Module, batch: dict[str, Any], outputs: Any) -> torch.Tensor:
        student = model
        while not hasattr(student, "forward_features") and hasattr(student, "module"):
            student = student.module  # DDP / FSDP wrappers
        features, self._features = self._features, None
        if id(student) not in self._hooked:
            student.get_submodule(self.feature_module).register_forward_hook(self._capture)
            self._hooked.add(id(student))
            features = None
        lr = batch["degraded"]
        if features is None:
            features = student.forward_features(lr)[1]
        if next(self.teacher.parameters()).device != lr.device:
            self.teacher.to(lr.device)
        with torch.no_grad():
            target = self.teacher.forward_features(lr)[1]
        if target.shape != features.shape:
            raise ConfigError(f"t2m: teacher features {tuple(target.shape)} and student features "
                              f"{tuple(features.shape)} differ; use a teacher of the student's width and views")
        return F.l1_loss(features.float(), target.float())


LOSS_TERMS: dict[str, type[LossTerm]] = {"distillation": DistillationLoss, "t2m": FeatureDistillationLoss}


def register_loss_term(name: str, cls: type[LossTerm]) -> None:
    """Make a LossTerm available to configs as `extra_losses: [{name: NAME, weight: ..., **its arguments}]`."""
    LOSS_TERMS[name] = cls


def build_loss_term(spec: dict[str, Any] | LossTerm) -> LossTerm:
    if isinstance(spec, LossTerm):
        return spec
    options = dict(spec)
    name = options.pop("name", None)
    if name not in LOSS_TERMS:
        raise ConfigError(f"Unknown loss term {name!r}; registered: {', '.join(LOSS_TERMS)}.")
    try:
        return LOSS_TERMS[name](**options)
    except TypeError as error:
        raise ConfigError(f"Loss term '{name}' does not take these options: {error}") from error


class Task:
    """The base of every task. Subclasses set the class attributes and implement the methods that raise."""

    name: ClassVar[str]
    data_kind: ClassVar[str]  # the samples it reads (see zoo.data.KINDS)
    default_data: ClassVar[str]
    model_tasks: ClassVar[tuple[str, ...]]  # registry tasks (ModelEntry.task) of the models it trains
    eval_metric: ClassVar[str]  # the headline metric of `evaluate`
    output_kind: ClassVar[str] = "logits"  # or "regression": how distillation compares outputs

    def __init__(self, extra_losses: Sequence[LossTerm | dict] = (), **options: Any):
        self.extra_losses = [build_loss_term(term) for term in extra_losses]
        if options:
            raise ConfigError(f"Task '{self.name}' has no option {', '.join(map(repr, options))}.")

    # -- set-up ---------------------------------------------------------------------------------------

    def check_entry(self, entry: ModelEntry | None, family: str) -> None:
        """Refuse a model of another kind before building it (`entry` is None for a saved folder)."""
        if entry is not None and entry.task not in self.model_tasks:
            fitting = [task.name for task in TASKS.values() if entry.task in task.model_tasks]
            raise ConfigError(
                f"Task '{self.name}' trains {' or '.join(self.model_tasks)} models, but '{entry.name}' is a "
                f"{entry.task} model. " + (f"Tasks for it: {', '.join(fitting)}." if fitting
                                           else "No training task fits it yet.")
            )

    def data_defaults(self, entry: ModelEntry | None, config: Any) -> dict[str, Any]:
        """Options for the embedded dataset that suit the model (e.g. its input size)."""
        return {}

    def model_overrides(self, entry: ModelEntry | None, dataset: Any, pretrained: bool) -> dict[str, Any]:
        """Config overrides that make a freshly built model fit the data (e.g. num_classes)."""
        return {}

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        """Check that `model` fits the task and the data (ConfigError otherwise) and build what the task needs."""

    # -- data ------------------------------------------------------------------------------------------

    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Per-sample preprocessing (runs in the data loader; its results may be cached)."""
        return sample

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def num_items(self, batch: dict[str, Any]) -> int:
        """The number of items the batch's loss averages over."""
        return len(batch["sample_ids"])

    # -- loss ------------------------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        raise NotImplementedError

    def criterion(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def item_outputs(self, outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The outputs the items' losses are computed from, one row per item (for distillation)."""
        return outputs

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> TaskOutput:
        outputs = self.forward(model, batch)
        loss, metrics = self.criterion(outputs, batch)
        for term in self.extra_losses:
            value = term(self, model, batch, outputs)
            metrics[term.name] = float(value.detach())
            loss = loss + term.weight * value
        return TaskOutput(loss, self.num_items(batch), metrics, outputs)

    # -- evaluation and saving -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 32, device: Any = None) -> dict[str, float]:
        """Metrics over `dataset` (default: the mean task loss and the criterion's metrics)."""
        totals: dict[str, float] = {}
        count = 0
        for batch in self.batches(dataset, batch_size, device):
            loss, metrics = self.criterion(self.forward(model, batch), batch)
            n = self.num_items(batch)
            for key, value in {"loss": float(loss), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + value * n
            count += n
        return {key: value / max(count, 1) for key, value in totals.items()}

    def batches(self, dataset: Any, batch_size: int, device: Any = None):
        """The dataset in order, encoded and collated, on `device`."""
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            samples = [{**self.encode(dataset[i]), "sample_id": i} for i in indices]
            yield to_device(self.collate(samples), device)

    def save_extras(self, folder: Any) -> None:
        """Write what a saved model needs besides its weights (a processor, a tokenizer)."""

    def trainable_modules(self) -> list[nn.Module]:
        """Modules the task trains along with the model (training-only heads and decoders, e.g. UNIT's); the loop
        puts them on the model's device and gives their parameters to the optimizer."""
        return []


def to_device(batch: Any, device: Any) -> Any:
    """The tensors of a batch (nested in dicts, lists and tuples) on `device`; None leaves the batch as it is."""
    from accelerate.utils import send_to_device

    return batch if device is None else send_to_device(batch, device, non_blocking=True)


def _sample_ids(samples: list[dict[str, Any]]) -> torch.Tensor:
    return torch.tensor([sample.get("sample_id", index) for index, sample in enumerate(samples)], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------
# classification


class ClassificationTask(Task):
    """Images -> class logits (B, num_classes); cross-entropy (optional label smoothing), top-1 accuracy.

    Pixels are normalised with `mean` / `std` (default: the pretrained model's `pretrained_cfg`, else 0.5 / 0.5).
    The model's `pretrained_cfg` then records them with the data's image size (images are resized to it, uncropped),
    so that timm's `resolve_data_config` and `zoo run` prepare images as the weights were trained. The model's classifier is sized to the dataset's classes: through `num_classes` for a new model,
    through `reset_classifier` (timm's contract) for a loaded one.
    """

    name = "classification"
    data_kind = "classification"
    default_data = "shapes"
    model_tasks = ("backbone",)
    eval_metric = "accuracy"

    def __init__(self, extra_losses: Sequence[LossTerm | dict] = (), mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, label_smoothing: float = 0.0):
        super().__init__(extra_losses)
        self.mean = mean
        self.std = std
        self.label_smoothing = label_smoothing

    def data_defaults(self, entry: ModelEntry | None, config: Any) -> dict[str, Any]:
        return _image_size_default(entry, config)

    def model_overrides(self, entry: ModelEntry | None, dataset: Any, pretrained: bool) -> dict[str, Any]:
        if entry is not None and not pretrained and "num_classes" in entry.config.field_names():
            return {"num_classes": dataset.num_classes}
        return {}

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        classes = getattr(model, "num_classes", getattr(getattr(model, "config", None), "num_classes", None))
        if classes is None:
            raise ConfigError(
                f"'{source.name}' has no classifier (no num_classes): the classification task trains image "
                f"classifiers."
            )
        if classes != dataset.num_classes:
            if not hasattr(model, "reset_classifier"):
                raise ConfigError(
                    f"'{source.name}' predicts {classes} classes but the data has {dataset.num_classes}, and it has no "
                    f"reset_classifier to resize its head."
                )
            model.reset_classifier(dataset.num_classes)
        published = getattr(model, "pretrained_cfg", {}) if source.pretrained else {}
        self.mean = tuple(self.mean or published.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(self.std or published.get("std", (0.5, 0.5, 0.5)))
        if hasattr(model, "pretrained_cfg"):  # saved with the model: the images its trained weights expect
            model.pretrained_cfg = {**model.pretrained_cfg, "input_size": tuple(dataset[0]["image"].shape),
                                    "interpolation": "bicubic", "crop_pct": 1.0, "mean": self.mean, "std": self.std}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        images = torch.stack([sample["image"] for sample in samples])
        return {
            "pixel_values": normalize(images, self.mean or (0.5,) * 3, self.std or (0.5,) * 3),
            "labels": torch.tensor([sample["label"] for sample in samples], dtype=torch.long),
            "sample_ids": _sample_ids(samples),
        }

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        logits = model(batch["pixel_values"])
        if logits.ndim != 2:
            raise ConfigError(f"a classifier must return logits (B, num_classes), got {tuple(logits.shape)}")
        return logits

    def criterion(self, outputs: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch["labels"]
        loss = F.cross_entropy(outputs.float(), labels, label_smoothing=self.label_smoothing)
        accuracy = (outputs.argmax(-1) == labels).float().mean()
        return loss, {"accuracy": float(accuracy)}


# ---------------------------------------------------------------------------------------------------
# restoration


class RestorationTask(Task):
    """Degraded images -> restored images, in [0, 1] (a super-resolution model returns them `scale` times larger);
    L1 loss; PSNR (dB, of the output clamped to [0, 1]) and L1 for evaluation."""

    name = "restoration"
    data_kind = "restoration"
    default_data = "shapes-restoration"
    model_tasks = ("restoration",)
    eval_metric = "psnr"
    output_kind = "regression"

    def data_defaults(self, entry: ModelEntry | None, config: Any) -> dict[str, Any]:
        defaults = _image_size_default(entry, config)
        scale = getattr(config, "upscale", None) or getattr(config, "scale", None)
        if isinstance(scale, int) and scale > 1:
            defaults["scale"] = scale
            if "image_size" in defaults:
                defaults["image_size"] *= scale
        return defaults

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "degraded": torch.stack([sample["degraded"] for sample in samples]),
            "clean": torch.stack([sample["clean"] for sample in samples]),
            "sample_ids": _sample_ids(samples),
        }

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        restored = model(batch["degraded"])
        if restored.shape != batch["clean"].shape:
            raise ConfigError(
                f"the model turns degraded images {tuple(batch['degraded'].shape)} into {tuple(restored.shape)}, "
                f"but the clean images are {tuple(batch['clean'].shape)}; for super-resolution, set the dataset's "
                f"scale to the model's (data_options: {{scale: N}})"
            )
        return restored

    def criterion(self, outputs: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        clean = batch["clean"]
        loss = F.l1_loss(outputs.float(), clean)
        # clamped like a saved image; capped so that a perfect image does not make the logged mean infinite
        image_psnr = psnr(outputs.detach().float().clamp(0, 1), clean).clamp_max(100.0)
        return loss, {"psnr": float(image_psnr.mean()), "l1": float(loss.detach())}

    def item_outputs(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return outputs.flatten(1)


# ---------------------------------------------------------------------------------------------------
# vision-language supervised fine-tuning


class VLMSFTTask(Task):
    """Supervised fine-tuning of a SmolVLM-style model on (image, question, answer) samples.

    Each sample is the chat-templated user turn (image + question) followed by the assistant's answer and its
    end-of-utterance token; the loss is the next-token cross-entropy on the answer tokens only. Sequences are
    padded on the right, so no attention mask is needed (causal attention never sees the padding).
    Evaluation generates answers greedily (up to the end-of-utterance token) and scores exact match of the
    stripped text, overall and per question type when samples have a "type".

    Options: `processor` (a folder or Hub repo to read a SmolVLMProcessor from; default: the model's own source, or
    for a new model the procedural byte tokenizer), `do_image_splitting` (False: one tile per image),
    `longest_edge` (a new processor's resize target before tiling; default the tile size, i.e. one tile),
    `max_new_tokens` for evaluation, `trainable` (parameter-name prefixes to train, the others frozen; None: all
    that the model leaves trainable), `token_reduction` (a `zoo.vlm.TokenReduction` or its spec, e.g.
    "attention:0.25", applied when answering).
    Families built otherwise bring their own samples, batches and loss positions (`VLM_SFT_FAMILIES`).
    """

    name = "vlm-sft"
    data_kind = "vqa"
    default_data = "shapes-vqa"
    model_tasks = ("vlm",)
    eval_metric = "exact_match"

    def __init__(self, extra_losses: Sequence[LossTerm | dict] = (), processor: Any = None,
                 do_image_splitting: bool = False, max_new_tokens: int = 16, trainable: Sequence[str] | None = None,
                 longest_edge: int | None = None, token_reduction: Any = None):
        from zoo.vlm.token_reduction import TokenReduction

        super().__init__(extra_losses)
        self.trainable = None if trainable is None else tuple(trainable)
        self.family: Any = None  # a VLM_SFT_FAMILIES handler, set up for its model
        self.processor = processor if not isinstance(processor, str) else None
        self.processor_source = processor if isinstance(processor, str) else None
        self.do_image_splitting = do_image_splitting
        self.longest_edge = longest_edge
        self.max_new_tokens = max_new_tokens
        self.token_reduction = TokenReduction.parse(token_reduction) if isinstance(token_reduction, str) \
            else token_reduction
        self.stop_ids: list[int] = []
        self._prompt_ids: dict[tuple[str, int, int], torch.Tensor] = {}
        self._answer_ids: dict[tuple[str, str], torch.Tensor] = {}

    def check_entry(self, entry: ModelEntry | None, family: str) -> None:
        """Also hands a family with a recipe of its own (`VLM_SFT_RECIPES`) to that VLMSFTTask subclass."""
        super().check_entry(entry, family)
        recipe = VLM_SFT_RECIPES.get(family)
        if recipe is not None and type(self) is VLMSFTTask:
            module, _, name = recipe.partition(":")
            self.__class__ = getattr(importlib.import_module(module), name)

    def data_defaults(self, entry: ModelEntry | None, config: Any) -> dict[str, Any]:
        return {"image_size": config.vision.image_size} if hasattr(config, "vision") else {}

    def model_overrides(self, entry: ModelEntry | None, dataset: Any, pretrained: bool) -> dict[str, Any]:
        if entry is None or entry.family in VLM_SFT_FAMILIES or pretrained or self.processor is not None \
                or self.processor_source is not None:
            return {}
        from zoo.vlm.smolvlm_processing import build_byte_tokenizer

        tokenizer = build_byte_tokenizer()
        return {"image_token_id": tokenizer.convert_tokens_to_ids("<image>"), "pad_token_id": tokenizer.pad_token_id}

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        from zoo.vlm.smolvlm_processing import SmolVLMProcessor, build_byte_tokenizer

        if self.trainable is not None:
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name.startswith(self.trainable))
        handler = VLM_SFT_FAMILIES.get(getattr(model, "family", None))
        if handler is not None:
            origin = self.processor_source
            if origin is None and source.folder is not None and _has_tokenizer(source.folder):
                origin = str(source.folder)
            module, _, name = handler.partition(":")
            self.family = getattr(importlib.import_module(module), name)(model, origin or source.hub_id)
            self.stop_ids = self.family.stop_ids
            return
        config = model.config
        if not all(hasattr(config, name) for name in ("image_token_id", "vision", "text")) \
                or not hasattr(model, "generate"):
            raise ConfigError(f"'{source.name}' is not a vision-language model zoo can fine-tune (SmolVLM-style).")
        sizes = {"image_seq_len": config.image_seq_len, "max_image_size": config.vision.image_size}
        if self.processor is None:
            origin = self.processor_source
            if origin is None and source.folder is not None and _has_tokenizer(source.folder):
                origin = str(source.folder)
            if origin is None and source.hub_id is not None:
                origin = source.hub_id
            if origin is not None:
                self.processor = SmolVLMProcessor.from_pretrained(origin, **sizes)
            else:
                self.processor = SmolVLMProcessor(
                    build_byte_tokenizer(), longest_edge=self.longest_edge or config.vision.image_size,
                    do_image_splitting=self.do_image_splitting, **sizes,
                )
        tokenizer = self.processor.tokenizer
        if len(tokenizer) > config.text.vocab_size:
            raise ConfigError(
                f"The tokenizer has {len(tokenizer)} tokens but '{source.name}' has a vocabulary of "
                f"{config.text.vocab_size}; build the model with text={{'vocab_size': {len(tokenizer)}}} or more."
            )
        if self.processor.image_token_id != config.image_token_id:
            raise ConfigError(
                f"The tokenizer's <image> token is {self.processor.image_token_id} but '{source.name}' expects "
                f"image_token_id={config.image_token_id}; build the model with "
                f"image_token_id={self.processor.image_token_id}."
            )
        if self.processor.image_seq_len != config.image_seq_len:
            raise ConfigError(
                f"The processor puts {self.processor.image_seq_len} <image> tokens per tile but '{source.name}' makes "
                f"{config.image_seq_len}."
            )
        end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
        self.stop_ids = sorted({i for i in (end, tokenizer.eos_token_id) if i is not None and i >= 0})

    def prompt(self, question: str) -> str:
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(message, add_generation_prompt=True)

    def completion(self, question: str, prompt: str, answer: str) -> str:
        """The text after the prompt that the model learns to produce: the assistant turn as the template renders it
        (" answer<end_of_utterance>"), without the trailing newline."""
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        full = self.processor.apply_chat_template(conversation)
        if full.startswith(prompt):
            return full[len(prompt):].rstrip("\n")
        return f" {answer}<end_of_utterance>"

    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Token ids of prompt + answer, labels (-100 but on the answer), and the image's tiles (uint8).

        The token ids of a prompt depend only on the question and the image's tile grid, and those of an answer
        only on the (question, answer) pair, so both are cached: datasets repeat their questions and answers.
        """
        from zoo.vlm.smolvlm_processing import image_prompt

        if self.family is not None:
            return self.family.encode(sample)
        if self.processor is None:
            raise ConfigError("call setup(model, ...) before encoding samples")
        for key in ("image", "question", "answer"):
            if key not in sample:
                raise InputError(f"a vlm-sft sample needs 'image', 'question' and 'answer'; it has {sorted(sample)}")
        question, answer = str(sample["question"]), str(sample["answer"])
        if "<image>" in question or "<video>" in question:
            raise InputError(f"a question cannot hold <image> or <video> placeholders: {question!r}")
        tiles, rows, cols = self.processor.preprocess_image(sample["image"])
        key = (question, rows, cols)
        if key not in self._prompt_ids:
            prompt = self.prompt(question)
            expanded = prompt.replace("<image>", image_prompt(rows, cols, self.processor.image_seq_len), 1)
            self._prompt_ids[key] = self._tokenize(expanded, prompt)
        prompt_ids = self._prompt_ids[key]
        if (question, answer) not in self._answer_ids:
            completion = self.completion(question, self.prompt(question), answer)
            self._answer_ids[(question, answer)] = self._tokenize(completion, None)
        answer_ids = self._answer_ids[(question, answer)]
        return {
            "input_ids": torch.cat([prompt_ids, answer_ids]),
            "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer_ids]),
            "tiles": self._to_uint8(tiles),  # 4x smaller than floats in a cache; collate normalises them again
        }

    def _scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The processor's normalisation as (x - mean) / std on 0-255 values (as SmolVLMProcessor computes it)."""
        rescale = self.processor.rescale_factor
        mean = torch.tensor(self.processor.image_mean).view(3, 1, 1) / rescale
        std = torch.tensor(self.processor.image_std).view(3, 1, 1) / rescale
        return mean, std

    def _to_uint8(self, tiles: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale()
        return (tiles * std + mean).round_().clamp_(0, 255).to(torch.uint8)

    def _normalize(self, tiles: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale()
        return (tiles.float() - mean) / std

    def _tokenize(self, text: str, prompt: str | None) -> torch.Tensor:
        """Token ids of `text`; a prompt gets the special tokens the processor would add (none after a BOS)."""
        tokenizer = self.processor.tokenizer
        add_special = prompt is not None and not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))
        return torch.tensor(tokenizer(text, add_special_tokens=add_special)["input_ids"], dtype=torch.long)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.family is not None:
            return {**self.family.collate(samples), "sample_ids": _sample_ids(samples)}
        pad = self.processor.tokenizer.pad_token_id or 0
        length = max(len(sample["input_ids"]) for sample in samples)
        tiles = max(len(sample["tiles"]) for sample in samples)
        input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        pixel_values = torch.zeros(len(samples), tiles, *samples[0]["tiles"].shape[1:])  # zero tiles: padding
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            pixel_values[row, : len(sample["tiles"])] = self._normalize(sample["tiles"])
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values,
                "sample_ids": _sample_ids(samples)}

    def num_items(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        if self.family is not None:
            return self.family.forward(model, batch)
        return model(batch["input_ids"], pixel_values=batch["pixel_values"].to(_dtype_of(model)))

    def criterion(self, outputs: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.item_outputs(outputs, batch).float()
        if self.family is not None:
            targets = self.family.targets(outputs)
        else:
            targets = batch["labels"][:, 1:][batch["labels"][:, 1:] != IGNORE_INDEX]
        loss = F.cross_entropy(logits, targets)
        return loss, {"token_accuracy": float((logits.argmax(-1) == targets).float().mean())}

    def item_outputs(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The logits that predict answer tokens (N, vocab), N = answer tokens in the batch."""
        if self.family is not None:
            return self.family.item_outputs(outputs)
        return outputs[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]

    @torch.no_grad()
    def answer(self, model: nn.Module, images: list[Any], questions: list[str],
               max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers (text up to the end-of-utterance token, stripped) to one question per image."""
        if self.family is not None:
            return self.family.answer(model, images, questions, max_new_tokens or self.max_new_tokens,
                                      **self.generate_options())
        device = next(model.parameters()).device
        prompts = [self.prompt(question) for question in questions]
        inputs = self.processor(text=prompts, images=[[image] for image in images])
        inputs = {key: value.to(device) for key, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(_dtype_of(model))
        output = model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                eos_token_id=self.stop_ids, cache="static", **self.generate_options())
        new = output[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]

    def generate_options(self) -> dict[str, Any]:
        """What `answer` passes to `generate` besides the inputs: the token reduction, when one is set."""
        return {} if self.token_reduction is None else {"token_reduction": self.token_reduction}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 64, device: Any = None) -> dict[str, float]:
        """Exact match of greedy answers, overall and per question type ("exact_match/<type>")."""
        was_training = model.training
        model.eval()
        correct: dict[str, int] = {}
        total: dict[str, int] = {}
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            answers = self.answer(model, [s["image"] for s in samples], [s["question"] for s in samples])
            for sample, answer in zip(samples, answers):
                for key in ("all", sample.get("type")):
                    if key is not None:
                        total[key] = total.get(key, 0) + 1
                        correct[key] = correct.get(key, 0) + (answer == sample["answer"].strip())
        model.train(was_training)
        metrics = {"exact_match": correct.get("all", 0) / max(total.get("all", 0), 1)}
        metrics.update({f"exact_match/{key}": correct[key] / total[key] for key in sorted(total) if key != "all"})
        return metrics

    def save_extras(self, folder: Any) -> None:
        if self.family is not None:
            self.family.save_pretrained(folder)
        elif self.processor is not None:
            self.processor.save_pretrained(folder)


# vlm-sft handlers of the families whose processor and loss positions differ from SmolVLM's, as "module:class"
# (imported when used): the class takes (model, processor source or None) and provides stop_ids, encode, collate,
# forward, item_outputs(outputs), targets(outputs), answer and save_pretrained.
VLM_SFT_FAMILIES: dict[str, str] = {"llavamini": "zoo.vlm.llavamini_processing:LlavaMiniSFT"}
# Vision-language families fine-tuned differently from SmolVLM: their VLMSFTTask subclass, imported when used.
VLM_SFT_RECIPES = {"hulumed": "train.hulumed_sft:HuluMedSFTTask"}


class TinyGPTVSFTTask(VLMSFTTask):
    """vlm-sft for TinyGPT-V: one image per sample, the stage's prompt template (`###Human: <Img><ImageHere></Img>
    {question} ###Assistant: `, or `[INST] ... [/INST]` for arch minigpt_v2) with <ImageHere> expanded to the query
    tokens, the answer followed by the tokenizer's EOS, BLIP-2's eval transform. The loss and evaluation are
    vlm-sft's (answer tokens only; exact match of greedy answers).

    Options: `tokenizer` (a folder or Hub repo; default: the model folder's own, Phi-2's for the published weights,
    else zoo's procedural byte tokenizer), `max_new_tokens` for evaluation.
    """

    name = "tinygpt-v-sft"

    def __init__(self, extra_losses: Sequence[LossTerm | dict] = (), tokenizer: str | None = None,
                 max_new_tokens: int = 16):
        super().__init__(extra_losses, max_new_tokens=max_new_tokens)
        self.tokenizer_source = tokenizer

    def check_entry(self, entry: ModelEntry | None, family: str) -> None:
        super().check_entry(entry, family)
        if family != "tinygpt_v":
            raise ConfigError(f"Task '{self.name}' trains TinyGPT-V models, not '{family}'; use vlm-sft.")

    def model_overrides(self, entry: ModelEntry | None, dataset: Any, pretrained: bool) -> dict[str, Any]:
        if entry is None or pretrained or self.tokenizer_source is not None:
            return {}
        from zoo.vlm.smolvlm_processing import build_byte_tokenizer

        tokenizer = build_byte_tokenizer()
        return {"image_token_id": tokenizer.convert_tokens_to_ids("<image>"), "pad_token_id": tokenizer.pad_token_id}

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        from zoo.vlm.smolvlm_processing import build_byte_tokenizer
        from zoo.vlm.tinygpt_v_processing import TinyGPTVProcessor, load_tokenizer

        origin = self.tokenizer_source
        if origin is None and source.folder is not None and _has_tokenizer(source.folder):
            origin = str(source.folder)
        if origin is None and source.pretrained and source.entry is not None:
            origin = source.entry.source().parts.get("llm")
        tokenizer = load_tokenizer(origin) if origin is not None else build_byte_tokenizer()
        if len(tokenizer) > model.config.text.vocab_size:
            raise ConfigError(f"The tokenizer has {len(tokenizer)} tokens but '{source.name}' has a vocabulary of "
                              f"{model.config.text.vocab_size}; build the model with text={{'vocab_size': "
                              f"{len(tokenizer)}}} or more.")
        self.processor = TinyGPTVProcessor.for_model(model, tokenizer)
        self.stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def prompt(self, question: str) -> str:
        return self.processor.prompt(question)

    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Token ids of prompt + answer + EOS, labels (-100 but on the answer and EOS), the image (3, S, S)."""
        if self.processor is None:
            raise ConfigError("call setup(model, ...) before encoding samples")
        for key in ("image", "question", "answer"):
            if key not in sample:
                raise InputError(f"a {self.name} sample needs 'image', 'question' and 'answer'; it has "
                                 f"{sorted(sample)}")
        question, answer = str(sample["question"]), str(sample["answer"])
        if question not in self._prompt_ids:
            self._prompt_ids[question] = torch.tensor(self.processor.token_ids(self.prompt(question)))
        if (question, answer) not in self._answer_ids:
            ids = self.processor.tokenizer(answer, add_special_tokens=False)["input_ids"] + self.stop_ids
            self._answer_ids[(question, answer)] = torch.tensor(ids, dtype=torch.long)
        prompt_ids, answer_ids = self._prompt_ids[question], self._answer_ids[(question, answer)]
        return {"input_ids": torch.cat([prompt_ids, answer_ids]),
                "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer_ids]),
                "pixel_values": self.processor.preprocess_image(sample["image"])}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        tokenizer = self.processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        length = max(len(sample["input_ids"]) for sample in samples)
        input_ids = torch.full((len(samples), length), pad or 0, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        for row, sample in enumerate(samples):
            input_ids[row, : len(sample["input_ids"])] = sample["input_ids"]
            labels[row, : len(sample["labels"])] = sample["labels"]
        return {"input_ids": input_ids, "labels": labels, "sample_ids": _sample_ids(samples),
                "pixel_values": torch.stack([sample["pixel_values"] for sample in samples])}

    @torch.no_grad()
    def answer(self, model: nn.Module, images: list[Any], questions: list[str],
               max_new_tokens: int | None = None) -> list[str]:
        device = next(model.parameters()).device
        inputs = self.processor([self.prompt(q) for q in questions], images=images, padding_side="left")
        inputs = {key: value.to(device) for key, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(_dtype_of(model))
        output = model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                eos_token_id=self.stop_ids or None, cache="static", **self.generate_options())
        return [self.processor.decode(row) for row in output[:, inputs["input_ids"].shape[1]:]]

    def save_extras(self, folder: Any) -> None:
        if self.processor is not None:
            self.processor.tokenizer.save_pretrained(folder)


def _has_tokenizer(folder: Any) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


# ---------------------------------------------------------------------------------------------------
# language


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, then end-of-text (256) and padding (257): needs no files and fits any
    vocabulary of at least 258 (the `*-tiny` language models)."""

    eos_token_id = 256
    pad_token_id = 257

    def __len__(self) -> int:
        return 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class LanguageModelingTask(Task):
    """Causal language modelling (continued pre-training): the next-token cross-entropy on every token of each text
    (plus an end-of-text token), padded on the right, so no attention mask is needed.

    Options: `tokenizer` (a folder or Hub repo with a transformers tokenizer; default: the model folder's own, or for a
    model without one the byte tokenizer), `max_length` (tokens per sample, longer texts are cut).
    """

    name = "language"
    data_kind = "text"
    default_data = "procedural-text"
    model_tasks = ("language",)
    eval_metric = "perplexity"

    def __init__(self, extra_losses: Sequence[LossTerm | dict] = (), tokenizer: Any = None, max_length: int = 256):
        super().__init__(extra_losses)
        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"Task 'language': max_length must be an integer >= 2, got {max_length!r}")
        self.tokenizer = tokenizer if not isinstance(tokenizer, str) else None
        self.tokenizer_source = tokenizer if isinstance(tokenizer, str) else None
        self.max_length = max_length

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        if self.tokenizer is None:
            origin = self.tokenizer_source
            if origin is None and source.folder is not None and _has_tokenizer(source.folder):
                origin = str(source.folder)
            if origin is not None:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(origin)
            else:
                self.tokenizer = ByteTokenizer()
        vocab = getattr(model.config, "vocab_size", None)
        if vocab is None or len(self.tokenizer) > vocab:
            raise ConfigError(f"The tokenizer has {len(self.tokenizer)} tokens but '{source.name}' has a vocabulary of "
                              f"{vocab}; build the model with vocab_size={len(self.tokenizer)} or more.")

    def _eos(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None)

    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.tokenizer is None:
            raise ConfigError("call setup(model, ...) before encoding samples")
        if "text" not in sample:
            raise InputError(f"a language sample needs 'text'; it has {sorted(sample)}")
        ids = list(self.tokenizer.encode(str(sample["text"])))
        if self._eos() is not None:
            ids.append(self._eos())
        return {"input_ids": torch.tensor(ids[: self.max_length], dtype=torch.long)}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else (self._eos() or 0)
        length = max(len(sample["input_ids"]) for sample in samples)
        input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = labels[row, :n] = sample["input_ids"]
        return {"input_ids": input_ids, "labels": labels, "sample_ids": _sample_ids(samples)}

    def num_items(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(batch["input_ids"])

    def item_outputs(self, outputs: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The logits that predict a token (N, vocab), N = predicted tokens in the batch."""
        return outputs[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]

    def criterion(self, outputs: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.item_outputs(outputs, batch).float()
        targets = batch["labels"][:, 1:][batch["labels"][:, 1:] != IGNORE_INDEX]
        loss = F.cross_entropy(logits, targets)
        return loss, {"token_accuracy": float((logits.argmax(-1) == targets).float().mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 32, device: Any = None) -> dict[str, float]:
        """The mean loss over every predicted token, its perplexity and the token accuracy."""
        was_training = model.training
        model.eval()
        metrics = super().evaluate(model, dataset, batch_size, device)
        model.train(was_training)
        return {**metrics, "perplexity": math.exp(min(metrics["loss"], 700.0))}

    def save_extras(self, folder: Any) -> None:
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------------------------------------------
# diffusion


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """How the diffusion task drives one family's denoiser.

    `predict(model, latents, sigma, text, text_lengths)` returns the prediction for latents (B, C, H, W) at noise
    level sigma (B,) in [0, 1] (the fraction of noise for flow matching; t / num_train_timesteps for DDPM), in the
    convention of `objective`: "flow" predicts noise - clean, "epsilon" the noise, "v_prediction" v.
    `latent_channels(config)`, `text_dim(config)` size the latents and the text features.
    """

    predict: Callable[..., torch.Tensor]
    latent_channels: Callable[[Any], int]
    text_dim: Callable[[Any], int]
    objective: str = "flow"
    timestep_shift: float = 1.0
    latent_multiple: int = 2  # latent height and width must be multiples of this (the patch size)


def _wan_predict(model, latents, sigma, text, text_lengths):
    # Wan takes video latents (B, C, F, H, W) and t in [0, 1000]; it predicts the flow noise - clean.
    return model(hidden_states=latents[:, :, None], timestep=sigma * 1000, encoder_hidden_states=text)[:, :, 0]


def _zimage_predict(model, latents, sigma, text, text_lengths):
    # Z-Image takes lists of (C, F, H, W) latents and unpadded captions, and t = 1 - sigma (1 = clean); its velocity
    # points from noise to data, the negative of the flow.
    captions = [features[:length] for features, length in zip(text, text_lengths.tolist())]
    velocity = model(list(latents[:, :, None]), 1 - sigma, captions)
    return -torch.stack(velocity)[:, :, 0]


DENOISERS: dict[str, Denoiser] = {
    "wan": Denoiser(_wan_predict, lambda c: c.in_channels, lambda c: c.text_dim, "flow", timestep_shift=5.0),
    "zimage": Denoiser(_zimage_predict, lambda c: c.in_channels, lambda c: c.caption_dim, "flow", timestep_shift=3.0),
}


def register_denoiser(family: str, denoiser: Denoiser) -> None:
    """Let the diffusion task train a family's denoiser (e.g. a U-Net with objective="epsilon")."""
    DENOISERS[family] = denoiser


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3 / Wan / Z-Image: shift * s / (1 + (shift - 1) * s); shift > 1 favours noisy steps."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> torch.Tensor:
    """The "scaled_linear" beta schedule of Stable Diffusion's U-Nets, as cumulative alpha products."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class PixelLatents:
    """A stand-in for a VAE for small models trained on embedded data: images (B, 3, H, W) in [-1, 1] are
    pixel-unshuffled by `factor` and mapped to `channels` by a fixed orthonormal matrix (seeded), so
    `decode(encode(x)) == x` whenever channels >= 3 * factor^2. Real runs pass the model's VAE instead."""

    def __init__(self, channels: int, factor: int = 2, seed: int = 0):
        inputs = 3 * factor**2
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.linalg.qr(torch.randn(max(channels, inputs), max(channels, inputs), generator=generator))[0]
        self.projection = matrix[:channels, :inputs].contiguous()  # (channels, inputs), orthonormal rows or columns
        self.factor = factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        patches = F.pixel_unshuffle(images, self.factor)
        return torch.einsum("ci,bihw->bchw", self.projection.to(patches), patches)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        patches = torch.einsum("ci,bchw->bihw", self.projection.to(latents), latents)
        return F.pixel_shuffle(patches, self.factor)


class HashedTextEncoder:
    """A stand-in for a text encoder for small models trained on embedded captions: each lower-cased word maps to a
    fixed random vector (seeded by a hash of the word), so captions become (L, dim) features that a model can learn
    to read. Real runs pass the pipeline's text encoder instead."""

    def __init__(self, dim: int, max_words: int = 32, seed: int = 0):
        self.dim = dim
        self.max_words = max_words
        self.seed = seed
        self._cache: dict[str, torch.Tensor] = {}

    def word(self, word: str) -> torch.Tensor:
        if word not in self._cache:
            key = sum((i + 1) * ord(ch) * 1_000_003 ** (i % 5) for i, ch in enumerate(word)) % (2**31)
            generator = torch.Generator().manual_seed(self.seed * 7919 + key)
            self._cache[word] = torch.randn(self.dim, generator=generator)
        return self._cache[word]

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> features (B, max_words, dim), zero-padded, and their lengths (B,). The padding is the same
        for every batch (as real pipelines pad to a fixed length): models that attend to it (Wan) then give each
        sample the same result whatever it is batched with, and so whatever the process count."""
        words = [caption.lower().split()[: self.max_words] or [""] for caption in captions]
        features = torch.zeros(len(captions), self.max_words, self.dim)
        for row, caption_words in enumerate(words):
            for column, word in enumerate(caption_words):
                features[row, column] = self.word(word)
        return features, torch.tensor([len(w) for w in words])


class DiffusionTask(Task):
    """Denoising training of a diffusion model on (image, caption) samples.

    objective "flow" (rectified flow, the DiTs): x_s = (1 - s) x0 + s noise with s = shift(u), u ~ U(0, 1) (or
    logit-normal with `sigma_sampling="logit_normal"`), target noise - x0. "epsilon" / "v_prediction" (U-Nets): a
    DDPM "scaled_linear" schedule over `num_train_timesteps`, target the noise or v = sqrt(a) noise - sqrt(1-a) x0.
    Loss: mean squared error. Noise and timesteps are drawn per sample from a generator seeded by the sample's stream
    position, so the loss does not depend on the process count or on where a run was resumed.
    `vae` / `text_encoder`: objects with `encode(images)` and `__call__(captions) -> (features, lengths)`; by default
    `PixelLatents` and `HashedTextEncoder` stand-ins sized to the model (fine for the tiny models and demos).
    Evaluation: the loss at fixed noise and evenly spaced noise levels.
    """

    name = "diffusion"
    data_kind = "captions"
    default_data = "shapes-captions"
    model_tasks = ("diffusion",)
    eval_metric = "loss"
    output_kind = "regression"

    def __init__(self, extra_losses: Sequence[LossTerm | dict] = (), objective: str | None = None,
                 timestep_shift: float | None = None, sigma_sampling: str = "uniform",
                 num_train_timesteps: int = 1000, vae: Any = None, text_encoder: Any = None, latent_factor: int = 2,
                 seed: int = 0):
        super().__init__(extra_losses)
        if objective not in (None, "flow", "epsilon", "v_prediction"):
            raise ConfigError(f"objective must be 'flow', 'epsilon' or 'v_prediction', got {objective!r}")
        if sigma_sampling not in ("uniform", "logit_normal"):
            raise ConfigError(f"sigma_sampling must be 'uniform' or 'logit_normal', got {sigma_sampling!r}")
        self.objective = objective
        self.timestep_shift = timestep_shift
        self.sigma_sampling = sigma_sampling
        self.num_train_timesteps = num_train_timesteps
        self.vae = vae
        self.text_encoder = text_encoder
        self.latent_factor = latent_factor
        self.seed = seed
        self.denoiser: Denoiser | None = None
        self.alphas_cumprod = ddpm_alphas_cumprod(num_train_timesteps)

    def check_entry(self, entry: ModelEntry | None, family: str) -> None:
        super().check_entry(entry, family)
        if family not in DENOISERS:
            raise ConfigError(
                f"The diffusion task does not know how to drive a '{family}' denoiser; families it trains: "
                f"{', '.join(DENOISERS)} (add one with train.tasks.register_denoiser)."
            )

    def data_defaults(self, entry: ModelEntry | None, config: Any) -> dict[str, Any]:
        spec = entry.default_input.tensors if entry is not None and entry.default_input else {}
        for tensor in spec.values():
            if len(tensor.shape) >= 3 and tensor.dtype.is_floating_point:
                return {"image_size": max(16, tensor.shape[-1] * self.latent_factor)}
        return {"image_size": 32}

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        self.denoiser = DENOISERS[model.family]
        self.objective = self.objective or self.denoiser.objective
        if self.timestep_shift is None:
            self.timestep_shift = self.denoiser.timestep_shift
        config = model.config
        if self.vae is None:
            self.vae = PixelLatents(self.denoiser.latent_channels(config), self.latent_factor, self.seed)
        if self.text_encoder is None:
            self.text_encoder = HashedTextEncoder(self.denoiser.text_dim(config), seed=self.seed)
        size = getattr(dataset, "image_size", None)
        multiple = self.latent_factor * self.denoiser.latent_multiple
        if isinstance(size, int) and size % multiple:
            raise ConfigError(f"image_size {size} must be a multiple of {multiple} (VAE factor x patch size)")

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        images = torch.stack([sample["image"] for sample in samples]).float() / 127.5 - 1
        text, lengths = self.text_encoder([sample["caption"] for sample in samples])
        return {"latents": self.vae.encode(images), "text": text, "text_lengths": lengths,
                "sample_ids": _sample_ids(samples)}

    def noise_and_sigma(self, batch: dict[str, Any], fixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample noise and noise level from generators seeded by the samples' stream positions; `fixed` gives
        evenly spaced levels (evaluation)."""
        latents = batch["latents"]
        noises, levels = [], []
        for row, sample_id in enumerate(batch["sample_ids"].tolist()):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(sample_id))
            noises.append(torch.randn(latents.shape[1:], generator=generator))
            if fixed:
                levels.append(torch.tensor((row + 0.5) / len(batch["sample_ids"])))
            elif self.sigma_sampling == "logit_normal":
                levels.append(torch.sigmoid(torch.randn((), generator=generator)))
            else:
                levels.append(torch.rand((), generator=generator))
        noise = torch.stack(noises).to(latents)
        u = torch.stack(levels).to(latents.device, torch.float32)
        return noise, u

    def forward(self, model: nn.Module, batch: dict[str, Any], fixed: bool = False) -> dict[str, torch.Tensor]:
        latents = batch["latents"].to(_dtype_of(model))
        noise, u = self.noise_and_sigma(batch, fixed)
        text = batch["text"].to(latents)
        if self.objective == "flow":
            sigma = shift_sigma(u, self.timestep_shift)
            s = sigma.view(-1, 1, 1, 1).to(latents)
            noisy = (1 - s) * latents + s * noise
            target = noise - latents
            level = sigma
        else:
            t = (u * self.num_train_timesteps).long().clamp_max(self.num_train_timesteps - 1)
            a = self.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1).to(latents)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            target = noise if self.objective == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
            level = t.float() / self.num_train_timesteps
        prediction = self.denoiser.predict(model, noisy, level.to(latents), text, batch["text_lengths"])
        return {"prediction": prediction, "target": target}

    def criterion(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        loss = F.mse_loss(outputs["prediction"].float(), outputs["target"].float())
        return loss, {}

    def item_outputs(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        return outputs["prediction"].flatten(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 32, device: Any = None) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in self.batches(dataset, batch_size, device):
            loss, _ = self.criterion(self.forward(model, batch, fixed=True), batch)
            total += float(loss) * len(batch["sample_ids"])
            count += len(batch["sample_ids"])
        return {"loss": total / max(count, 1)}


# ---------------------------------------------------------------------------------------------------
# registry and helpers


TASKS: dict[str, type[Task]] = {
    task.name: task for task in (
        ClassificationTask, RestorationTask, VLMSFTTask, TinyGPTVSFTTask, DiffusionTask, LanguageModelingTask
    )
}


def get_task(name: str, extra_losses: Sequence[LossTerm | dict] = (), **options: Any) -> Task:
    """A task by name, with its options (TrainConfig.task_options); unknown names and options are ConfigErrors."""
    if name not in TASKS:
        hint = closest(name, TASKS, n=1)
        raise ConfigError(
            f"Unknown task '{name}'." + (f" Did you mean '{hint[0]}'?" if hint else "")
            + f" Tasks: {', '.join(TASKS)}."
        )
    try:
        return TASKS[name](extra_losses=extra_losses, **options)
    except TypeError as error:
        raise ConfigError(f"Task '{name}' does not take these options: {error}") from error


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> float (x / 255 - mean) / std."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


def _dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _image_size_default(entry: ModelEntry | None, config: Any) -> dict[str, Any]:
    spec = entry.default_input.tensors if entry is not None and entry.default_input else {}
    for tensor in spec.values():
        if len(tensor.shape) == 3 and tensor.shape[0] in (1, 3) and tensor.shape[1] == tensor.shape[2]:
            return {"image_size": int(tensor.shape[-1])}
    size = getattr(config, "image_size", None)
    return {"image_size": size} if isinstance(size, int) else {}


from . import unit as _unit  # noqa: E402,F401  (registers unit-pretrain and unit-finetune; it imports Task from here)

__all__ = [
    "ByteTokenizer", "ClassificationTask", "DENOISERS", "Denoiser", "DiffusionTask", "DistillationLoss",
    "FeatureDistillationLoss", "HashedTextEncoder", "LOSS_TERMS", "LanguageModelingTask", "LossTerm", "PixelLatents",
    "RestorationTask", "TASKS", "Task", "TaskOutput", "TinyGPTVSFTTask", "VLMSFTTask",
    "get_task", "register_denoiser", "register_loss_term", "shift_sigma",
]
