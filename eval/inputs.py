"""The inputs `zoo bench` feeds a model: its registered default input, a CPU-sized preset, or shapes given with
`--input`.

`--input` takes `NAME=SHAPE` items (SHAPE without the batch dimension, e.g. `pixel_values=3x384x384`), a bare
SHAPE for a model with one input tensor, or a preset name: `default` (the registry's input, at the published
resolution) or `small` (a size a CPU runs in seconds, for the families whose default does not). Without
`--input`, CPU runs take `small` where a family has it and the GPU runs take `default`.

Models whose inputs must agree with each other (image tokens and tiles, lists of latents) build them from the
shapes through a family adapter here; every other model gets N(0, 1) floats and uniform integers of the shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from zoo.config import ZooConfig
from zoo.errors import InputError
from zoo.registry import InputSpec, ModelEntry, TensorSpec

PRESETS = ("default", "small")
Shapes = dict[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class InputAdapter:
    """How one family's inputs are made from shapes (`make(config, shapes, batch, generator)`), and its CPU-sized
    preset (`small(config, default_shapes)`: shapes, or None where the default is small enough)."""

    make: Callable[[ZooConfig, Shapes, int, torch.Generator], dict[str, Any]] | None = None
    small: Callable[[ZooConfig, Shapes], Shapes | None] | None = None


def _wan_make(config: ZooConfig, shapes: Shapes, batch: int, generator: torch.Generator) -> dict[str, Any]:
    inputs = _random(shapes, {}, batch, generator)
    inputs["timestep"] = torch.rand(batch, generator=generator) * 1000  # t in [0, 1000)
    return inputs


def _wan_small(config: ZooConfig, shapes: Shapes) -> Shapes | None:
    """At most 5 x 16 x 24 latents (480 video tokens with 1 x 2 x 2 patches), text kept at its padded length."""
    channels, *latent = shapes["hidden_states"]
    small = tuple(min(n, cap) for n, cap in zip(latent, (5, 16, 24)))
    return None if tuple(latent) == small else {**shapes, "hidden_states": (channels, *small)}


def _smolvlm_make(config: Any, shapes: Shapes, batch: int, generator: torch.Generator) -> dict[str, Any]:
    """pixel_values (tiles, 3, S, S); input_ids (L,): each row holds the tiles' <image> tokens between two halves
    of L - tiles * image_seq_len random text tokens."""
    tiles = shapes["pixel_values"]
    length = shapes["input_ids"][0]
    image_tokens = tiles[0] * config.image_seq_len
    if length < image_tokens:
        raise InputError(
            f"input_ids of length {length} cannot hold the {image_tokens} <image> tokens of {tiles[0]} tile(s) "
            f"({config.image_seq_len} per tile); give input_ids=N with N >= {image_tokens}"
        )
    text = torch.randint(0, min(config.image_token_id, config.text.vocab_size), (batch, length - image_tokens),
                         generator=generator)
    half = text.shape[1] // 2
    ids = torch.cat([text[:, :half], torch.full((batch, image_tokens), config.image_token_id), text[:, half:]], 1)
    return {"input_ids": ids, "pixel_values": torch.randn(batch, *tiles, generator=generator)}


def _zimage_make(config: ZooConfig, shapes: Shapes, batch: int, generator: torch.Generator) -> dict[str, Any]:
    """Lists of per-sample latents x (C, F, H, W) and captions (L, D), t in [0, 1]."""
    return {
        "x": [torch.randn(shapes["x"], generator=generator) for _ in range(batch)],
        "t": torch.rand(batch, generator=generator),
        "cap_feats": [torch.randn(shapes["cap_feats"], generator=generator) for _ in range(batch)],
    }


ADAPTERS: dict[str, InputAdapter] = {
    "wan": InputAdapter(make=_wan_make, small=_wan_small),
    "smolvlm": InputAdapter(make=_smolvlm_make),
    "zimage": InputAdapter(make=_zimage_make),
}


def register_input_adapter(family: str, adapter: InputAdapter) -> None:
    ADAPTERS[family] = adapter


def parse_input(items: Sequence[str] | None) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """`--input` items -> (preset or None, {name or "": shape})."""
    preset, shapes = None, {}
    for item in items or ():
        if item in PRESETS:
            preset = item
            continue
        name, _, shape = item.rpartition("=")
        try:
            dims = tuple(int(d) for d in shape.lower().split("x")) if shape else ()
        except ValueError:
            dims = ()
        if not dims or any(d < 1 for d in dims):
            raise InputError(
                f"--input {item!r}: give NAME=SHAPE with SHAPE like 3x224x224 (no batch dimension), a bare SHAPE, "
                f"or a preset ({', '.join(PRESETS)})"
            )
        shapes[name] = dims
    return preset, shapes


def default_shapes(spec: InputSpec) -> Shapes:
    return {name: tuple(t.shape) for name, t in spec.tensors.items()}


@dataclasses.dataclass
class BenchInput:
    """The inputs of one benchmark and how they were chosen."""

    kwargs: dict[str, Any]
    shapes: Shapes
    preset: str  # "default", "small" or "custom"

    def describe(self) -> str:
        parts = [f"{name} {'x'.join(map(str, shape)) or 'scalar'}" for name, shape in self.shapes.items()]
        return f"{', '.join(parts)} ({self.preset})"


def make_inputs(entry: ModelEntry, config: ZooConfig, batch: int, items: Sequence[str] | None = None,
                device: str = "cpu", seed: int = 0) -> BenchInput:
    """The benchmark inputs of `entry` built with `config` (see the module docstring)."""
    spec = entry.default_input
    if spec is None:
        raise InputError(f"'{entry.name}' registers no default input, so zoo bench cannot build one for it.")
    preset, overrides = parse_input(items)
    adapter = ADAPTERS.get(entry.family, InputAdapter())
    shapes = default_shapes(spec)
    generator = torch.Generator().manual_seed(seed)
    if not overrides and preset is None:
        preset = "small" if device == "cpu" and adapter.small is not None and adapter.small(config, shapes) else "default"
    if preset == "small" and adapter.small is not None:
        small = adapter.small(config, shapes)
        if small is not None:
            shapes = small
        else:
            preset = "default"
    elif preset == "small":
        preset = "default"  # the default input is already CPU-sized
    if overrides:
        shapes = _override(entry, spec, shapes, overrides)
        preset = "custom"
    if preset == "default" and not overrides:
        kwargs = spec.make(config, batch, generator)
    elif adapter.make is not None:
        kwargs = adapter.make(config, shapes, batch, generator)
    else:
        kwargs = _random(shapes, spec.tensors, batch, generator)
    return BenchInput(kwargs, shapes_of(kwargs), preset or "default")


def shapes_of(kwargs: Mapping[str, Any]) -> Shapes:
    """The shapes of built inputs without the batch dimension (of the first sample, for lists of tensors)."""
    shapes = {}
    for name, value in kwargs.items():
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            shapes[name] = tuple(value[0].shape)
        elif isinstance(value, torch.Tensor):
            shapes[name] = tuple(value.shape[1:])
    return shapes


def _override(entry: ModelEntry, spec: InputSpec, shapes: Shapes, overrides: Mapping[str, tuple[int, ...]]) -> Shapes:
    names = list(spec.tensors)
    shapes = dict(shapes)
    for name, shape in overrides.items():
        if name == "":
            if len(names) != 1:
                raise InputError(f"'{entry.name}' takes several inputs ({', '.join(names)}); name the one to resize, "
                                 f"e.g. --input {names[0]}={'x'.join(map(str, shapes[names[0]]))}")
            name = names[0]
        if name not in spec.tensors:
            raise InputError(f"'{entry.name}' has no input '{name}'; its inputs: "
                             + ", ".join(f"{n} {spec.tensors[n].describe()}" for n in names))
        expected = len(spec.tensors[name].shape)
        if len(shape) != expected:
            raise InputError(
                f"'{entry.name}' input {name} has {expected} dimensions besides the batch "
                f"({spec.tensors[name].describe()}), got {'x'.join(map(str, shape))}"
            )
        shapes[name] = shape
    return shapes


def _random(shapes: Shapes, specs: Mapping[str, TensorSpec], batch: int, generator: torch.Generator) -> dict:
    out = {}
    for name, shape in shapes.items():
        spec = specs.get(name, TensorSpec(shape))
        out[name] = dataclasses.replace(spec, shape=shape).make(batch, generator)
    return out


def to_device(value: Any, device: str | torch.device, dtype: torch.dtype | None = None,
              channels_last: bool = False) -> Any:
    """Tensors (nested in dicts, lists and tuples) moved to `device`; floating ones also cast to `dtype`, and 4-D
    ones laid out channels-last when asked."""
    from accelerate.utils import recursively_apply

    def place(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device, dtype if dtype is not None and tensor.is_floating_point() else None)
        return tensor.contiguous(memory_format=torch.channels_last) if channels_last and tensor.ndim == 4 else tensor

    return recursively_apply(place, value)


__all__ = ["ADAPTERS", "BenchInput", "InputAdapter", "make_inputs", "parse_input", "register_input_adapter", "to_device"]
