"""Phi against transformers' PhiForCausalLM, TinyGPT-V's variant (q/k LayerNorm, RMSNorm on the attention branch)
against the same wrapped, and the fused query_key_value layout against split q/k/v."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import zoo
from tests.backbones.norms import randomize_decoder
from zoo.backbones.phi import PhiConfig, PhiForCausalLM, TRANSFORMERS, phi_config_from_transformers
from zoo.errors import ConfigError
from zoo.hub import load_weights

transformers = pytest.importorskip("transformers")

VOCAB = 256
# heads of 20 channels, 8 of them rotary (Phi-2's 0.4); TinyGPT-V's fused layout is for as many key/value heads
# as query heads, plain Phi is also tested with grouped-query attention
_TINY = dict(vocab_size=VOCAB, hidden_size=80, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=256, partial_rotary_factor=0.4, pad_token_id=0,
             bos_token_id=1, eos_token_id=2)


class _AttentionRMSNorm(nn.Module):
    """TinyGPT-V's post_layernorm around a transformers PhiAttention: RMSNorm(eps 1e-6) of its output."""

    def __init__(self, attention: nn.Module, dim: int):
        super().__init__()
        self.attention = attention
        self.norm = transformers.models.llama.modeling_llama.LlamaRMSNorm(dim, eps=1e-6)

    def forward(self, **kwargs):
        output, weights = self.attention(**kwargs)
        return self.norm(output), weights


def _reference(tinygptv: bool = False):
    values = _TINY | ({"qk_layernorm": True} if tinygptv else {"num_key_value_heads": 2})
    model = transformers.PhiForCausalLM(transformers.PhiConfig(**values))
    if tinygptv:
        for layer in model.model.layers:
            layer.self_attn = _AttentionRMSNorm(layer.self_attn, _TINY["hidden_size"])
    return randomize_decoder(model).eval()


def _tinygptv_state_dict(reference: nn.Module) -> dict[str, torch.Tensor]:
    """The wrapped reference's weights under TinyGPT-V's key names (post_layernorm on the layer)."""
    state_dict = {}
    for key, value in reference.state_dict().items():
        key = key.replace(".self_attn.attention.", ".self_attn.").replace(".self_attn.norm.", ".post_layernorm.")
        state_dict[key] = value.clone()  # the zoo model adopts these tensors: keep them apart from the reference
    return state_dict


def _fuse_qkv(state_dict: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """q/k/v projections fused into TinyGPT-V's query_key_value, interleaved per head (q, k, v of head 0, ...)."""
    fused = {}
    for key, value in state_dict.items():
        if ".self_attn.q_proj." in key:
            parts = [state_dict[key.replace(".q_proj.", f".{name}_proj.")] for name in "qkv"]
            fused[key.replace(".q_proj.", ".query_key_value.")] = torch.stack(
                [part.unflatten(0, (num_heads, -1)) for part in parts], dim=1).flatten(0, 2)
        elif ".self_attn.k_proj." not in key and ".self_attn.v_proj." not in key:
            fused[key] = value
    return fused


def _tinygptv_model(state_dict: dict[str, torch.Tensor]) -> PhiForCausalLM:
    config = phi_config_from_transformers(_TINY | {"qk_layernorm": True}).replace(attention_rms_norm=True)
    with torch.device("meta"):
        model = PhiForCausalLM(config)
    return load_weights(model, TRANSFORMERS.convert_state_dict(state_dict, config), TRANSFORMERS).eval()


def _batch():
    """Two prompts of 11 and 7 tokens, the second left-padded."""
    input_ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :4], attention_mask[1, :4] = 0, 0
    return input_ids, attention_mask


def _max_diff(model: nn.Module, reference: nn.Module) -> float:
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        logits = model(input_ids, attention_mask=attention_mask)
    return (logits - expected)[attention_mask.bool()].abs().max().item()


def test_logits_match_transformers(tmp_path):
    reference = _reference()
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert isinstance(model, PhiForCausalLM) and model.config.rotary_dim == 8
    assert model.lm_head.bias is not None
    assert _max_diff(model, reference) < 1e-4


def test_tinygptv_variant_matches_wrapped_transformers_phi():
    reference = _reference(tinygptv=True)
    model = _tinygptv_model(_tinygptv_state_dict(reference))
    assert isinstance(model.model.layers[0].post_layernorm, zoo.layers.norm.RMSNorm)
    assert _max_diff(model, reference) < 1e-4


