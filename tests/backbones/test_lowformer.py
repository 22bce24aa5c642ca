"""LowFormer against timm's implementation (the oracle; itself checked against the official code to 7e-7):
logits of every variant, the published parameter and MAC counts, the timm Hub and official checkpoint
formats, and the timm model contract."""

from __future__ import annotations

import re

import pytest
import torch
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

import zoo
from tests.backbones.norms import randomize_norms
from tests.hub_server import populate_cache
from zoo import hub
from zoo.backbones.lowformer import VARIANTS, LowFormer, LowFormerConfig
from zoo.registry import get_entry, get_family

timm = pytest.importorskip("timm")

FP32 = dict(rtol=0, atol=1e-5)
FAMILY = get_family("lowformer")


def _timm_name(variant: str) -> str:
    return "lowformer_" + variant.replace(".", "")


def _timm_model(variant: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norms(timm.create_model(_timm_name(variant), **kwargs)).eval()


def _load(config: LowFormerConfig, state_dict: dict, converter: str) -> LowFormer:
    """A zoo model built on the meta device and loaded strictly through `converter`, as the loaders do."""
    with torch.device("meta"):
        model = LowFormer(config)
    convert = FAMILY.converter(converter).convert_state_dict
    return hub.load_weights(model, convert(state_dict, config)).eval()


def _images(size: int = 48, batch: int = 1, channels: int = 3) -> torch.Tensor:
    """48x48 by default: 4 attention tokens in both attention stages, and odd 3x3 maps in the third stage,
    which the attention's transposed conv overshoots and crops."""
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_timm_for_every_variant(variant):
    reference = _timm_model(variant)
    model = _load(get_entry(f"lowformer-{variant}").config, reference.state_dict(), "timm")
    x = _images()
    with torch.no_grad():
        assert_close(model(x), reference(x), **FP32)


# Published MACs at 224x224 (README / papers), in millions. FlopCounterMode counts 2 FLOPs per
# multiply-accumulate of convs and matmuls (attention's two included), nothing for norms and activations.
PUBLISHED_MACS = {"b0": 944, "b1": 1411, "b1.5": 2574, "b3": 6099, "e1": 1350, "e2": 3800, "e3": 5350}
PUBLISHED_PARAMS = {"b0": 14.10, "b1": 17.94, "b1.5": 33.98, "b3": 57.09, "e1": 18.90, "e2": 22.75, "e3": 41.32}


def _macs(config: LowFormerConfig, size: int = 224) -> int:
    with torch.device("meta"):
        model = LowFormer(config).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, size, size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("variant", ["b0", "b1", "b1.5", "b3"])
def test_macs_equal_the_published_table(variant):
    assert round(_macs(VARIANTS[variant]) / 1e6) == PUBLISHED_MACS[variant]


def test_edge_variant_macs_match_the_papers_rounding_and_e3_is_b3_without_its_mlps():
    macs = {v: _macs(VARIANTS[v]) for v in ("e1", "e2", "e3", "b3")}
    assert round(macs["e1"] / 1e7) == 135  # "1.35G" in the journal paper
    assert round(macs["e2"] / 1e8) == 38  # "3.8G"
    # The README's 5350M for E3 cannot be reproduced: E3 is B3 without the 12 MLPs (two 1x1 convs C <-> 4C).
    mlps = 6 * 2 * 256 * 1024 * 14 * 14 + 6 * 2 * 512 * 2048 * 7 * 7
    assert macs["e3"] == macs["b3"] - mlps
    assert round(macs["e3"] / 1e6) == 4866


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_param_counts_equal_timm_and_the_published_table(variant):
    entry = get_entry(f"lowformer-{variant}")
    with torch.device("meta"):
        reference = timm.create_model(_timm_name(variant))
    timm_params = sum(p.numel() for p in reference.parameters())
    assert entry.expected_params == timm_params
    assert round(timm_params / 1e6, 2) == PUBLISHED_PARAMS[variant]
    assert zoo.model_info(entry.name)["params"] == timm_params


def test_registry_facts():
    info = zoo.model_info("lowformer-b1.5")
    source = info["sources"][0]
    assert info["paper"] == "arXiv:2409.03460" and info["license"] == "apache-2.0"
    assert source["hub_id"] == "timm/lowformer_b15.in1k" and source["format"] == "timm"
    assert source["metrics"] == {"top1": 81.2}
    assert source["preprocess"]["input_size"] == (3, 224, 224) and source["preprocess"]["crop_pct"] == 0.95
    assert zoo.model_info("lowformer-e3")["paper"] == "arXiv:2603.26551"
    assert zoo.list_models("lowformer*", pretrained=True) == sorted(f"lowformer-{v}.in1k" for v in VARIANTS)


# ---------------------------------------------------------------------------------------------------
# Published formats


def _timm_hub_folder(tmp_path, reference: torch.nn.Module):
    """What timm's push_to_hub writes: config.json (architecture, num_classes, pretrained_cfg) and safetensors."""
    from timm.models._hub import save_for_hf

    folder = tmp_path / "timm_repo"
    save_for_hf(reference, folder, safe_serialization=True)
    return folder


def test_timm_hub_weights_load_through_create_and_from_pretrained(tmp_path, hf_cache, offline):
    reference = _timm_model("b0")
    populate_cache(hf_cache, "timm/lowformer_b0.in1k", _timm_hub_folder(tmp_path, reference))
    x = _images()
    with torch.no_grad():
        expected = reference(x)
        assert_close(zoo.create("lowformer-b0", pretrained=True)(x), expected, **FP32)
        assert_close(zoo.from_pretrained("timm/lowformer_b0.in1k")(x), expected, **FP32)


def test_timm_hub_config_with_architecture_arguments(tmp_path):
    architecture = {"width_list": [8, 16, 24, 32, 64], "depth_list": [1, 2, 1, 1, 1], "head_widths": (64, 96)}
    reference = _timm_model("e3", num_classes=7, in_chans=1, **architecture)
    model = zoo.from_pretrained(_timm_hub_folder(tmp_path, reference))
    assert model.config == VARIANTS["e3"].replace(
        widths=(8, 16, 24, 32, 64), depths=(1, 2, 1, 1, 1), head_widths=(64, 96), num_classes=7, in_chans=1
    )
    x = _images(channels=1)
    with torch.no_grad():
        assert_close(model(x), reference(x), **FP32)


def test_timm_config_arguments_zoo_cannot_express_are_refused():
    convert = FAMILY.converter("timm").convert_config
    with pytest.raises(zoo.ConfigError, match="expand_groups"):
        convert({"architecture": "lowformer_b0", "model_args": {"expand_groups": 2}})
    with pytest.raises(zoo.ConfigError, match="lowformer_b0, lowformer_b1"):
        convert({"architecture": "lowformer_b2"})
    uniform = {"architecture": "lowformer_b1", "model_args": {"downsample_expand_ratios": [6] * 4}}
    assert convert(uniform) == VARIANTS["b1"]


def _to_original(state_dict: dict, config: LowFormerConfig, torchscript_head: bool = False) -> dict:
    """Our keys under the official release's names (LowFormerCls = backbone + ClsHead of OpSequentials)."""
    head = "head.opseq.op_list." if torchscript_head else "head.op_list."
    original = {}
    for key, value in state_dict.items():
        key = re.sub(r"^stem\.", "backbone.input_stem.op_list.", key)
        key = re.sub(r"^stages\.(\d+)\.", r"backbone.stages.\1.op_list.", key)
        key = re.sub(r"^in_conv\.", head + "0.", key)
        key = re.sub(r"^pre_classifier\.0\.", head + "2.linear.", key)
        key = re.sub(r"^pre_classifier\.1\.", head + "2.norm.", key)
        key = re.sub(r"^classifier\.", head + "3.linear.", key)
        # LowFormerBlock.total = Sequential(context, local); context = Sequential(attention, mlp) or attention
        key = key.replace(".attn.", ".total.0.0." if config.mlp else ".total.0.")
        key = key.replace(".mlp.", ".total.0.1.").replace(".local.", ".total.1.")
        key = key.replace(".conv_proj.conv.", ".conv_proj.0.").replace(".conv_proj.norm.", ".conv_proj.1.")
        original[key.replace(".pwise.", ".pwise.0.")] = value
    return original


def test_official_evalmodel_checkpoint_loads(tmp_path):
    reference = _timm_model("b0")
    config = VARIANTS["b0"]
    path = tmp_path / "evalmodel.pt"
    original = _to_original(reference.state_dict(), config)
    assert "backbone.stages.2.op_list.1.total.0.0.main.1.conv_proj.0.weight" in original
    torch.save({"state_dict": original, "epoch": 300, "best_val": 78.4}, path)
    model = zoo.create("lowformer-b0", checkpoint_path=path)
    x = _images()
    with torch.no_grad():
        assert_close(model(x), reference(x), **FP32)


@pytest.mark.parametrize(
    "overrides", [{}, {"mlp": False}, {"attention": False, "mlp": False}], ids=["attn+mlp", "attn", "local-only"]
)
@pytest.mark.parametrize("torchscript_head", [False, True], ids=["head", "opseq-head"])
def test_original_converter_inverts_the_official_layout(overrides, torchscript_head):
    reference = zoo.create("lowformer-tiny", **overrides)
    config = reference.config
    state_dict = randomize_norms(reference).state_dict()
    original = _to_original(state_dict, config, torchscript_head)
    assert FAMILY.detect_converter(original.keys()).name == "original"
    model = _load(config, original, "original")
    x = _images()
    with torch.no_grad():
        assert_close(model(x), reference.eval()(x), **FP32)


# ---------------------------------------------------------------------------------------------------
# The timm model contract


@pytest.fixture(scope="module")
def b0_pair():
    reference = _timm_model("b0")
    return _load(VARIANTS["b0"], reference.state_dict(), "timm"), reference


def test_features_head_and_feature_maps_match_timm(b0_pair):
    model, reference = b0_pair
    x = _images(64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, 256, 2, 2)
        assert_close(features, reference.forward_features(x), **FP32)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size) == (1, 1600)
        assert_close(pre_logits, reference.forward_head(features, pre_logits=True), **FP32)
        maps = model.forward_intermediates(x, intermediates_only=True)
        expected = reference.forward_intermediates(x, intermediates_only=True)
    assert [m.shape[1:] for m in maps] == [(32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2)]
    for ours, theirs in zip(maps, expected):
        assert_close(ours, theirs, **FP32)
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == [
        (f["num_chs"], f["reduction"]) for f in reference.feature_info
    ]
    assert model.num_features == reference.num_features and model.num_classes == 1000


