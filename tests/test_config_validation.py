"""Config values are checked against their annotations and each family's ranges (issue 17, bug 7)."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Annotated, Literal

import pytest

import zoo
from zoo.config import NonNegativeInt, PositiveInt, Probability, Range, ZooConfig
from zoo.registry import get_entry

TINY = zoo.list_models("*-tiny")


def _overrides(config: ZooConfig) -> typing.Iterator[tuple[str, dict, object]]:
    """(field path, overrides, bad value) for every int field (a str) and every bounded number (just outside
    its range) of `config`, nested configs included."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for field in dataclasses.fields(config):
        hint, value = hints[field.name], getattr(config, field.name)
        if isinstance(value, ZooConfig):
            for path, inner, bad in _overrides(value):
                yield f"{field.name}.{path}", {field.name: inner}, bad
            continue
        base, *marks = typing.get_args(hint) if typing.get_origin(hint) is Annotated else (hint,)
        if base is int:
            yield field.name, {field.name: "ten"}, "ten"
        for mark in marks:
            bad = next(v for v in (mark.ge - 1 if mark.ge is not None else None, mark.gt, mark.le + 1
                                   if mark.le is not None else None, mark.lt) if v is not None)
            yield field.name, {field.name: bad}, bad


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_refuse_wrong_types_and_out_of_range_overrides(name):
    cases = list(_overrides(get_entry(name).config))
    assert any(not isinstance(bad, str) for _, _, bad in cases), f"{name}'s config declares no ranges"
    for path, overrides, bad in cases:
        with pytest.raises(zoo.ConfigError, match=rf"{path.split('.')[-1]} must be .*, got {bad!r}") as caught:
            zoo.create(name, **overrides)
        if "." in path:  # a nested config names where it sits
            assert f"In {type(get_entry(name).config).__name__}.{path.split('.')[0]}:" in str(caught.value)


def test_issue_examples():
    with pytest.raises(zoo.ConfigError, match=r"LowFormerConfig\.num_classes must be int >= 0, got 'ten' \(str\)"):
        zoo.create("lowformer-tiny", num_classes="ten")
    with pytest.raises(zoo.ConfigError, match=r"LowFormerConfig\.num_classes must be int >= 0, got -1"):
        zoo.create("lowformer-tiny", num_classes=-1)
    with pytest.raises(zoo.ConfigError, match=r"WaveMixConfig\.depth must be int >= 1, got 0"):
        zoo.create("wavemix-tiny", depth=0)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_config_validates(name):
    config = get_entry(name).config
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.replace() == config


@dataclasses.dataclass
class _Inner(ZooConfig):
    size: PositiveInt = 2


@dataclasses.dataclass
class _Config(ZooConfig):
    count: NonNegativeInt = 1
    scale: float = 1.0
    rate: Probability = 0.5
    flag: bool = False
    label: str = "x"
    mode: Literal["a", "b"] = "a"
    sizes: tuple[PositiveInt, ...] = (1, 2)
    pair: tuple[int, int] = (1, 2)
    anything: tuple = ()
    optional: PositiveInt | None = None
    table: dict[str, float] | None = None
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    bounded: Annotated[float, Range(gt=0, lt=1)] = 0.5


