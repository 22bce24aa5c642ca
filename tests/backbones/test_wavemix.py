"""WaveMix against the authors' pip package `wavemix` 0.2.4 (the reference implementation itself): outputs of
small and published configs, parameter counts, the `cloudwalker/wavemix` checkpoints, input-size errors and
the timm model contract."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.testing import assert_close

import zoo
from eval.references import import_wavemix_classification
from tests.backbones.norms import randomize_norms
from tests.hub_server import populate_cache
from zoo import hub
from zoo.backbones.wavemix import PatchifyStem, WaveMix, WaveMixConfig
from zoo.registry import get_entry, get_family

FP32 = dict(rtol=0, atol=1e-5)
FAMILY = get_family("wavemix")


@pytest.fixture(scope="module")
def pip_wavemix():
    """The pip package, imported through the numpy 2 shim that `zoo bench --compare wavemix` uses too."""
    pytest.importorskip("pywt")
    return import_wavemix_classification(), importlib.import_module("wavemix.SemSegment")


def _pip_model(
    pip_wavemix, *, dim, depth, level, num_classes, stem="pachify", patch_size=4, stride=2, segmentation=None,
    semsegment=False,
):
    """A pip WaveMix as the authors' Saved_weights/*.py scripts build them (mult 2, ff_channel = final_dim,
    dropout 0.5); `segmentation` replaces `pool` by the Cityscapes script's head of those widths."""
    classification, semsegment_module = pip_wavemix
    torch.manual_seed(0)
    common = {"num_classes": num_classes, "depth": depth, "mult": 2, "ff_channel": dim, "final_dim": dim,
              "dropout": 0.5, "level": level}
    if semsegment:
        return semsegment_module.WaveMix(**common, stride=stride)
    model = classification.WaveMix(**common, initial_conv=stem, patch_size=patch_size, stride=stride)
    if segmentation:
        first, second = segmentation
        model.pool = torch.nn.Sequential(
            torch.nn.ConvTranspose2d(dim, first, 4, stride=2, padding=1),
            torch.nn.ConvTranspose2d(first, second, 4, stride=2, padding=1),
            torch.nn.Conv2d(second, num_classes, 1),
        )
    return model


def _load(config: WaveMixConfig, state_dict: dict) -> WaveMix:
    """A zoo model built on the meta device and loaded strictly through the 'original' converter."""
    converter = FAMILY.detect_converter(state_dict.keys())
    assert converter.name == "original"
    with torch.device("meta"):
        model = WaveMix(config)
    return hub.load_weights(model, converter.convert_state_dict(state_dict, config)).eval()


def _images(size, batch=2):
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


# pip arguments, zoo config fields and input size of small models covering every level count, stem and head.
SMALL_CASES = {
    "l1-patch4": ({"level": 1}, {"levels": 1}, 16),
    "l2-patch8": ({"level": 2, "patch_size": 8}, {"levels": 2, "patch_size": 8}, 32),
    "l3-patch4": ({"level": 3}, {"levels": 3}, 32),
    "l4-patch4": ({"level": 4}, {"levels": 4}, 64),
    "l1-strided1": ({"level": 1, "stem": "strided", "stride": 1}, {"levels": 1, "stem": "strided", "stem_stride": 1},
                    8),
    "l4-strided2": ({"level": 4, "stem": "strided", "stride": 2}, {"levels": 4, "stem": "strided", "stem_stride": 2},
                    64),
    "cityscapes-head": ({"level": 3, "segmentation": (16, 8)}, {"levels": 3, "segmentation_widths": (16, 8)}, (32, 64)),
    "semsegment": (
        {"level": 2, "stride": 2, "semsegment": True},
        {"levels": 2, "stem": "strided", "stem_stride": 2, "segmentation_widths": (12, 6)}, 16,
    ),
}


@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_outputs_match_pip_package(pip_wavemix, case):
    pip_kwargs, zoo_kwargs, size = SMALL_CASES[case]
    reference = randomize_norms(_pip_model(pip_wavemix, dim=24, depth=2, num_classes=10, **pip_kwargs)).eval()
    config = WaveMixConfig(dim=24, ff_dim=24, depth=2, num_classes=10, **zoo_kwargs)
    model = _load(config, reference.state_dict())
    x = _images(size)
    with torch.no_grad():
        expected = reference(x)
        assert_close(model(x), expected, **FP32)
    if config.segmentation_widths:
        assert expected.shape == (2, 10, *x.shape[-2:])


