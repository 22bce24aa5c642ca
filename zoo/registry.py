"""The model registry: names -> builders, default configs, published sources and key converters.

A model name is lowercase with hyphens (``smolvlm-256m``); ``name.tag`` selects one published source
(``smolvlm-256m.base``) and the bare name selects the first one, as in timm. Family files register
themselves when imported; the first lookup here imports zoo's family packages, so ``import zoo`` stays cheap
(the CLI's ``--help`` imports no torch). Nothing here downloads or builds weights.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ZooConfig
from .errors import ConfigError, UnknownModelError, closest, shorten

TASKS = ("vlm", "diffusion", "restoration", "backbone", "language")
FAMILY_PACKAGES = ("zoo.backbones", "zoo.diffusion", "zoo.restoration", "zoo.vlm")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


@dataclasses.dataclass(frozen=True)
class PretrainedSource:
    """Where one set of published weights lives and how to read it.

    `files` are file names or glob patterns inside the repo (after `subfolder`); left empty, the
    loader takes the repo's standard weight files. `format` names a converter of the family.
    A non-empty `url` is one weights file published outside the Hub (e.g. in a GitHub repo), downloaded by
    URL; `hub_id` then names the repo it comes from.
    `preprocess` is the evaluation preprocessing the published metrics were measured with, as timm's
    pretrained_cfg spells it (input_size, interpolation, crop_pct, mean, std). `datasets` names the data the
    weights were trained on (Hub dataset ids where there are any), for the model card. `host` is where `hub_id`
    lives: "huggingface" or "modelscope" (downloaded with the `modelscope` package). `config_overrides` are the
    config fields these weights need beyond the entry's (e.g. a quantised variant's switch). `parts` names the
    published pieces of a model assembled from several repos (part -> `owner/repo` or `owner/repo/file`), which
    the family's `from_parts` reads (TinyGPT-V); `hub_id` and `files` are then the family's own piece.
    """

    hub_id: str
    tag: str = ""
    revision: str = "main"
    files: tuple[str, ...] = ()
    subfolder: str = ""
    format: str = "zoo"
    license: str = ""
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    preprocess: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    notes: str = ""
    host: str = "huggingface"
    config_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    url: str = ""
    parts: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input without its batch dimension: floats ~ N(0, 1), or integers in [low, high)."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    low: int = 0
    high: int = 2

    def make(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (batch_size, *self.shape)
        if self.dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(self.dtype)
        return torch.randint(self.low, self.high, shape, generator=generator, dtype=self.dtype)

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"({'B, ' + ', '.join(map(str, self.shape))}) {dtype}"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What tests and the benchmark feed a model's forward, as keyword arguments.

    `tensors` describes the inputs; `factory(config, batch_size, generator)` builds them where random
    tensors of those shapes would not be valid (e.g. image tokens that must match the image count).
    """

    tensors: Mapping[str, TensorSpec]
    factory: Callable[[ZooConfig, int, torch.Generator | None], dict[str, Any]] | None = None

    def make(self, config: ZooConfig, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
        if self.factory is not None:
            return self.factory(config, batch_size, generator)
        return {name: spec.make(batch_size, generator) for name, spec in self.tensors.items()}

    def describe(self) -> dict[str, str]:
        return {name: spec.describe() for name, spec in self.tensors.items()}


@dataclasses.dataclass(frozen=True)
class Converter:
    """Maps one published checkpoint format of a family onto zoo's modules (timm's checkpoint_filter_fn).

    `convert_state_dict(state_dict, config)` renames keys (and reshapes where formats differ).
    `convert_config(published_config)` turns the format's config.json into the family's config.
    `matches_config(published_config)` says whether a folder's config belongs to this format;
    `matches_keys(keys)` recognises a bare checkpoint from signature keys.
    For a release with no config file: `read_folder(folder)` gives the config values `convert_config` takes and
    the state dict, or None when the folder is not in this format; `read_weights(folder, patterns)` reads a
    registered source's weights where `hub.load_state_dict` cannot (e.g. whole pickled modules).
    """

    name: str
    convert_state_dict: Callable[[dict[str, torch.Tensor], ZooConfig], dict[str, torch.Tensor]]
    convert_config: Callable[[dict[str, Any]], ZooConfig] | None = None
    matches_config: Callable[[dict[str, Any]], bool] | None = None
    matches_keys: Callable[[Collection[str]], bool] | None = None
    config_file: str = "config.json"
    subfolder: str = ""
    read_folder: Callable[[Path], tuple[dict[str, Any], dict[str, torch.Tensor]] | None] | None = None
    read_weights: Callable[[Path, Sequence[str]], dict[str, torch.Tensor]] | None = None


def rename_keys(
    state_dict: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str | Callable[[re.Match], str]]]
) -> dict[str, torch.Tensor]:
    """`state_dict` with every (regex pattern, replacement) rule applied, in order, to every key; tensors unchanged.
    The key-renaming step of most converters; a replacement is anything `re.sub` takes."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


@dataclasses.dataclass
class Family:
    """A model family: its model class, the converters from each published format, and its `zoo run`.

    `runner(name, args)` serves `zoo run NAME ...` for the family's models: it loads the model (and its
    pipeline), runs it on the inputs in `args` (the parsed `zoo run` options) and prints or writes the result.
    A dotted path (``"zoo.backbones.classify:run"``) names a runner imported only when it runs.
    """

    name: str
    model_cls: type[nn.Module]
    converters: dict[str, Converter]
    runner: Callable[[str, Any], None] | str | None = None

    def load_runner(self) -> Callable[[str, Any], None] | None:
        """`runner`, imported first if it is a dotted path."""
        if isinstance(self.runner, str):
            module, _, function = self.runner.partition(":")
            return getattr(importlib.import_module(module), function)
        return self.runner

    @property
    def config_cls(self) -> type[ZooConfig]:
        return self.model_cls.config_class

    def converter(self, name: str) -> Converter:
        if name not in self.converters:
            raise ConfigError(
                f"Family '{self.name}' has no converter '{name}'; it reads: {', '.join(self.converters)}."
            )
        return self.converters[name]

    def detect_converter(self, keys: Collection[str]) -> Converter:
        """The converter whose signature keys match a bare checkpoint; zoo's own format otherwise."""
        for converter in self.converters.values():
            if converter.matches_keys is not None and converter.matches_keys(keys):
                return converter
        return self.converters["zoo"]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it, what it is, and where its published weights live.

    `expected_params` is the published parameter count; tests check the built model against it.
    """

    name: str
    family: str
    task: str
    config: ZooConfig
    sources: tuple[PretrainedSource, ...] = ()
    paper: str = ""
    description: str = ""
    default_input: InputSpec | None = None
    expected_params: int | None = None

    @property
    def tags(self) -> list[str]:
        return [source.tag for source in self.sources]

    def source(self, tag: str | None = None) -> PretrainedSource:
        """The published source for `tag`, or the default (first) one."""
        if not self.sources:
            raise UnknownModelError(
                f"'{self.name}' has no published weights. Models with weights: "
                f"{shorten(list_models(pretrained=True), 12)}."
            )
        if tag is None:
            return self.sources[0]
        for source in self.sources:
            if source.tag == tag:
                return source
        raise UnknownModelError(
            f"'{self.name}' has no weights tagged '{tag}'. Tags with weights: "
            f"{', '.join(f'{self.name}.{t}' for t in self.tags)}."
        )


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, ModelEntry] = {}
_UNAVAILABLE: dict[str, str] = {}


def register_family(
    name: str,
    model_cls: type[nn.Module],
    converters: Collection[Converter] = (),
    runner: Callable[[str, Any], None] | str | None = None,
) -> Family:
    """Register a family. Zoo's own format (config fields as written by save_pretrained) is always readable."""
    if name in _FAMILIES:
        raise ValueError(f"family '{name}' is already registered")
    if not (isinstance(getattr(model_cls, "config_class", None), type)
            and issubclass(model_cls.config_class, ZooConfig)):
        raise TypeError(f"{model_cls.__name__}.config_class must be a ZooConfig subclass")
    by_name = {"zoo": Converter("zoo", convert_state_dict=_identity, convert_config=model_cls.config_class.from_dict)}
    for converter in converters:
        by_name[converter.name] = converter
    model_cls.family = name
    family = Family(name, model_cls, by_name, runner)
    _FAMILIES[name] = family
    return family


