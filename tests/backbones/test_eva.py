"""EVA ViT-g (LAVIS's, as BLIP-2 uses it) parity with transformers' Blip2VisionModel on converted keys."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import zoo
from tests.backbones.norms import randomize_biases, randomize_norms
from zoo.backbones.eva import (
    EvaVisionConfig, EvaVisionTransformer, eva_config_from_transformers, eva_state_dict_from_lavis,
    eva_state_dict_from_transformers,
)

transformers = pytest.importorskip("transformers")

# 5 heads of 8 channels, a 4x4 patch grid.
VISION = dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5, image_size=28,
              patch_size=7, layer_norm_eps=1e-5)


def _reference():
    torch.manual_seed(0)
    model = transformers.Blip2VisionModel(transformers.Blip2VisionConfig(**VISION)).eval()
    randomize_biases(randomize_norms(model))
    with torch.no_grad():  # EVA has no key bias: transformers keeps a zero there
        for layer in model.encoder.layers:
            layer.self_attn.qkv.bias[VISION["hidden_size"]: 2 * VISION["hidden_size"]] = 0
    return model


def _load(state_dict, converter=eva_state_dict_from_transformers, **overrides) -> EvaVisionTransformer:
    config = eva_config_from_transformers(VISION, **overrides)
    model = EvaVisionTransformer(config).eval()
    model.load_state_dict(converter(state_dict, config))
    return model


def _pixels(size=28):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


def test_matches_blip2_vision_model_with_and_without_ln_vision():
    reference = _reference()
    pixels = _pixels()
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True)
        with_norm = _load(reference.state_dict())(pixels)
        without_norm = _load(reference.state_dict(), post_layernorm=False)(pixels)
    assert (with_norm - expected.last_hidden_state).abs().max() < 1e-4
    assert (without_norm - expected.hidden_states[-1]).abs().max() < 1e-4
    assert not torch.allclose(with_norm, without_norm, atol=1e-2)


def test_positions_are_resized_once_at_load_time_for_a_new_image_size():
    reference = _reference()
    pixels = _pixels(42)  # a 6x6 grid from the 4x4 the weights were made for
    model = _load(reference.state_dict(), image_size=42)
    assert model.embeddings.position_embedding.shape == (1, 37, 40)
    with torch.no_grad():  # transformers resizes at run time; in float32 the two agree
        expected = reference(pixels, interpolate_pos_encoding=True).last_hidden_state
        assert (model(pixels) - expected).abs().max() < 1e-4


def _lavis_keys(state_dict):
    """transformers' Blip2VisionModel keys renamed to LAVIS's `visual_encoder.*` + `ln_vision.*`."""
    rules = [(r"^embeddings\.class_embedding$", "cls_token"), (r"^embeddings\.position_embedding$", "pos_embed"),
             (r"^embeddings\.patch_embedding\.", "patch_embed.proj."), (r"^post_layernorm\.", "ln_vision."),
             (r"^encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.norm\2."),
             (r"\.self_attn\.projection\.", ".attn.proj."), (r"^encoder\.layers\.(\d+)\.", r"blocks.\1."),
             (r"\.self_attn\.", ".attn.")]
    lavis = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        key = key if key.startswith("ln_vision.") else f"visual_encoder.{key}"
        if key.endswith("attn.qkv.bias"):
            q_bias, _, v_bias = value.chunk(3)
            lavis[key.replace("qkv.bias", "q_bias")], lavis[key.replace("qkv.bias", "v_bias")] = q_bias, v_bias
        else:
            lavis[key] = value
    return lavis


def test_reads_lavis_keys():
    reference = _reference()
    pixels = _pixels()
    model = _load(_lavis_keys(reference.state_dict()), eva_state_dict_from_lavis)
    with torch.no_grad():
        assert (model(pixels) - reference(pixels).last_hidden_state).abs().max() < 1e-4


def test_a_key_bias_is_refused():
    state_dict = _reference().state_dict()
    state_dict["encoder.layers.1.self_attn.qkv.bias"][50] = 1.0
    with pytest.raises(zoo.CheckpointError, match=r"encoder\.layers\.1\.self_attn\.qkv\.bias has a non-zero key bias"):
        _load(state_dict)


def test_config_reader_applies_transformers_defaults():
    ours = eva_config_from_transformers({"model_type": "blip-2"})
    theirs = transformers.Blip2VisionConfig()
    for field in dataclasses.fields(ours):
        if field.name != "post_layernorm":
            assert getattr(ours, field.name) == getattr(theirs, field.name), field.name
    assert ours == EvaVisionConfig(post_layernorm=True)


def test_bad_inputs_and_configs_say_what_to_do():
    model = EvaVisionTransformer(EvaVisionConfig(**VISION))
    with pytest.raises(zoo.InputError, match=r"image size 28x30 is not divisible by the patch size 7"):
        model(torch.randn(1, 3, 28, 30))
    with pytest.raises(zoo.InputError, match=r"differs from the model's 28x28"):
        model(torch.randn(1, 3, 35, 35))
    with pytest.raises(zoo.ConfigError, match=r"hidden_act must be one of 'gelu', 'gelu_pytorch_tanh', 'quick_gelu'"):
        eva_config_from_transformers({"hidden_act": "relu"})
    with pytest.raises(zoo.ConfigError, match=r"image_size \(30\) must be divisible by patch_size \(7\)"):
        EvaVisionConfig(image_size=30, patch_size=7)