# Each published file's config, as the repo's Saved_weights/*.py scripts build it, and the parameter count in
# millions that the authors state (in the file name, or the paper for Places-365), where they state one.
PUBLISHED = {
    "wavemix-192-16-l3": (dict(dim=192, depth=16, level=3, num_classes=1000), 28),
    "wavemix-192-16-l1": (dict(dim=192, depth=16, level=1, num_classes=1000), 12),
    "wavemix-256-16-l3": (dict(dim=256, depth=16, level=3, num_classes=1000), None),
    "wavemix-256-16-l4": (dict(dim=256, depth=16, level=4, num_classes=1000, stem="strided", stride=2), None),
    "wavemix-256-12-l2-places365": (dict(dim=256, depth=12, level=2, num_classes=365, patch_size=8), 28),
    "wavemix-144-7-l1-cifar10": (dict(dim=144, depth=7, level=1, num_classes=10, stem="strided", stride=1), None),
    "wavemix-320-8-l1-cifar10": (dict(dim=320, depth=8, level=1, num_classes=10, stem="strided", stride=1), None),
    "wavemix-256-8-l1-cifar100": (dict(dim=256, depth=8, level=1, num_classes=100, stem="strided", stride=1), None),
    "wavemix-256-10-l1-cifar100": (dict(dim=256, depth=10, level=1, num_classes=100, stem="strided", stride=1), None),
    "wavemix-256-12-l1-tinyimagenet": (
        dict(dim=256, depth=12, level=1, num_classes=200, stem="strided", stride=1), None
    ),
    "wavemix-192-16-l3-tinyimagenet": (dict(dim=192, depth=16, level=3, num_classes=200), 28),
    "wavemix-192-16-l1-galaxy10": (dict(dim=192, depth=16, level=1, num_classes=10), None),
    "wavemix-192-16-l3-galaxy10": (dict(dim=192, depth=16, level=3, num_classes=10), None),
    "wavemix-192-16-l3-cityscapes": (dict(dim=192, depth=16, level=3, num_classes=20, segmentation=(128, 64)), 28),
}


def test_every_published_model_is_covered():
    assert sorted(PUBLISHED) == [n for n in zoo.list_models("wavemix-*") if n != "wavemix-tiny"]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_param_counts_equal_the_pip_package_and_the_published_ones(pip_wavemix, name):
    pip_kwargs, published_millions = PUBLISHED[name]
    with torch.device("meta"):
        reference = _pip_model(pip_wavemix, **pip_kwargs)
    params = sum(p.numel() for p in reference.parameters())
    assert get_entry(name).expected_params == params == zoo.model_info(name)["params"]
    if published_millions is not None:
        assert round(params / 1e6) == published_millions


FAST_PUBLISHED = ("wavemix-144-7-l1-cifar10", "wavemix-192-16-l3-cityscapes")


@pytest.mark.parametrize(
    "name", [n if n in FAST_PUBLISHED else pytest.param(n, marks=pytest.mark.slow) for n in PUBLISHED]
)
def test_published_configs_match_pip_package(pip_wavemix, name):
    pip_kwargs, _ = PUBLISHED[name]
    reference = randomize_norms(_pip_model(pip_wavemix, **pip_kwargs)).eval()
    config = get_entry(name).config
    model = _load(config, reference.state_dict())
    x = _images(max(32, config.reduction * 2**config.levels), batch=1)
    with torch.no_grad():
        assert_close(model(x), reference(x), **FP32)


def test_published_weights_load_from_the_hub_cache(pip_wavemix, tmp_path, hf_cache, offline):
    reference = randomize_norms(_pip_model(pip_wavemix, **PUBLISHED["wavemix-144-7-l1-cifar10"][0])).eval()
    release = tmp_path / "release"
    (release / "Saved_Models_Weights" / "cifar10").mkdir(parents=True)
    path = release / "Saved_Models_Weights" / "cifar10" / "cifar10_94.58.pth"
    torch.save(reference.state_dict(), path)
    (release / "Saved_Models_Weights" / "cifar10" / "cifar10_95.37.pth").write_bytes(b"another model")
    populate_cache(hf_cache, "cloudwalker/wavemix", release)
    x = _images(32)
    with torch.no_grad():
        expected = reference(x)
        assert_close(zoo.create("wavemix-144-7-l1-cifar10", pretrained=True)(x), expected, **FP32)
        assert_close(zoo.create("wavemix-144-7-l1-cifar10", checkpoint_path=path)(x), expected, **FP32)


def test_registry_facts():
    info = zoo.model_info("wavemix-192-16-l3")
    source = info["sources"][0]
    assert info["license"] == "mit" and info["paper"] == "arXiv:2205.14375"
    assert source["hub_id"] == "cloudwalker/wavemix" and source["format"] == "original"
    assert source["files"] == ["Saved_Models_Weights/ImageNet/wavemix_192_16_75.06.pth"]
    assert source["metrics"] == {"top1": 75.06} and source["preprocess"]["crop_pct"] == 1.0
    tags = zoo.list_models("wavemix-192-16-l3-tinyimagenet*", pretrained=True)
    assert tags == ["wavemix-192-16-l3-tinyimagenet.tinyimagenet", "wavemix-192-16-l3-tinyimagenet.tinyimagenet_r128"]
    assert zoo.model_info("wavemix-192-16-l3-cityscapes")["sources"][0]["metrics"] == {"miou": 83.04}


