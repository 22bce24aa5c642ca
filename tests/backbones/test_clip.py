"""CLIP vision tower parity with transformers' CLIPVisionModel, its checkpoints, and its input checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import zoo
from tests.backbones.norms import randomize_biases, randomize_norms
from tests.hub_server import populate_cache
from zoo.backbones.clip import CLIPVision, CLIPVisionConfig, clip_vision_config_from_transformers

transformers = pytest.importorskip("transformers")

# 3 heads of 16 channels, non-default eps and activation, so a field read wrong shows.
VISION = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=3, image_size=32,
              patch_size=8, layer_norm_eps=1e-6)


def _reference(**overrides):
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**{**VISION, **overrides})).eval()
    return randomize_biases(randomize_norms(model))


def _pixels(height=32, width=32, batch=2):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_hidden_states_and_pooled_output_match_transformers(hidden_act, tmp_path):
    reference = _reference(hidden_act=hidden_act)
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert isinstance(model, CLIPVision) and model.config.hidden_act == hidden_act
    pixels = _pixels()
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True)
        output = model(pixels, output_hidden_states=True)
    assert len(output.hidden_states) == len(expected.hidden_states) == 4
    for ours, theirs in zip(output.hidden_states, expected.hidden_states):
        assert (ours - theirs).abs().max() < 1e-4
    assert (output.last_hidden_state - expected.last_hidden_state).abs().max() < 1e-4
    assert (output.pooler_output - expected.pooler_output).abs().max() < 1e-4


@pytest.mark.parametrize(("layer", "feature"), [(-2, "patch"), (-2, "cls_patch"), (-1, "patch"), (1, "cls_patch")])
def test_selected_features_are_llava_hidden_states(layer, feature, tmp_path):
    reference = _reference()
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    pixels = _pixels()
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True).hidden_states[layer]
        features = model.select_features(pixels, layer=layer, feature=feature)
    expected = expected[:, 1:] if feature == "patch" else expected
    assert features.shape == expected.shape
    assert (features - expected).abs().max() < 1e-4


def test_non_square_images_with_interpolated_positions_match_transformers(tmp_path):
    reference = _reference()
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    pixels = _pixels(40, 24)
    with torch.no_grad():
        expected = reference(pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-2]
        features = model.select_features(pixels, layer=-2, feature="cls_patch", interpolate_pos_encoding=True)
    assert features.shape == (2, 1 + 5 * 3, 48)
    assert (features - expected).abs().max() < 1e-4


def test_reads_the_vision_tower_of_a_full_clip_checkpoint(tmp_path):
    reference = _full_clip()
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert isinstance(model, CLIPVision) and model.config == CLIPVisionConfig(**VISION)
    pixels = _pixels()
    with torch.no_grad():
        expected = reference.vision_model(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert (model.select_features(pixels) - expected).abs().max() < 1e-4


def _full_clip():
    torch.manual_seed(0)
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    reference = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=VISION)).eval()
    return randomize_biases(randomize_norms(reference))


def test_registered_source_loads_through_the_hub_cache(tmp_path, hf_cache, offline):
    reference = _full_clip()
    reference.save_pretrained(tmp_path / "ckpt")
    populate_cache(hf_cache, "openai/clip-vit-large-patch14-336", tmp_path / "ckpt")
    model = zoo.create("clip-vit-l-336", pretrained=True, **VISION)
    pixels = _pixels()
    with torch.no_grad():
        expected = reference.vision_model(pixels).pooler_output
        assert (model(pixels).pooler_output - expected).abs().max() < 1e-4


def test_config_reader_applies_transformers_defaults():
    ours = clip_vision_config_from_transformers({"model_type": "clip_vision_model"})
    theirs = transformers.CLIPVisionConfig()
    for field in dataclasses.fields(ours):
        assert getattr(ours, field.name) == getattr(theirs, field.name), field.name
    assert clip_vision_config_from_transformers({"model_type": "clip"}) == ours


def test_unsupported_activation_names_the_supported_ones():
    with pytest.raises(zoo.ConfigError, match=r"hidden_act must be one of 'quick_gelu', 'gelu', got 'relu'"):
        clip_vision_config_from_transformers({"hidden_act": "relu"})


def test_image_size_not_divisible_by_the_patch_is_an_input_error():
    model = zoo.create("clip-vit-tiny")
    with pytest.raises(zoo.InputError, match=r"image size 30x32 is not divisible by the patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(zoo.InputError, match=r"interpolate_pos_encoding=True"):
        model(torch.randn(1, 3, 40, 32))
    with pytest.raises(zoo.InputError, match=r"layer 3 is out of range for 3 hidden states"):
        model.select_features(torch.randn(1, 3, 32, 32), layer=3)