def register_model(entry: ModelEntry) -> ModelEntry:
    """Register a model name. Tags must be unique within the name; names use lowercase and hyphens."""
    if not _NAME_RE.match(entry.name):
        raise ValueError(f"model name '{entry.name}' must be lowercase letters, digits, '-' and '.'")
    if entry.name in _MODELS:
        raise ValueError(f"model '{entry.name}' is already registered")
    if entry.family not in _FAMILIES:
        raise ValueError(f"register family '{entry.family}' before its models")
    if entry.task not in TASKS:
        raise ValueError(f"task '{entry.task}' is not one of {TASKS}")
    if not isinstance(entry.config, _FAMILIES[entry.family].config_cls):
        raise TypeError(f"'{entry.name}': config must be a {_FAMILIES[entry.family].config_cls.__name__}")
    tags = entry.tags
    if len(set(tags)) != len(tags) or any(not _TAG_RE.match(t) for t in tags if tags != [""]):
        raise ValueError(f"'{entry.name}': tags must be unique lowercase words (or one untagged source), got {tags}")
    for source in entry.sources:
        _FAMILIES[entry.family].converter(source.format)
    _MODELS[entry.name] = entry
    return entry


def register_unavailable(name: str, reason: str) -> None:
    """A name users may ask for (e.g. an official release) that zoo cannot build: looking it up raises `reason`."""
    _UNAVAILABLE[name] = reason