@pytest.mark.parametrize(("overrides", "message"), [
    ({"count": True}, r"_Config\.count must be int >= 0, got True \(bool\)"),  # bool is not an int
    ({"count": 1.0}, r"count must be int >= 0, got 1\.0 \(float\)"),
    ({"scale": "1"}, r"scale must be float, got '1' \(str\)"),
    ({"rate": 1.5}, r"rate must be float >= 0 and <= 1, got 1\.5"),
    ({"rate": float("nan")}, r"rate must be float >= 0 and <= 1, got nan"),
    ({"flag": 1}, r"flag must be bool, got 1 \(int\)"),
    ({"label": 3}, r"label must be str, got 3"),
    ({"mode": "c"}, r"mode must be one of 'a', 'b', got 'c'"),
    ({"sizes": (1, 0)}, r"sizes must be tuple\[int >= 1, \.\.\.\], got \(1, 0\)"),
    ({"pair": (1, 2, 3)}, r"pair must be tuple\[int, int\], got \(1, 2, 3\)"),
    ({"optional": 0}, r"optional must be int >= 1 or None, got 0"),
    ({"table": {"a": "b"}}, r"table must be dict\[str, float\] or None"),
    ({"inner": {"size": 0}}, r"In _Config\.inner: _Inner\.size must be int >= 1, got 0"),
    ({"inner": 3}, r"inner must be a _Inner \(or a dict of its fields\), got 3"),
    ({"bounded": 1}, r"bounded must be float > 0 and < 1, got 1"),
])
def test_type_and_range_checks(overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        _Config().replace(**overrides)
    with pytest.raises(zoo.ConfigError, match=message):
        _Config.from_dict(overrides)


def test_accepted_values_are_normalised():
    config = _Config.from_dict({"scale": 2, "sizes": [3, 4], "pair": [5, 6], "anything": ["a", 1], "optional": 7,
                                "table": {"a": 1}, "inner": {"size": 8}, "mode": "b"})
    assert config.scale == 2 and config.sizes == (3, 4) and config.pair == (5, 6)  # an int is fine for a float
    assert config.anything == ("a", 1)
    assert config.inner == _Inner(8) and config.optional == 7 and config.table == {"a": 1}
    assert _Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("lowformer-tiny", {"depths": (1, 0, 1, 1, 1)}, "Stages 1 and 2 start with their downsampling block"),
    ("lowformer-tiny", {"drop_path_rate": 1.0}, r"drop_path_rate must be float >= 0 and < 1"),
    ("wavemix-tiny", {"dim": 30}, "dim divisible by 4"),
    ("wavemix-tiny", {"stem": "conv"}, "stem must be one of 'patchify', 'strided'"),
    ("smolvlm-tiny", {"scale_factor": 3}, r"scale_factor \(3\) must divide the 8x8 patch grid"),
    ("smolvlm-tiny", {"image_token_id": 320}, r"image_token_id \(320\) must be below the text vocab_size \(320\)"),
    ("smolvlm-tiny", {"text": {"num_key_value_heads": 3}}, "must be a multiple of num_key_value_heads"),
    ("smolvlm-tiny", {"text": {"head_dim": 5}}, "head size must be even"),
    ("smolvlm-tiny", {"text": {"rope_scaling": {"factr": 8.0}}}, r"rope_scaling has unknown key\(s\) \['factr'\]"),
    ("smolvlm-tiny", {"vision": {"num_attention_heads": 3}}, "hidden_size .* must be divisible by num_attention_heads"),
    ("smolvlm-tiny", {"vision": {"patch_size": 128}}, "patch_size .* must be at most image_size"),
    ("wan-tiny", {"num_heads": 3}, r"dim \(32\) must be divisible by num_heads \(3\)"),
    ("wan-tiny", {"dim": 8, "ffn_dim": 16, "num_heads": 2}, r"must be even and >= 6 \(.*\), got 4"),
    ("wan-tiny", {"patch_size": (1, 2)}, r"patch_size must be tuple\[int >= 1, int >= 1, int >= 1\]"),
    ("z-image-tiny", {"num_heads": 3}, r"must split into num_heads \(3\) heads"),
    ("z-image-tiny", {"axes_lens": (8, 8)}, r"axes_lens must be tuple"),
])
def test_family_ranges(name, overrides, message):
    with pytest.raises(zoo.ConfigError, match=message):
        zoo.create(name, **overrides)


def test_loaded_configs_are_checked(tmp_path):
    folder = zoo.create("lowformer-tiny").save_pretrained(tmp_path)
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "num_classes": "ten"}))
    with pytest.raises(zoo.ConfigError, match=r"LowFormerConfig\.num_classes must be int >= 0, got 'ten'"):
        zoo.from_pretrained(folder)
