"""The timm model API every vision backbone shares (`zoo.backbones.timm_contract.TimmBackbone`), checked with
what timm users call: `timm.data` on `pretrained_cfg`, `timm.optim` on `group_matcher` and `no_weight_decay`,
grad checkpointing, and `torch.export`. Parameterised over the registered backbones, so new families are covered
as they register."""

from __future__ import annotations

import pytest
import timm
import timm.data
import timm.optim
import torch
from PIL import Image
from timm.models import group_parameters
from torch.testing import assert_close

import zoo
from zoo.backbones.lowformer import LowFormer, LowFormerConfig
from zoo.backbones.timm_contract import TimmBackbone
from zoo.registry import get_entry, get_family, list_models

FP32 = dict(rtol=0, atol=1e-5)
TINY = {"lowformer-tiny": 64, "wavemix-tiny": 32}
BLOCK = {"lowformer-tiny": "stages.2.1", "wavemix-tiny": "blocks.0"}  # a block with batch norms
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
# What each family's published evaluation uses where a source does not say: timm's `lowformer_*` configs and the
# WaveMix repo's timm config (crop_pct 1.0: the 32x32 and 64x64 sets are not resized at all).
FAMILY_EVAL = {
    "lowformer": {"interpolation": "bicubic", "crop_pct": 0.95, "crop_mode": "center", **IMAGENET},
    "wavemix": {"interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", **IMAGENET},
    # UNIT's model normalises [0, 1] pixels itself: the published CLIP processor resizes and crops only.
    "unit": {"interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", "mean": (0.0,) * 3, "std": (1.0,) * 3},
}


def _published() -> list[str]:
    """Every `name.tag` of a backbone with timm's API."""
    return [
        name for name in list_models(pretrained=True, task="backbone")
        if issubclass(get_family(get_entry(name).family).model_cls, TimmBackbone)
    ]


def _meta(name: str, **overrides) -> TimmBackbone:
    with torch.device("meta"):
        return zoo.create(name, **overrides)


def test_every_family_with_published_weights_is_covered():
    assert {get_entry(name).family for name in _published()} == set(FAMILY_EVAL)
    assert "wavemix-192-16-l3-tinyimagenet.tinyimagenet_r128" in _published()


@pytest.mark.parametrize("name", _published())
def test_resolved_data_config_is_the_published_preprocessing(name):
    entry, tag = get_entry(name), name.rpartition(".")[2]
    source = entry.source(tag)
    model = _meta(name)
    expected = {**FAMILY_EVAL[entry.family], **source.preprocess}
    assert timm.data.resolve_data_config(model=model) == expected
    assert timm.data.resolve_model_data_config(model) == expected
    assert model.default_cfg == model.pretrained_cfg
    assert model.pretrained_cfg["tag"] == tag and model.pretrained_cfg["hf_hub_id"] == source.hub_id
    assert model.pretrained_cfg["num_classes"] == entry.config.num_classes
    # A patch embedding is a conv or, as in UNIT's RADIO patch generator, a Linear on flattened patches.
    assert isinstance(model.get_submodule(model.pretrained_cfg["first_conv"]), (torch.nn.Conv2d, torch.nn.Linear))
    assert model.get_submodule(model.pretrained_cfg["classifier"]) is model.get_classifier()

    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    image = Image.new("RGB", (300, 200), (200, 30, 90))
    assert transform(image).shape == source.preprocess["input_size"]


