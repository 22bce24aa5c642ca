"""BLIP-2 Q-Former (query-only input) parity with transformers' Blip2QFormerModel on converted keys."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import zoo
from tests.backbones.norms import randomize_biases, randomize_norms
from zoo.backbones.qformer import (
    QFormer, QFormerConfig, qformer_config_from_transformers, qformer_state_dict_from_lavis,
    qformer_state_dict_from_transformers,
)

transformers = pytest.importorskip("transformers")

# 5 heads of 8 channels; image tokens of another width.
QFORMER = dict(hidden_size=40, num_hidden_layers=3, num_attention_heads=5, intermediate_size=56,
               encoder_hidden_size=24, layer_norm_eps=1e-6)


def _reference(**overrides):
    torch.manual_seed(0)
    model = transformers.Blip2QFormerModel(transformers.Blip2QFormerConfig(**{**QFORMER, **overrides})).eval()
    return randomize_biases(randomize_norms(model))


def _load(state_dict, values, converter=qformer_state_dict_from_transformers) -> QFormer:
    config = qformer_config_from_transformers(values)
    model = QFormer(config).eval()
    model.load_state_dict(converter(state_dict, config))
    return model


def _inputs():
    generator = torch.Generator().manual_seed(2)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return dict(query_embeds=torch.randn(2, 4, 40, generator=generator),
                encoder_hidden_states=torch.randn(2, 9, 24, generator=generator), encoder_attention_mask=mask)


@pytest.mark.parametrize("frequency", [1, 2])
def test_matches_blip2_qformer_model(frequency):
    reference = _reference(cross_attention_frequency=frequency)
    model = _load(reference.state_dict(), {**QFORMER, "cross_attention_frequency": frequency})
    assert [layer.cross_attn is not None for layer in model.layers] == [i % frequency == 0 for i in range(3)]
    inputs = _inputs()
    with torch.no_grad():
        expected = reference(**inputs).last_hidden_state
        output = model(**inputs)
        unmasked = model(inputs["query_embeds"], inputs["encoder_hidden_states"])
    assert (output - expected).abs().max() < 1e-4
    assert not torch.allclose(output[1], unmasked[1], atol=1e-3)  # the padding mask matters


def test_text_path_weights_and_the_blip2_prefix_are_dropped():
    reference = _reference(use_qformer_text_input=True)
    state_dict = {f"qformer.{k}": v for k, v in reference.state_dict().items()}
    state_dict["query_tokens"] = torch.zeros(1, 4, 40)
    assert any(".intermediate.dense" in k for k in state_dict)
    model = _load(state_dict, {"model_type": "blip-2", "qformer_config": QFORMER})
    inputs = _inputs()
    with torch.no_grad():
        assert (model(**inputs) - reference(**inputs).last_hidden_state).abs().max() < 1e-4


def test_reads_lavis_keys():
    reference = _reference()
    rules = [(r"^layernorm\.", "embeddings.LayerNorm."), (r"\.attention\.attention\.", ".attention.self."),
             (r"\.crossattention\.attention\.", ".crossattention.self.")]
    lavis = {"Qformer.bert.embeddings.position_ids": torch.arange(32)[None], "ln_vision.weight": torch.ones(24)}
    for key, value in reference.state_dict().items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        lavis[f"Qformer.bert.{key}"] = value
    model = _load(lavis, QFORMER, qformer_state_dict_from_lavis)
    inputs = _inputs()
    with torch.no_grad():
        assert (model(**inputs) - reference(**inputs).last_hidden_state).abs().max() < 1e-4


def test_config_reader_applies_transformers_defaults():
    ours = qformer_config_from_transformers({})
    theirs = transformers.Blip2QFormerConfig()
    for field in dataclasses.fields(ours):
        assert getattr(ours, field.name) == getattr(theirs, field.name), field.name


def test_bad_inputs_and_configs_say_what_to_do():
    model = QFormer(QFormerConfig(**QFORMER))
    with pytest.raises(zoo.InputError, match=r"encoder_hidden_states must be \(B, S, 24\)"):
        model(torch.randn(2, 4, 40), torch.randn(2, 9, 20))
    with pytest.raises(zoo.InputError, match=r"query_embeds must be \(B, Q, 40\)"):
        model(torch.randn(2, 4, 41), torch.randn(2, 9, 24))
    with pytest.raises(zoo.ConfigError, match=r"hidden_act must be one of 'gelu', 'gelu_pytorch_tanh', 'quick_gelu'"):
        qformer_config_from_transformers({"hidden_act": "relu"})
