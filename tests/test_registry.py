"""Registry: names, tags, overrides, listing, info and the errors for bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import zoo
from tests.toy import ToyConfig, ToyModel
from zoo.config import ZooConfig
from zoo.registry import (
    InputSpec,
    ModelEntry,
    PretrainedSource,
    TensorSpec,
    count_parameters,
    format_count,
    register_model,
    split_name,
    unregister_model,
)


def test_create_builds_registered_config_with_overrides():
    model = zoo.create("toy-base", num_layers=1, hidden=4)
    assert isinstance(model, ToyModel)
    assert model.config == ToyConfig(hidden=4, num_layers=1)
    assert len(model.layers) == 1 and model.zoo_name == "toy-base"
    assert model.training  # random weights come back in train mode, as torch modules do


def test_create_dtype_and_device():
    model = zoo.create("toy-tiny", dtype="bf16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert zoo.create("toy-tiny", dtype=torch.float64).head.weight.dtype == torch.float64
    with pytest.raises(zoo.ConfigError, match="dtype must be one of float32, bfloat16, float16, float64 .*got 'int8'"):
        zoo.create("toy-tiny", dtype="int8")


def test_unknown_name_suggests_closest():
    with pytest.raises(zoo.UnknownModelError) as info:
        zoo.create("toy-bsae")
    assert "Did you mean" in str(info.value) and "toy-base" in str(info.value)
    assert "zoo list" in str(info.value)


def test_unknown_override_lists_valid_fields():
    with pytest.raises(zoo.ConfigError) as info:
        zoo.create("toy-tiny", num_layer=3)
    message = str(info.value)
    assert "'num_layer' (did you mean 'num_layers'?)" in message
    for field in ("in_features", "hidden", "num_layers", "num_classes"):
        assert field in message


def test_tag_without_weights_lists_tags_with_weights():
    with pytest.raises(zoo.UnknownModelError) as info:
        zoo.create("toy-base.nope", pretrained=True)
    assert "toy-base.zoo" in str(info.value) and "toy-base.orig" in str(info.value)
    with pytest.raises(zoo.UnknownModelError, match="has no published weights"):
        zoo.create("toy-tiny", pretrained=True)


def test_name_and_tag_resolution():
    entry, tag = split_name("toy-base.orig")
    assert entry.name == "toy-base" and tag == "orig"
    assert split_name("toy-base")[1] is None
    assert entry.source().tag == "zoo"  # the first source is the default
    assert entry.source("orig").format == "original"


def test_dotted_names_are_not_mistaken_for_tags():
    entry = ModelEntry("toy2.1-tiny", "toy", "backbone", ToyConfig(),
                       sources=(PretrainedSource("zoo-test/toy21", tag="v1"),))
    register_model(entry)
    try:
        assert split_name("toy2.1-tiny") == (entry, None)
        assert split_name("toy2.1-tiny.v1") == (entry, "v1")
        assert "toy2.1-tiny.v1" in zoo.list_models("toy2*", pretrained=True)
    finally:
        unregister_model("toy2.1-tiny")


def test_list_models_patterns_tasks_and_tags():
    assert {"toy-base", "toy-tiny"} <= set(zoo.list_models())
    assert zoo.list_models("toy-t*") == ["toy-tiny"]
    assert zoo.list_models("toy*", pretrained=True) == ["toy-base.orig", "toy-base.zoo"]
    assert zoo.list_models("toy*", pretrained=True, include_tags=False) == ["toy-base"]
    assert "toy-tiny" not in zoo.list_models(task="vlm")
    with pytest.raises(zoo.ConfigError, match="Unknown task 'vision'"):
        zoo.list_models(task="vision")


def test_model_info_counts_params_on_meta_without_allocating():
    info = zoo.model_info("toy-base")
    assert info["params"] == count_parameters(zoo.create("toy-base"))
    assert info["params"] == 2563 == zoo.registry.get_entry("toy-base").expected_params
    assert info["task"] == "backbone" and info["paper"] == "arXiv:2401.00001" and info["license"] == "mit"
    assert info["default_input"] == {"x": "(B, 8) float32"}
    assert [s["tag"] for s in info["sources"]] == ["zoo", "orig"]
    assert [s["tag"] for s in zoo.model_info("toy-base.orig")["sources"]] == ["orig"]


def test_registration_rejects_bad_entries():
    with pytest.raises(ValueError, match="lowercase"):
        register_model(ModelEntry("Toy-Big", "toy", "backbone", ToyConfig()))
    with pytest.raises(ValueError, match="already registered"):
        register_model(ModelEntry("toy-tiny", "toy", "backbone", ToyConfig()))
    with pytest.raises(ValueError, match="task"):
        register_model(ModelEntry("toy-x", "toy", "vision", ToyConfig()))
    with pytest.raises(zoo.ConfigError, match="no converter 'nonesuch'"):
        register_model(ModelEntry("toy-x", "toy", "backbone", ToyConfig(),
                                  sources=(PretrainedSource("a/b", format="nonesuch"),)))
    with pytest.raises(ValueError, match="tags must be unique"):
        register_model(ModelEntry("toy-x", "toy", "backbone", ToyConfig(),
                                  sources=(PretrainedSource("a/b", tag="t"), PretrainedSource("a/c", tag="t"))))
    assert "toy-x" not in zoo.list_models()


def test_format_count():
    assert [format_count(n) for n in (999, 2563, 256_480_000, 2_246_270_000)] == ["999", "2.56K", "256.48M", "2.25B"]


@dataclasses.dataclass
class _Inner(ZooConfig):
    width: int = 4
    sizes: tuple[int, ...] = (1, 2)


@dataclasses.dataclass
class _Outer(ZooConfig):
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    maybe: _Inner | None = None
    grid: tuple[tuple[int, int], ...] = ((1, 2), (3, 4))
    name: str = "x"


def test_config_round_trips_through_plain_dicts():
    config = _Outer(maybe=_Inner(width=8, sizes=(3,)))
    assert _Outer.from_dict(config.to_dict()) == config
    assert config.replace(inner={"width": 2}).inner == _Inner(width=2)
    with pytest.raises(zoo.ConfigError, match="_Inner has no field 'depth'"):
        config.replace(inner={"depth": 2})
    with pytest.raises(zoo.ConfigError, match="Valid fields: inner, maybe, grid, name"):
        _Outer.from_dict({"nmae": "y"})


def test_input_spec_builds_batched_inputs():
    spec = InputSpec({"x": TensorSpec((3, 4)), "ids": TensorSpec((5,), torch.long, low=2, high=7)})
    inputs = spec.make(ToyConfig(), batch_size=2, generator=torch.Generator().manual_seed(0))
    assert inputs["x"].shape == (2, 3, 4) and inputs["x"].dtype == torch.float32
    assert inputs["ids"].shape == (2, 5) and inputs["ids"].min() >= 2 and inputs["ids"].max() < 7
    assert spec.describe() == {"x": "(B, 3, 4) float32", "ids": "(B, 5) int64"}
