"""Base class for model configs: dataclasses that round-trip through JSON and check every value they hold.

Each field's annotation is its contract, checked whenever a config is built (directly, by `replace`, by
`from_dict` or by a converter): `int`, `float` (an int is fine), `bool` (not an int), `str`, `Literal`, tuples,
dicts, `X | None` and nested configs, with ranges attached through `Annotated` (the aliases below, as pydantic
spells them). Constraints between fields go in a family's `validate()`:

    @dataclasses.dataclass
    class MyConfig(ZooConfig):
        dim: PositiveInt = 64
        num_heads: PositiveInt = 4
        dropout: Probability = 0.1

        def validate(self) -> None:
            self.check_divisible("dim", "num_heads")
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Annotated, Any, Literal, TypeVar

from .errors import ConfigError, closest

C = TypeVar("C", bound="ZooConfig")


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a finite number, attached to its type: ``Annotated[float, Range(ge=0, lt=1)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __call__(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {bound}" for op, bound in bounds if bound is not None)


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Probability = Annotated[float, Range(ge=0, le=1)]


@dataclasses.dataclass
class ZooConfig:
    """A model config. Subclasses are dataclasses; fields may be nested configs, tuples or plain values."""

    def __post_init__(self) -> None:
        for name, hint in _type_hints(type(self)).items():
            value = getattr(self, name)
            try:
                checked = _check(hint, value)
            except _Mismatch:
                shown = f"{value!r}" + ("" if value is None else f" ({type(value).__name__})")
                raise ConfigError(f"{type(self).__name__}.{name} must be {_describe(hint)}, got {shown}.") from None
            except ConfigError as error:  # from a nested config given as a dict
                raise ConfigError(f"In {type(self).__name__}.{name}: {error}") from None
            if checked is not value:
                object.__setattr__(self, name, checked)
        self.validate()

    def validate(self) -> None:
        """Checks between fields, beyond what the annotations say; raise ConfigError naming the fields."""

    def check_divisible(self, field: str, by: str) -> None:
        """A ConfigError unless field `field` is a multiple of field `by` (a width and its heads, an image and its
        patches)."""
        value, divisor = getattr(self, field), getattr(self, by)
        if value % divisor:
            raise ConfigError(f"{type(self).__name__}.{field} ({value}) must be divisible by {by} ({divisor}).")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists, nested configs become dicts)."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a dict as written by `to_dict`; unknown keys and wrong values are an error."""
        _check_names(cls, values)
        return cls(**values)

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some fields changed. A nested config accepts a dict of its own overrides."""
        _check_names(type(self), overrides)
        changes = {}
        for name, value in overrides.items():
            current = getattr(self, name)
            if isinstance(current, ZooConfig) and isinstance(value, dict):
                try:
                    value = current.replace(**value)
                except ConfigError as error:
                    raise ConfigError(f"In {type(self).__name__}.{name}: {error}") from None
            changes[name] = value
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


@functools.cache
def _type_hints(cls: type[ZooConfig]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class _Mismatch(Exception):
    """A value that does not fit a type hint (turned into a ConfigError naming the field)."""


def _check(hint: Any, value: Any) -> Any:
    """`value` if it fits `hint`, with lists made tuples and dicts made configs where the hint says so."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Annotated:
        value = _check(args[0], value)
        if not all(check(value) for check in args[1:]):
            raise _Mismatch
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _check(arm, value)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if any(type(value) is type(option) and value == option for option in args):
            return value
        raise _Mismatch
    if tuple in (origin, hint):
        if not isinstance(value, (tuple, list)):
            raise _Mismatch
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(args[0], item) for item in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_check(arm, item) for arm, item in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        key_hint, value_hint = args or (Any, Any)
        return {_check(key_hint, k): _check(value_hint, v) for k, v in value.items()}
    if hint is type(None):
        if value is None:
            return value
        raise _Mismatch
    if isinstance(hint, type) and issubclass(hint, ZooConfig) and isinstance(value, dict):
        return hint.from_dict(value)
    if hint is float:
        hint = (int, float)
    if isinstance(value, bool) and hint is not bool:
        raise _Mismatch
    if not isinstance(value, origin or hint):
        raise _Mismatch
    return value


def _describe(hint: Any) -> str:
    """`hint` as the error messages say it: ``int >= 1``, ``tuple[int >= 0, ...]``, ``one of 'a', 'b'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return " ".join([_describe(args[0]), *map(str, args[1:])])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in args)
    if origin is Literal:
        return f"one of {', '.join(map(repr, args))}"
    if origin in (tuple, dict):
        inner = ", ".join("..." if arm is Ellipsis else _describe(arm) for arm in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and issubclass(hint, ZooConfig):
        return f"a {hint.__name__} (or a dict of its fields)"
    return getattr(hint, "__name__", str(hint))


def _to_plain(value: Any) -> Any:
    if isinstance(value, ZooConfig):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value
