"""Qwen2 / Qwen2.5 and Qwen3 language models: the Llama decoder with Qwen's options.

Qwen2 and Qwen2.5 add biases to the q/k/v projections (not to o); Qwen3 drops them and adds a per-head
RMSNorm on queries and keys before rotary, with a `head_dim` of its own (128 at every size). Both keep
Qwen2's sliding-window fields, off in every published checkpoint. The published checkpoints are
transformers' `Qwen2ForCausalLM` / `Qwen3ForCausalLM`, whose keys are the decoder's.
"""

from __future__ import annotations

from typing import Any

from zoo.backbones.llama import (
    LlamaForCausalLM, LlamaLMConfig, language_input, llama_config_from_transformers, transformers_converter,
)
from zoo.registry import ModelEntry, PretrainedSource, register_family, register_model

# transformers' defaults for the fields a saved config.json omits (save_pretrained writes only the others)
_QWEN2_DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       sliding_window=4096, max_window_layers=28)
_QWEN3_DEFAULTS = dict(_QWEN2_DEFAULTS, head_dim=128)


def qwen2_config_from_transformers(values: dict[str, Any]) -> LlamaLMConfig:
    """A transformers Qwen2Config dict (Qwen2, Qwen2.5) as a LlamaLMConfig."""
    return llama_config_from_transformers(values, LlamaLMConfig, **_QWEN2_DEFAULTS).replace(qkv_bias=True)


def qwen3_config_from_transformers(values: dict[str, Any]) -> LlamaLMConfig:
    """A transformers Qwen3Config dict as a LlamaLMConfig."""
    return llama_config_from_transformers(values, LlamaLMConfig, **_QWEN3_DEFAULTS).replace(qk_norm=True)


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen2.5: the Llama decoder with q/k/v biases."""


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3: the Llama decoder with per-head q/k RMSNorm and a decoupled head_dim."""


register_family("qwen2", Qwen2ForCausalLM, [transformers_converter("qwen2", qwen2_config_from_transformers)])
register_family("qwen3", Qwen3ForCausalLM, [transformers_converter("qwen3", qwen3_config_from_transformers)])


# ---------------------------------------------------------------------------------------------------
# Registry


def _register(name: str, family: str, config: LlamaLMConfig, sources: tuple[PretrainedSource, ...], paper: str,
              description: str, expected_params: int | None = None) -> None:
    register_model(ModelEntry(name, family, "language", config, sources=sources, paper=paper,
                              description=description, default_input=language_input(config),
                              expected_params=expected_params))


_register(
    "qwen2.5-0.5b", "qwen2",
    LlamaLMConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  max_position_embeddings=32768, qkv_bias=True, tie_word_embeddings=True),
    (PretrainedSource("Qwen/Qwen2.5-0.5B-Instruct", tag="instruct", format="transformers", license="apache-2.0"),
     PretrainedSource("Qwen/Qwen2.5-0.5B", tag="base", format="transformers", license="apache-2.0")),
    "2412.15115", "Qwen2.5 0.5B: 24 layers, 14 query and 2 key/value heads, q/k/v biases, tied embeddings.",
    494_032_768,
)
_register(
    "qwen3-0.6b", "qwen3",
    LlamaLMConfig(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, max_position_embeddings=40960, qk_norm=True, tie_word_embeddings=True),
    (PretrainedSource("Qwen/Qwen3-0.6B", tag="instruct", format="transformers", license="apache-2.0"),
     PretrainedSource("Qwen/Qwen3-0.6B-Base", tag="base", format="transformers", license="apache-2.0")),
    "2505.09388", "Qwen3 0.6B: 28 layers, 16 query and 8 key/value heads of 128 channels, q/k RMSNorm, "
    "tied embeddings.", 596_049_920,
)
_register(
    "qwen2.5-tiny", "qwen2",
    LlamaLMConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  max_position_embeddings=512, qkv_bias=True, tie_word_embeddings=True),
    (), "", "A 2-layer Qwen2.5 for tests.",
)
_register(
    "qwen3-tiny", "qwen3",
    LlamaLMConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  max_position_embeddings=512, qk_norm=True),
    (), "", "A 2-layer Qwen3 for tests (head_dim 24, decoupled from hidden_size 64).",
)
