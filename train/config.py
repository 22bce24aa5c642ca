"""`TrainConfig`: every setting of a training run, from keyword arguments, a YAML file and command-line flags."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, closest

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("no", "bf16", "fp16")
# Settings that may change when a run is resumed; every other one must match the checkpoint's.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "output_dir", "resume", "push_to_hub", "push_every_save", "hub_private", "hub_retries",
    "save_every", "keep_last", "eval_every", "eval_samples", "log_every", "progress", "num_workers", "report_to",
})
# YAML 1.2 floats (PyYAML follows YAML 1.1, which needs a dot and a signed exponent: `3e-3` would be a string).
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@dataclasses.dataclass
class TrainConfig:
    """One training run. `model` is a registered name (built with `model_options` as config overrides, with the
    published weights when `pretrained`) or a folder written by `save_pretrained`.

    Batches: `batch_size` samples per process and micro-step; an optimizer step sees
    batch_size x processes x gradient_accumulation_steps samples (the global batch), and the loss is the mean
    over every item of the global batch (answer tokens for vlm-sft), whatever the process count.
    Schedule: linear warmup over `warmup_steps`, then `schedule` down to lr x min_lr_ratio at `max_steps`.
    Checkpoints: every `save_every` steps (0: at the end only), the last `keep_last` kept.
    Trackers: `report_to` names accelerate's experiment trackers ("tensorboard", "wandb", ..., "all" for every
    installed one; a comma-separated string or a list) that get the metrics.jsonl records too.
    """

    model: str
    task: str
    data: str | None = None  # an embedded dataset name or a path; None: the task's embedded default
    output_dir: str = "runs/train"
    max_steps: int = 100
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    pretrained: bool = False
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    task_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra_losses: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ema_decay: float | None = None
    gradient_checkpointing: bool = False
    compile: bool = False
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    trainable: tuple[str, ...] = ()  # fnmatch patterns of parameter names: only they (and LoRA adapters) train
    save_every: int = 0
    keep_last: int = 2
    eval_every: int = 0
    eval_samples: int = 200
    log_every: int = 10
    resume: bool = False
    push_to_hub: str | None = None
    push_every_save: bool = False
    hub_private: bool = False
    hub_retries: int = 3
    num_workers: int = 0
    progress: bool = True
    report_to: str | tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.lora_targets = tuple(self.lora_targets)
        self.trainable = tuple(self.trainable)
        names = self.report_to.split(",") if isinstance(self.report_to, str) else self.report_to
        self.report_to = tuple(name.strip() for name in names if name.strip() not in ("", "none"))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a setting that cannot work, before anything is built."""
        def positive(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")

        def number(name: str, value: Any, valid: Callable[[float], bool], expected: str) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not valid(value):
                raise ConfigError(f"{name} must be {expected}, got {value!r}")

        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "keep_last", "log_every",
                     "eval_samples"):
            positive(name)
        for name in ("warmup_steps", "save_every", "eval_every", "lora_rank", "num_workers", "hub_retries", "seed"):
            positive(name, 0)
        number("lr", self.lr, lambda v: v > 0, "a finite number > 0")
        number("weight_decay", self.weight_decay, lambda v: v >= 0, "a finite number >= 0")
        number("min_lr_ratio", self.min_lr_ratio, lambda v: 0 <= v <= 1, "in [0, 1]")
        number("lora_dropout", self.lora_dropout, lambda v: 0 <= v < 1, "in [0, 1)")
        if len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers (beta1, beta2), got {list(self.betas)}")
        for index, beta in enumerate(self.betas):
            number(f"betas[{index}]", beta, lambda v: 0 <= v < 1, "in [0, 1)")
        if self.max_grad_norm is not None:
            number("max_grad_norm", self.max_grad_norm, lambda v: v > 0,
                   "a finite number > 0, or None (no clipping)")
        if self.ema_decay is not None:
            number("ema_decay", self.ema_decay, lambda v: 0 < v < 1, "in (0, 1)")
        if self.lora_alpha is not None:
            number("lora_alpha", self.lora_alpha, lambda v: v > 0, "a finite number > 0, or None (the rank)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.ema_decay is not None and self.lora_rank:
            raise ConfigError("ema_decay and lora_rank cannot be combined yet: train LoRA adapters without EMA.")
        if self.push_to_hub is not None and self.push_to_hub.count("/") != 1:
            raise ConfigError(f"push_to_hub takes a Hub repo id 'owner/name', got {self.push_to_hub!r}")
        for name in ("model_options", "data_options", "task_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
        if self.report_to:
            from accelerate.tracking import LOGGER_TYPE_TO_CLASS

            trackers = ["all", *LOGGER_TYPE_TO_CLASS]
            for name in self.report_to:
                if name not in trackers:
                    hint = closest(name, trackers, 1)
                    raise ConfigError(f"report_to: unknown tracker '{name}'"
                                      f"{f' (did you mean {hint[0]!r}?)' if hint else ''}. Trackers: "
                                      f"{', '.join(trackers)}.")

    # -----------------------------------------------------------------------------------------------
    # Conversions

    @classmethod
    def field_names(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (as in a YAML file); unknown keys are an error that suggests the closest."""
        names = cls.field_names()
        unknown = [key for key in values if key not in names]
        if unknown:
            hints = [f"'{key}'" + (f" (did you mean '{closest(key, names, 1)[0]}'?)" if closest(key, names, 1) else "")
                     for key in unknown]
            raise ConfigError(f"Unknown training setting {', '.join(hints)}. Settings: {', '.join(names)}.")
        missing = [name for name in ("model", "task") if values.get(name) is None]
        if missing:
            raise ConfigError(f"The training config needs {' and '.join(missing)}.")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _checked(key, value, hints[key]) for key, value in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML mapping of settings; `overrides` (e.g. from the command line) win over the file's."""
        return cls.from_dict({**read_yaml(path), **overrides})

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        values["lora_targets"] = list(self.lora_targets)
        values["trainable"] = list(self.trainable)
        values["report_to"] = list(self.report_to)
        return values

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """Settings that differ from a checkpoint's and would make the resumed run a different run."""
        current = self.to_dict()
        return [
            f"{key}: checkpoint {saved.get(key)!r}, now {current[key]!r}"
            for key in current
            if key not in RESUMABLE_CHANGES and _normalise(saved.get(key)) != _normalise(current[key])
        ]


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        values = yaml.load(path.read_text(), Loader=_loader()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value), got {type(values).__name__}")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _loader() -> type:
    """PyYAML's safe loader, reading `3e-3` and `5e5` as numbers (YAML 1.2) instead of strings (YAML 1.1)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))
    return Loader


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _checked(key: str, value: Any, hint: Any) -> Any:
    """`value`, or a friendly error for a value of the wrong type (YAML `lr: fast`, `max_steps: 1.5`). A whole
    float for an integer setting (`max_steps: 5e5`) becomes an int."""
    if value is None:
        if type(None) not in typing.get_args(hint) and hint not in (Any,):
            raise ConfigError(f"{key} cannot be empty")
        return value
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = [arg for arg in typing.get_args(hint) if arg is not type(None)] if is_union else [hint]
    if isinstance(value, float) and value.is_integer() and int in allowed and float not in allowed:
        return int(value)
    base_types = []
    for arg in allowed:
        origin = typing.get_origin(arg) or arg
        base_types.append({float: (int, float), tuple: (list, tuple), list: (list, tuple)}.get(origin, origin))
    flat = tuple(t for group in base_types for t in (group if isinstance(group, tuple) else (group,))
                 if isinstance(t, type))
    if flat and (not isinstance(value, flat) or isinstance(value, bool) and bool not in flat):
        expected = " or ".join(sorted({t.__name__ for t in flat}))
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    return value
