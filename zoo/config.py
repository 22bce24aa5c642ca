"""Base class for model configs: dataclasses that round-trip through JSON and validate overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from .errors import ConfigError, closest

C = TypeVar("C", bound="ZooConfig")


@dataclasses.dataclass
class ZooConfig:
    """A model config. Subclasses are dataclasses; fields may be nested configs, tuples or plain values."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists, nested configs become dicts)."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a dict as written by `to_dict`; unknown keys are an error."""
        _check_names(cls, values)
        hints = typing.get_type_hints(cls)
        kwargs = {name: _from_plain(hints[name], value) for name, value in values.items()}
        return cls(**kwargs)

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some fields changed. A nested config accepts a dict of its own overrides."""
        _check_names(type(self), overrides)
        hints = typing.get_type_hints(type(self))
        changes = {}
        for name, value in overrides.items():
            current = getattr(self, name)
            if isinstance(current, ZooConfig) and isinstance(value, dict):
                changes[name] = current.replace(**value)
            else:
                changes[name] = _from_plain(hints[name], value)
        return dataclasses.replace(self, **changes)


def _check_names(cls: type[ZooConfig], values: dict[str, Any]) -> None:
    valid = cls.field_names()
    unknown = [name for name in values if name not in valid]
    if unknown:
        hints = {name: closest(name, valid, n=1) for name in unknown}
        suggestions = "; ".join(f"'{n}' (did you mean '{h[0]}'?)" if h else f"'{n}'" for n, h in hints.items())
        raise ConfigError(
            f"{cls.__name__} has no field {suggestions}. Valid fields: {', '.join(valid)}."
        )


def _to_plain(value: Any) -> Any:
    if isinstance(value, ZooConfig):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _config_type(hint: Any) -> type[ZooConfig] | None:
    """The ZooConfig class inside a hint such as `VisionConfig` or `VisionConfig | None`."""
    if isinstance(hint, type) and issubclass(hint, ZooConfig):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            found = _config_type(arg)
            if found is not None:
                return found
    return None


def _is_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_tuple(arg) for arg in typing.get_args(hint))
    return hint is tuple or typing.get_origin(hint) is tuple


def _from_plain(hint: Any, value: Any) -> Any:
    config_cls = _config_type(hint)
    if config_cls is not None and isinstance(value, dict):
        return config_cls.from_dict(value)
    if _is_tuple(hint) and isinstance(value, list):
        return _as_tuple(value)
    return value


def _as_tuple(value: Any) -> Any:
    """Lists (at any depth) back to the tuples they were written from."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value