def unregister_model(name: str) -> None:
    """Remove a model name (for tests that register temporary models)."""
    _MODELS.pop(name)


def unregister_family(name: str) -> None:
    """Remove a family and its models (for tests that register temporary families)."""
    for model_name in [n for n, e in _MODELS.items() if e.family == name]:
        _MODELS.pop(model_name)
    _FAMILIES.pop(name)


def import_families() -> None:
    """Import zoo's family packages, which register their models (at once after the first call)."""
    for package in FAMILY_PACKAGES:
        importlib.import_module(package)


def get_family(name: str) -> Family:
    import_families()
    if name not in _FAMILIES:
        raise UnknownModelError(f"Unknown family '{name}'. Families: {', '.join(sorted(_FAMILIES))}.")
    return _FAMILIES[name]


def families() -> list[Family]:
    import_families()
    return list(_FAMILIES.values())


def split_name(name: str) -> tuple[ModelEntry, str | None]:
    """Resolve `name` or `name.tag` to its entry and tag. Unknown names suggest the closest ones."""
    import_families()
    if name in _MODELS:
        return _MODELS[name], None
    base, _, tag = name.rpartition(".")
    if base in _MODELS:
        entry = _MODELS[base]
        entry.source(tag)
        return entry, tag
    if name in _UNAVAILABLE:
        raise UnknownModelError(_UNAVAILABLE[name])
    suggestions = closest(name, _MODELS)
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise UnknownModelError(f"Unknown model '{name}'.{hint} See `zoo list` for every name.")


def get_entry(name: str) -> ModelEntry:
    return split_name(name)[0]


def published_source(name: str | None, tag: str | None = None) -> tuple[ModelEntry | None, PretrainedSource | None]:
    """The entry of a model's registered `name` and the published source of its `tag` (the first for no tag), each
    None where there is none or this zoo does not register it (a model saved by another version)."""
    try:
        entry = get_entry(name) if name else None
        return entry, entry.source(tag) if entry is not None and entry.sources else None
    except UnknownModelError:
        return None, None


def list_models(
    pattern: str = "*", pretrained: bool = False, task: str | None = None, include_tags: bool | None = None
) -> list[str]:
    """Registered names matching an fnmatch `pattern`, sorted.

    With `pretrained=True` only models with published weights, listed as `name.tag` (as timm does;
    `include_tags=False` lists bare names).
    """
    import_families()
    if task is not None and task not in TASKS:
        raise ConfigError(f"Unknown task '{task}'. Tasks: {', '.join(TASKS)}.")
    include_tags = pretrained if include_tags is None else include_tags
    names = []
    for entry in _MODELS.values():
        if task is not None and entry.task != task or pretrained and not entry.sources:
            continue
        candidates = [f"{entry.name}.{t}" if t else entry.name for t in entry.tags] if include_tags else [entry.name]
        candidates = candidates or [entry.name]
        names += [c for c in candidates if fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(entry.name, pattern)]
    return sorted(names)


def build_config(name: str, **overrides: Any) -> ZooConfig:
    """The registered config of `name` with `overrides` applied (unknown fields list the valid ones)."""
    return get_entry(name).config.replace(**overrides)


def count_parameters(model: nn.Module) -> int:
    """Parameters counted once each, however often they are shared."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def format_count(n: int) -> str:
    """A parameter count for people: 2.56K, 256.48M, 2.25B."""
    for divisor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= divisor:
            return f"{n / divisor:.2f}{suffix}"
    return str(n)


def model_info(name: str) -> dict[str, Any]:
    """What a model is: params (counted on the meta device), task, paper, license, sources, default input."""
    entry, tag = split_name(name)
    family = get_family(entry.family)
    with torch.device("meta"):
        model = family.model_cls(entry.config)
    sources = [
        {"tag": s.tag, "hub_id": s.hub_id, "host": s.host, "url": s.url, "revision": s.revision, "format": s.format,
         "license": s.license, "files": list(s.files), "metrics": dict(s.metrics), "preprocess": dict(s.preprocess)}
        for s in entry.sources if tag is None or s.tag == tag
    ]
    return {
        "name": entry.name,
        "family": entry.family,
        "task": entry.task,
        "params": count_parameters(model),
        "paper": f"arXiv:{entry.paper}" if entry.paper else "",
        "license": sources[0]["license"] if sources else "",
        "description": entry.description,
        "default_input": entry.default_input.describe() if entry.default_input else {},
        "sources": sources,
    }


def _identity(state_dict: dict[str, torch.Tensor], config: ZooConfig) -> dict[str, torch.Tensor]:
    return state_dict
