"""The Llama-family decoders (Llama 3.x, Qwen2/2.5, Qwen3) against transformers: logits, greedy generation,
config reading and published sizes."""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

import zoo
from tests.backbones.norms import randomize_decoder
from zoo.backbones.llama import LlamaForCausalLM, llama_config_from_transformers
from zoo.backbones.qwen import (
    Qwen2ForCausalLM, Qwen3ForCausalLM, qwen2_config_from_transformers, qwen3_config_from_transformers,
)
from zoo.errors import ConfigError

transformers = pytest.importorskip("transformers")

VOCAB = 256
# Odd head counts and grouped-query attention in every case; Qwen3's head_dim is not hidden_size / heads.
_TINY = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=3, max_position_embeddings=256,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)
CASES = {
    "llama3": ("LlamaForCausalLM", LlamaForCausalLM, dict(
        num_attention_heads=6, num_key_value_heads=3, rms_norm_eps=1e-5, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2ForCausalLM", Qwen2ForCausalLM, dict(
        num_attention_heads=3, num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen2-sliding": ("Qwen2ForCausalLM", Qwen2ForCausalLM, dict(
        num_attention_heads=6, num_key_value_heads=2, use_sliding_window=True, sliding_window=5, max_window_layers=1)),
    "qwen2-tied": ("Qwen2ForCausalLM", Qwen2ForCausalLM, dict(
        num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3ForCausalLM", Qwen3ForCausalLM, dict(
        num_attention_heads=5, num_key_value_heads=1, head_dim=14, attention_bias=True)),
}


def _reference(case: str):
    class_name, _, values = CASES[case]
    model_cls = getattr(transformers, class_name)
    config = model_cls.config_class(**_TINY, **values)
    return randomize_decoder(model_cls(config).eval())


def _loaded(case: str, tmp_path):
    reference = _reference(case)
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert type(model) is CASES[case][1]
    return reference, model


def _batch():
    """Two prompts of 11 and 7 tokens, the second left-padded."""
    input_ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :4], attention_mask[1, :4] = 0, 0
    return input_ids, attention_mask


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case, tmp_path):
    reference, model = _loaded(case, tmp_path)
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        logits = model(input_ids, attention_mask=attention_mask)
        unpadded = model(input_ids[:1])
    real = attention_mask.bool()
    diff = (logits - expected)[real].abs().max().item()
    assert diff < 1e-4, diff
    assert (unpadded - expected[:1]).abs().max() < 1e-4


def test_qwen_options_reach_the_layers(tmp_path):
    _, qwen2 = _loaded("qwen2", tmp_path / "qwen2")
    attention = qwen2.model.layers[0].self_attn
    assert attention.q_proj.bias is not None and attention.o_proj.bias is None
    assert isinstance(attention.q_norm, torch.nn.Identity)
    _, qwen3 = _loaded("qwen3", tmp_path / "qwen3")
    attention = qwen3.model.layers[0].self_attn
    assert attention.head_dim == 14 and attention.q_norm.weight.shape == (14,)
    _, sliding = _loaded("qwen2-sliding", tmp_path / "sliding")
    assert [layer.self_attn.sliding_window for layer in sliding.model.layers] == [None, 5, 5]
    _, tied = _loaded("qwen2-tied", tmp_path / "tied")
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