def test_published_values_stated_by_the_releases():
    """Spot checks against the research notes, independent of the registry's own tables."""
    resolve = timm.data.resolve_model_data_config
    assert resolve(_meta("lowformer-b1")) == {"input_size": (3, 224, 224), "crop_pct": 0.95, **FAMILY_EVAL["lowformer"]}
    assert resolve(_meta("wavemix-192-16-l3"))["crop_pct"] == 1.0
    assert resolve(_meta("wavemix-256-16-l4"))["input_size"] == (3, 256, 256)
    assert resolve(_meta("wavemix-192-16-l3-tinyimagenet"))["input_size"] == (3, 64, 64)
    assert resolve(_meta("wavemix-192-16-l3-tinyimagenet.tinyimagenet_r128"))["input_size"] == (3, 128, 128)
    assert resolve(_meta("wavemix-144-7-l1-cifar10"))["mean"] == (0.4941, 0.4853, 0.4507)
    assert resolve(_meta("wavemix-192-16-l3-cityscapes"))["input_size"] == (3, 1024, 2048)


@pytest.mark.parametrize("variant", ["b0", "b1", "b1.5", "b3", "e1", "e2", "e3"])
def test_lowformer_data_config_equals_timms(variant):
    reference = timm.models.get_pretrained_cfg(f"lowformer_{variant.replace('.', '')}.in1k").to_dict()
    ours = _meta(f"lowformer-{variant}")
    assert timm.data.resolve_data_config(model=ours) == timm.data.resolve_data_config(pretrained_cfg=reference)
    for key in ("hf_hub_id", "first_conv", "classifier", "license", "num_classes"):
        assert ours.pretrained_cfg[key] == reference[key], key


def test_random_models_carry_the_family_or_registered_defaults():
    assert timm.data.resolve_model_data_config(LowFormer(LowFormerConfig(num_classes=3))) == {
        "input_size": (3, 224, 224), **FAMILY_EVAL["lowformer"]
    }
    assert timm.data.resolve_model_data_config(_meta("wavemix-tiny")) == {
        "input_size": (3, 32, 32), **FAMILY_EVAL["wavemix"]
    }
    model = zoo.create("lowformer-tiny")
    model.reset_classifier(4)
    assert model.pretrained_cfg["num_classes"] == 4 and model.pretrained_cfg["tag"] is None


def test_tag_survives_save_and_from_pretrained(tmp_path):
    name = "wavemix-192-16-l3-tinyimagenet.tinyimagenet_r128"
    model = zoo.create(name, dim=16, depth=1, ff_dim=8)
    assert model.pretrained_cfg["input_size"] == (3, 128, 128)
    loaded = zoo.from_pretrained(model.save_pretrained(tmp_path / "saved"))
    assert loaded.zoo_tag == "tinyimagenet_r128"
    assert loaded.pretrained_cfg == model.pretrained_cfg


def test_names_and_tags_this_zoo_does_not_register_fall_back_to_the_family():
    model = _meta("lowformer-b0")
    model.zoo_tag = "in22k"  # e.g. saved by a newer zoo
    assert model.pretrained_cfg["tag"] is None and model.pretrained_cfg["crop_pct"] == 0.95
    model.zoo_name = "lowformer-b9"
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 224, 224)


def test_assigned_pretrained_cfg_wins_as_in_timm():
    model = _meta("lowformer-b0")
    model.default_cfg = {"input_size": (3, 160, 160), "crop_pct": 1.0}
    assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 160, 160)


# -- grad checkpointing ---------------------------------------------------------------------------------------


def _train_step(model: TimmBackbone, images: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    torch.manual_seed(1)  # the same dropout masks in both runs
    logits = model(images)
    logits.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits.detach(), grads, {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("name", list(TINY))
def test_grad_checkpointing_recomputes_blocks_with_the_same_results(name):
    size = TINY[name]
    images = torch.randn(2, 3, size, size)
    plain = zoo.create(name).train()
    checkpointed = zoo.create(name).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()

    calls = {"plain": 0, "checkpointed": 0}
    for key, model in {"plain": plain, "checkpointed": checkpointed}.items():
        block = model.get_submodule(BLOCK[name])
        # a pre-hook: the recomputation stops early, once it has what backward needs
        block.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))

    logits, grads, buffers = _train_step(plain, images)
    logits_ckpt, grads_ckpt, buffers_ckpt = _train_step(checkpointed, images)
    assert calls == {"plain": 1, "checkpointed": 2}  # run again in backward
    assert_close(logits_ckpt, logits, **FP32)
    assert grads_ckpt.keys() == grads.keys()
    for key in grads:
        assert_close(grads_ckpt[key], grads[key], **FP32, msg=key)
    for key in buffers:  # batch-norm statistics updated once, not again by the recomputation
        assert_close(buffers_ckpt[key], buffers[key], **FP32, msg=key)

    with torch.no_grad():
        checkpointed(images)
    assert calls["checkpointed"] == 3  # nothing to recompute without gradients
    checkpointed.set_grad_checkpointing(False)
    _train_step(checkpointed, images)
    assert calls["checkpointed"] == 4