def test_forward_intermediates_selects_and_stops_early(b0_pair):
    model, _ = b0_pair
    x = _images()
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[0, -1])
        assert [m.shape[1] for m in maps] == [32, 256]
        assert torch.equal(final, maps[-1])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [m.shape[1] for m in last_two] == [128, 256]
    with pytest.raises(zoo.ConfigError, match="out of range"):
        model.forward_intermediates(x, indices=[4])


def test_reset_classifier_and_reload(tmp_path):
    model = zoo.create("lowformer-tiny").eval()
    x = _images()
    model.reset_classifier(5)
    assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    with torch.no_grad():
        assert_close(model(x), model.forward_head(model.forward_features(x), pre_logits=True), rtol=0, atol=0)
    reloaded = zoo.from_pretrained(model.save_pretrained(tmp_path))
    assert reloaded.config.num_classes == 0
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_drop_path_only_acts_in_training():
    model = zoo.create("lowformer-tiny", drop_path_rate=0.5)
    x = _images()
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    model.train()
    torch.manual_seed(0)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_wrong_input_names_the_expected_shape():
    model = zoo.create("lowformer-tiny")
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\), got \(2, 4, 64, 64\)"):
        model(torch.randn(2, 4, 64, 64))


def test_bad_config_is_refused():
    with pytest.raises(zoo.ConfigError, match="5 widths and 5 depths"):
        zoo.create("lowformer-tiny", depths=(1, 1, 1, 1))


def test_model_card_shows_the_published_facts():
    with torch.device("meta"):
        model = LowFormer(VARIANTS["b0"])
    model.zoo_name = "lowformer-b0"
    card = hub.render_model_card(model, repo_id="me/lowformer-b0")
    assert "license: apache-2.0" in card and "arxiv:2409.03460" in card
    assert "| top1 | 78.4 |" in card and "224x224" in card and "14.10M parameters" in card
    card = hub.render_model_card(model, card_data={"preprocess": dict(get_entry("lowformer-b0").sources[0].preprocess)})
    assert "| crop_pct | 0.95 |" in card and "| interpolation | bicubic |" in card
