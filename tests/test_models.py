"""Registry-parameterised tests: every registered model, as timm does.

`*-tiny` models are built for real: forward, backward (every parameter gets a gradient), save and reload
bit-identical, and model_info's parameter count. Published sizes are built on the meta device only and
checked against their published parameter counts.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import zoo
from zoo.registry import count_parameters, get_entry, get_family

TINY = zoo.list_models("*-tiny")
PUBLISHED = [name for name in zoo.list_models() if not name.endswith("-tiny")]


def _first_tensor(output):
    """The main output of a forward: the tensor itself, or the first tensor of a tuple/dict/dataclass."""
    if isinstance(output, torch.Tensor):
        return output
    if dataclasses.is_dataclass(output):
        output = [getattr(output, f.name) for f in dataclasses.fields(output)]
    elif isinstance(output, dict):
        output = list(output.values())
    for item in output:
        if item is not None:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _inputs(name: str, model: torch.nn.Module, batch_size: int = 2) -> dict:
    entry = get_entry(name)
    assert entry.default_input is not None, f"{name} registers no default input"
    return entry.default_input.make(model.config, batch_size, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_and_backward(name):
    torch.manual_seed(0)
    model = zoo.create(name)
    output = _first_tensor(model(**_inputs(name, model)))
    assert output is not None and torch.isfinite(output).all()
    output.float().square().mean().backward()
    by_design = getattr(model, "no_gradient_from_forward", ())
    without_grad = [n for n, p in model.named_parameters()
                    if p.requires_grad and p.grad is None and n not in by_design]
    assert not without_grad, f"no gradient for {without_grad[:10]}"


def _assert_empty_batch_of(empty, reference) -> None:
    """`empty` is `reference` (a batch of one) with batch size 0: tensors (0, ...), lists of items empty."""
    if isinstance(reference, torch.Tensor):
        assert isinstance(empty, torch.Tensor) and empty.shape == (0, *reference.shape[1:]), (empty, reference.shape)
    elif isinstance(reference, list):
        assert empty == []
    elif dataclasses.is_dataclass(reference):
        for field in dataclasses.fields(reference):
            _assert_empty_batch_of(getattr(empty, field.name), getattr(reference, field.name))
    elif isinstance(reference, dict):
        assert empty.keys() == reference.keys()
        for key in reference:
            _assert_empty_batch_of(empty[key], reference[key])
    elif isinstance(reference, tuple):
        assert isinstance(empty, tuple) and len(empty) == len(reference)
        for item, reference_item in zip(empty, reference):
            _assert_empty_batch_of(item, reference_item)
    else:
        assert empty == reference


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_tiny_empty_batch_gives_empty_output(name, training):
    torch.manual_seed(0)
    model = zoo.create(name).train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        try:
            empty = model(**_inputs(name, model, batch_size=0))
        except zoo.InputError as error:  # the other acceptable answer: a clear error
            assert "empty" in str(error)
            return
        unchanged = [torch.equal(state[k], v) for k, v in model.state_dict().items() if v.is_floating_point()]
        _assert_empty_batch_of(empty, model(**_inputs(name, model, batch_size=1)))
    assert all(unchanged), "an empty batch changed the model's state (e.g. BatchNorm running statistics)"


@pytest.mark.parametrize("name", TINY)
def test_tiny_save_and_reload_bit_identical(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create(name).eval()
    loaded = zoo.from_pretrained(model.save_pretrained(tmp_path))
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    for key in state:
        assert state[key].dtype == reloaded[key].dtype and torch.equal(state[key], reloaded[key]), key
    inputs = _inputs(name, model, batch_size=1)
    with torch.no_grad():
        assert torch.equal(_first_tensor(model(**inputs)), _first_tensor(loaded(**inputs)))


@pytest.mark.parametrize("name", TINY)
def test_tiny_fsdp_units_are_disjoint_repeated_blocks(name):
    """What FSDP shards unit by unit (train.distributed): the family's repeated blocks, none inside another."""
    model = zoo.create(name)
    units = model.fsdp_units()
    assert units, f"{name} names no FSDP units: its family should return its repeated blocks"
    submodules = {id(module) for module in model.modules()}
    assert all(id(unit) in submodules for unit in units)
    inside = {id(inner) for unit in units for inner in unit.modules() if inner is not unit}
    assert not any(id(unit) in inside for unit in units)
    assert len({type(unit) for unit in units}) <= 2  # one block class (a VLM: its vision and its text blocks)


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_info_counts_real_params(name):
    assert zoo.model_info(name)["params"] == count_parameters(zoo.create(name))


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_size_param_count_on_meta(name):
    entry = get_entry(name)
    with torch.device("meta"):
        model = get_family(entry.family).model_cls(entry.config)
    params = count_parameters(model)
    assert params == zoo.model_info(name)["params"]
    if entry.expected_params is not None:
        assert params == entry.expected_params, f"{name}: {params:,} params, published {entry.expected_params:,}"