@pytest.mark.parametrize("name", list(TINY))
def test_forward_intermediates_checkpoints_too(name):
    model = zoo.create(name).train()
    model.set_grad_checkpointing()
    images = torch.randn(2, 3, TINY[name], TINY[name])
    torch.manual_seed(1)
    final, maps = model.forward_intermediates(images)
    torch.manual_seed(1)
    expected = model.forward_features(images)
    assert_close(final, expected, **FP32)
    assert all(m.grad_fn is not None for m in maps)
    sum(m.mean() for m in maps).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("stages", "blocks")))


# -- optimizer groups -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_layer_decay_groups_every_parameter_with_depth_ordered_scales(name):
    model = zoo.create(name)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    scale_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert id(param) not in scale_of, "a parameter is in two groups"
            scale_of[id(param)] = group["lr_scale"]
    params = dict(model.named_parameters())
    assert set(scale_of) == {id(p) for p in params.values()}

    layer = group_parameters(model, model.group_matcher(), reverse=True)
    by_layer = {}
    for param_name, layer_id in layer.items():
        by_layer.setdefault(layer_id, set()).add(scale_of[id(params[param_name])])
    assert all(len(scales) == 1 for scales in by_layer.values())
    scales = [by_layer[i].pop() for i in sorted(by_layer)]
    assert scales == sorted(scales) and len(set(scales)) == len(scales) > 3  # deeper layers, larger scales
    assert scale_of[id(params["stem.0.weight" if name == "wavemix-tiny" else "stem.0.conv.weight"])] == scales[0]
    assert scale_of[id(model.get_classifier().weight)] == scales[-1] == 1.0
    blocks = [n for n in params if n.startswith(("stages.", "blocks."))]
    assert scale_of[id(params[blocks[0]])] < scale_of[id(params[blocks[-1]])] < 1.0


def test_coarse_groups_are_stages():
    model = zoo.create("lowformer-tiny")
    fine = group_parameters(model, model.group_matcher())
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + len(model.stages) + 1 < len(fine)  # stem, stages, head
    assert all(len({n.split(".")[1] for n in names}) == 1 for names in coarse.values() if names[0].startswith("stages"))


@pytest.mark.parametrize("name", list(TINY))
def test_weight_decay_skips_norms_biases_and_no_weight_decay(name):
    model = zoo.create(name)
    assert model.no_weight_decay() <= set(dict(model.named_parameters()))
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    named = dict(model.named_parameters())
    expected_decay = {n for n, p in named.items() if p.ndim > 1 and n not in model.no_weight_decay()}
    assert decay == {id(named[n]) for n in expected_decay}
    assert no_decay == {id(p) for n, p in named.items() if n not in expected_decay}
    assert any("norm" in n for n in named if n not in expected_decay)


# -- export ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_torch_export_matches_eager(name):
    model = zoo.create(name).eval()
    size = TINY[name]
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, size, size),), dynamic_shapes=({0: batch},))
    exported = program.module()
    for batch_size in (1, 3):
        images = torch.randn(batch_size, 3, size, size)
        with torch.no_grad():
            assert_close(exported(images), model(images), **FP32)