@pytest.mark.parametrize(
    ("name", "size", "step"),
    [("wavemix-tiny", (30, 32), 8), ("wavemix-192-16-l3", (200, 224), 32), ("wavemix-256-16-l4", (224, 224), 64)],
)
def test_input_sizes_the_stem_and_levels_cannot_divide_are_a_clear_error(name, size, step):
    with torch.device("meta"):
        model = WaveMix(get_entry(name).config)
    with pytest.raises(ValueError, match=rf"divisible by {step} .* got {size[0]}x{size[1]}\. .* e\.g\. to \d+x\d+"):
        model(torch.empty(1, 3, *size, device="meta"))


def test_wrong_channels_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\), got \(1, 1, 32, 32\)"):
        zoo.create("wavemix-tiny")(torch.randn(1, 1, 32, 32))


def test_bad_config_is_refused():
    with pytest.raises(zoo.ConfigError, match="dim divisible by 4"):
        zoo.create("wavemix-tiny", dim=30)
    with pytest.raises(zoo.ConfigError, match="stem must be one of"):
        zoo.create("wavemix-tiny", stem="conv")


# ---------------------------------------------------------------------------------------------------
# The timm model contract


def test_features_head_and_feature_maps():
    model = zoo.create("wavemix-tiny").eval()
    x = _images(32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 32, 16, 16)
        assert_close(model.forward_head(features, pre_logits=True), features.mean((2, 3)), rtol=0, atol=0)
        final, maps = model.forward_intermediates(x)
        assert len(maps) == 2 and torch.equal(final, features) and torch.equal(maps[-1], features)
        (first,) = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        assert_close(first, maps[0], rtol=0, atol=0)
    assert model.feature_info == [
        {"num_chs": 32, "reduction": 2, "module": "blocks.0"}, {"num_chs": 32, "reduction": 2, "module": "blocks.1"}
    ]
    assert model.num_features == 32 and model.num_classes == 10


def test_channels_last_trunk_on_cpu_agrees_with_the_plain_layout():
    model = randomize_norms(zoo.create("wavemix-tiny", levels=3)).eval()
    x = _images(32)
    with torch.no_grad():
        features = model.forward_features(x)
        plain = model.blocks(model.stem(x))
    assert features.is_contiguous() and plain.is_contiguous()
    assert_close(features, plain, **FP32)


@pytest.mark.parametrize(
    "in_chans, patch_size, size", [(3, 4, (32, 48)), (1, 2, (8, 12)), (3, 8, (16, 8)), (3, 4, (4, 8))]
)
def test_eval_stem_runs_its_three_convs_as_one(in_chans, patch_size, size):
    """In eval the patchify stem runs its three convs as one, minus the image ring's share at the edges. It must
    equal the three convs everywhere (edges, corners and a single output row included), gradients too."""
    stem = randomize_norms(PatchifyStem(in_chans, 24, patch_size)).eval()
    three_convs = torch.nn.Sequential(*stem)
    x = torch.randn(2, in_chans, *size, requires_grad=True)
    expected, fused = three_convs(x), stem(x)
    assert_close(fused, expected, **FP32)
    assert_close(torch.autograd.grad(fused.square().sum(), x), torch.autograd.grad(expected.square().sum(), x), **FP32)


def test_reset_classifier_and_reload(tmp_path):
    model = zoo.create("wavemix-tiny").eval()
    x = _images(32)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
    reloaded = zoo.from_pretrained(model.save_pretrained(tmp_path))
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_segmentation_head_contract():
    model = zoo.create("wavemix-tiny", patch_size=4, segmentation_widths=(16, 8), num_classes=5).eval()
    x = _images(32)
    with torch.no_grad():
        assert model(x).shape == (2, 5, 32, 32)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 8, 32, 32)
    model.reset_classifier(7)
    assert isinstance(model.get_classifier(), torch.nn.Conv2d) and model(x).shape == (2, 7, 32, 32)


def test_model_card_shows_the_published_facts():
    with torch.device("meta"):
        model = WaveMix(get_entry("wavemix-192-16-l3").config)
    model.zoo_name = "wavemix-192-16-l3"
    card = hub.render_model_card(model)
    assert "license: mit" in card and "arxiv:2205.14375" in card
    assert "| top1 | 75.06 |" in card and "224x224" in card and "27.86M parameters" in card
    preprocess = dict(get_entry("wavemix-192-16-l3").sources[0].preprocess)
    card = hub.render_model_card(model, card_data={"preprocess": preprocess})
    assert "| input_size | (3, 224, 224) |" in card and "| crop_pct | 1.0 |" in card