@pytest.mark.parametrize("case", ["llama3", "qwen2", "qwen3"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generation_matches_transformers(case, cache, tmp_path):
    reference, model = _loaded(case, tmp_path)
    input_ids, attention_mask = _batch()
    expected = reference.generate(input_ids, attention_mask=attention_mask, max_new_tokens=20, do_sample=False,
                                  eos_token_id=2, pad_token_id=0)
    generated = model.generate(input_ids, attention_mask, max_new_tokens=20, cache=cache, eos_token_id=2,
                               pad_token_id=0)
    assert generated.shape == expected.shape
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_model_brings_its_own_cache(cache, tmp_path):
    """A family whose layers keep other state (SpikingBrain's linear attention) plugs its cache into the one loop."""
    from zoo.layers.attention import DynamicCache, StaticCache

    class CountingCache(DynamicCache):
        updates = 0

        def update(self, k, v, layer_idx):
            CountingCache.updates += 1
            return super().update(k, v, layer_idx)

    _, model = _loaded("qwen2", tmp_path)
    input_ids, attention_mask = _batch()
    expected = model.generate(input_ids, attention_mask, max_new_tokens=5, cache=cache, eos_token_id=2)
    lengths = []

    def make_cache(max_length):
        lengths.append(max_length)
        return CountingCache() if max_length is None else StaticCache(max_length)

    model.make_cache = make_cache
    assert torch.equal(model.generate(input_ids, attention_mask, max_new_tokens=5, cache=cache, eos_token_id=2),
                       expected)
    assert lengths == [None if cache == "dynamic" else input_ids.shape[1] + 5]
    assert CountingCache.updates == (3 * 5 if cache == "dynamic" else 0)  # 3 layers, prefill + 4 steps


def test_config_readers_take_transformers_defaults_and_both_spellings():
    minimal = {"model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 64}  # the rest left to defaults
    config = qwen2_config_from_transformers(minimal)
    defaults = transformers.Qwen2Config(**minimal)
    assert (config.vocab_size, config.intermediate_size, config.num_hidden_layers, config.num_key_value_heads,
            config.max_position_embeddings, config.rms_norm_eps, config.rope_theta, config.tie_word_embeddings) == (
        defaults.vocab_size, defaults.intermediate_size, defaults.num_hidden_layers, defaults.num_key_value_heads,
        defaults.max_position_embeddings, defaults.rms_norm_eps, defaults.rope_parameters["rope_theta"],
        defaults.tie_word_embeddings)
    assert config.qkv_bias and not config.attention_bias and config.sliding_window is None
    qwen3 = qwen3_config_from_transformers({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2})
    assert qwen3.head_dim == transformers.Qwen3Config().head_dim == 128 and qwen3.qk_norm
    llama3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    v4 = llama_config_from_transformers({"rope_theta": 5e5, "rope_scaling": {"type": "llama3", **llama3}})
    v5 = llama_config_from_transformers({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **llama3}})
    assert v4 == v5 and v5.rope_theta == 5e5 and v5.rope_scaling == llama3
    # transformers fills original_max_position_embeddings from max_position_embeddings when it is absent
    partial = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    config = llama_config_from_transformers({"max_position_embeddings": 96, "rope_parameters": partial})
    assert config.rope_scaling["original_max_position_embeddings"] == 96


@pytest.mark.parametrize("values, message", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, r"rope_type 'yarn' is not supported; zoo reads "
                                                                r"'default', 'llama3'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic' is not supported"),
    ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported; zoo reads 'silu'"),
])
def test_unsupported_rope_or_activation_names_what_is_supported(values, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        qwen2_config_from_transformers(values)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", **values}))
    with pytest.raises(ConfigError, match=message):
        zoo.from_pretrained(tmp_path)


@pytest.mark.parametrize("name, class_name", [("qwen2.5-0.5b", "Qwen2ForCausalLM"), ("qwen3-0.6b", "Qwen3ForCausalLM")])
def test_published_sizes_match_transformers_param_counts(name, class_name):
    entry = zoo.registry.get_entry(name)
    config = entry.config
    model_cls = getattr(transformers, class_name)
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "tie_word_embeddings") + (("head_dim",) if config.head_dim else ())
    with torch.device("meta"):
        reference = model_cls(model_cls.config_class(**{field: getattr(config, field) for field in fields}))
    assert sum(p.numel() for p in reference.parameters()) == entry.expected_params == zoo.model_info(name)["params"]


def test_compiled_decoding_matches_transformers(tmp_path):
    """One prompt: the compiled step projects to the vocabulary by generation.lm_logits' fused reduction."""
    reference, model = _loaded("qwen3", tmp_path)
    input_ids = _batch()[0][:1]
    expected = reference.generate(input_ids, max_new_tokens=20, do_sample=False, eos_token_id=2, pad_token_id=0)
    counters.clear()
    with inductor_config.patch(fx_graph_cache=False):  # a cached graph would skip the passes counted here
        generated = model.generate(input_ids, max_new_tokens=20, cache="static", compile=True, eos_token_id=2)
    assert torch.equal(generated, expected)
    assert counters["inductor"]["decompose_mm"] > 0