def test_fused_query_key_value_loads_like_split_qkv():
    state_dict = _tinygptv_state_dict(_reference(tinygptv=True))
    fused = _fuse_qkv(state_dict, _TINY["num_attention_heads"])
    assert "model.layers.0.self_attn.query_key_value.bias" in fused and not any("q_proj" in key for key in fused)
    split_model, fused_model = _tinygptv_model(state_dict), _tinygptv_model(fused)
    for key, tensor in split_model.state_dict().items():
        assert torch.equal(fused_model.state_dict()[key], tensor), key
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        assert torch.equal(fused_model(input_ids, attention_mask=attention_mask),
                           split_model(input_ids, attention_mask=attention_mask))
    with pytest.raises(zoo.CheckpointError, match="not 3 per head of 3 heads"):
        TRANSFORMERS.convert_state_dict(fused, split_model.config.replace(hidden_size=60, num_attention_heads=3,
                                                                          num_key_value_heads=3))


@pytest.mark.parametrize("tinygptv", [False, True], ids=["phi", "tinygptv"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generation_matches_transformers(tinygptv, cache, tmp_path):
    reference = _reference(tinygptv)
    if tinygptv:
        model = _tinygptv_model(_tinygptv_state_dict(reference))
    else:
        reference.save_pretrained(tmp_path)
        model = zoo.from_pretrained(tmp_path)
    input_ids, attention_mask = _batch()
    expected = reference.generate(input_ids, attention_mask=attention_mask, max_new_tokens=20, do_sample=False,
                                  eos_token_id=2, pad_token_id=0)
    generated = model.generate(input_ids, attention_mask, max_new_tokens=20, cache=cache, eos_token_id=2,
                               pad_token_id=0)
    assert torch.equal(generated, expected)


def test_config_reader_takes_defaults_and_both_spellings():
    size = {"hidden_size": 2560}  # 80 channels per head, as Phi-2
    v4 = phi_config_from_transformers({**size, "partial_rotary_factor": 0.4, "rope_theta": 5e4})
    v5 = phi_config_from_transformers({**size, "rope_parameters": {"rope_type": "default", "rope_theta": 5e4,
                                                                   "partial_rotary_factor": 0.4}})
    assert v4 == v5 and v5.partial_rotary_factor == 0.4 and v5.rope_theta == 5e4
    defaults, reference = phi_config_from_transformers({}), transformers.PhiConfig()
    assert (defaults.hidden_size, defaults.intermediate_size, defaults.num_hidden_layers, defaults.vocab_size,
            defaults.partial_rotary_factor, defaults.rope_theta, defaults.layer_norm_eps, defaults.hidden_act) == (
        reference.hidden_size, reference.intermediate_size, reference.num_hidden_layers, reference.vocab_size,
        reference.rope_parameters["partial_rotary_factor"], reference.rope_parameters["rope_theta"],
        reference.layer_norm_eps, reference.hidden_act)


@pytest.mark.parametrize("values, message", [
    ({"hidden_act": "relu"}, r"hidden_act 'relu' is not supported; zoo reads 'gelu_new', 'gelu'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_type 'linear' is not supported; zoo reads 'default'"),
])
def test_unsupported_rope_or_activation_names_what_is_supported(values, message, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "phi", **values}))
    with pytest.raises(ConfigError, match=message):
        zoo.from_pretrained(tmp_path)


def test_odd_rotary_width_is_refused():
    with pytest.raises(ConfigError, match="gives 7 rotary channels; it must be a positive even number"):
        PhiConfig(hidden_size=80, num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.35)


def test_phi2_param_count_matches_transformers():
    entry = zoo.registry.get_entry("phi-2")
    config = entry.config
    with torch.device("meta"):
        reference = transformers.PhiForCausalLM(transformers.PhiConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
            partial_rotary_factor=config.partial_rotary_factor))
    assert sum(p.numel() for p in reference.parameters()) == entry.expected_params == zoo.model_info("phi-2")["params"]


def test_compiled_decoding_matches_transformers(tmp_path):
    """One prompt: the compiled step's vocabulary projection (a fused reduction, see generation.lm_logits) keeps
    the LM head's bias."""
    reference = _reference()
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    input_ids = _batch()[0][:1]
    expected = reference.generate(input_ids, max_new_tokens=20, do_sample=False, eos_token_id=2, pad_token_id=0)
    assert torch.equal(model.generate(input_ids, max_new_tokens=20, cache="static", compile=True, eos_token_id=2),
                       expected)
