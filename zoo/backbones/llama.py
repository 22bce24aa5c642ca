"""The Llama-family decoder (Llama 2/3.x, SmolLM2, Qwen2/2.5, Qwen3): a trunk for VLMs and language models.

One implementation with config options covers the family: `qkv_bias` (Qwen2), `qk_norm` and a `head_dim`
decoupled from `hidden_size` (Qwen3), Llama-3.1's "llama3" rope scaling, sliding-window layers (Qwen2's
fields, off in every published checkpoint). Module names follow transformers' LlamaModel (`embed_tokens`,
`layers.{i}.self_attn.{q,k,v,o}_proj`, `.self_attn.{q,k}_norm`, `layers.{i}.mlp.{gate,up,down}_proj`,
`input_layernorm`, `post_attention_layernorm`, `norm`) and `LlamaForCausalLM` adds transformers' `model.` /
`lm_head`, so published checkpoints of every member map by identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.backbones.generation import CausalLM
from zoo.config import NonNegativeInt, PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import ConfigError
from zoo.layers.attention import Attention, DynamicCache, StaticCache, padding_mask
from zoo.layers.mlp import SwiGLU
from zoo.layers.norm import RMSNorm
from zoo.layers.rotary import Llama3RopeScaling, RotaryEmbedding
from zoo.registry import Converter, InputSpec, ModelEntry, TensorSpec, register_family, register_model


@dataclasses.dataclass
class LlamaConfig(ZooConfig):
    """A Llama-style decoder. `rope_scaling` holds Llama-3.1's "llama3" scaling fields, if any.

    attention_bias: biases on q, k, v and o (transformers' Llama and Qwen3 meaning); qkv_bias: on q, k, v only
    (Qwen2). qk_norm: a per-head RMSNorm on queries and keys before rotary (Qwen3). sliding_window: layers
    from `max_window_layers` on attend to that many keys (Qwen2's `use_sliding_window`); None: every layer
    attends to all.
    """

    vocab_size: PositiveInt = 49152
    hidden_size: PositiveInt = 576
    intermediate_size: PositiveInt = 1536
    num_hidden_layers: PositiveInt = 30
    num_attention_heads: PositiveInt = 9
    num_key_value_heads: PositiveInt = 3
    head_dim: PositiveInt | None = None
    rms_norm_eps: PositiveFloat = 1e-5
    rope_theta: PositiveFloat = 10000.0
    rope_scaling: dict[str, PositiveFloat] | None = None
    max_position_embeddings: PositiveInt = 8192
    attention_bias: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    mlp_bias: bool = False
    sliding_window: PositiveInt | None = None
    max_window_layers: NonNegativeInt = 0

    def validate(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"LlamaConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_key_value_heads}).")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"LlamaConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                              f"({self.num_attention_heads}), or head_dim set.")
        if self.resolved_head_dim % 2:
            raise ConfigError(f"LlamaConfig head size must be even (rotary embeddings), got {self.resolved_head_dim}.")
        unknown = set(self.rope_scaling or ()) - {f.name for f in dataclasses.fields(Llama3RopeScaling)}
        if unknown:
            raise ConfigError(f"LlamaConfig.rope_scaling has unknown key(s) {sorted(unknown)}; it takes the fields "
                              f"of Llama3RopeScaling.")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_window(self, index: int) -> int | None:
        """The sliding window of layer `index`, None for full attention."""
        return self.sliding_window if index >= self.max_window_layers else None


@dataclasses.dataclass
class LlamaLMConfig(LlamaConfig):
    """A decoder with its language-model head: LlamaConfig plus whether the head shares the token embeddings."""

    tie_word_embeddings: bool = False


_LLAMA3_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def transformers_rope(values: dict[str, Any], supported: tuple[str, ...]) -> dict[str, Any]:
    """The rope parameters of a transformers config dict, read from either spelling: transformers 5's
    `rope_parameters`, or 4.x's top-level `rope_theta` / `partial_rotary_factor` and `rope_scaling` (whose
    type was once called `type`). Fills `rope_type` ("default" if absent) and `rope_theta` (10000); a rope type
    not in `supported` is a ConfigError naming the supported ones."""
    rope = {**(values.get("rope_scaling") or {}), **(values.get("rope_parameters") or {})}
    rope["rope_type"] = rope.get("rope_type") or rope.pop("type", None) or "default"
    for key, default in (("rope_theta", 10000.0), ("partial_rotary_factor", None)):
        if key not in rope and values.get(key, default) is not None:
            rope[key] = values.get(key, default)
    if rope["rope_type"] not in supported:
        raise ConfigError(f"rope_type '{rope['rope_type']}' is not supported; zoo reads {', '.join(map(repr, supported))}.")
    return rope


def check_activation(values: dict[str, Any], default: str, supported: tuple[str, ...]) -> str:
    """The config's `hidden_act` (transformers' `default` if absent); an unsupported one is a ConfigError."""
    act = values.get("hidden_act", default)
    if act not in supported:
        raise ConfigError(f"hidden_act '{act}' is not supported; zoo reads {', '.join(map(repr, supported))}.")
    return act


def llama_config_from_transformers(
    values: dict[str, Any], config_cls: type[LlamaConfig] = LlamaConfig, **defaults: Any
) -> LlamaConfig:
    """A transformers LlamaConfig dict as a LlamaConfig (or `config_cls`), with transformers' defaults for
    the fields it omits; `defaults` replaces those defaults with another family's (Qwen2's, Qwen3's).

    Reads both `rope_parameters` (transformers 5) and the older top-level `rope_theta` / `rope_scaling`.
    """
    values = {**defaults, **values}
    rope = transformers_rope(values, supported=("default", "llama3"))
    check_activation(values, "silu", supported=("silu",))
    num_heads = values.get("num_attention_heads", 32)
    max_positions = values.get("max_position_embeddings", 2048)
    llama3 = None
    if rope["rope_type"] == "llama3":
        rope.setdefault("original_max_position_embeddings", max_positions)
        missing = [key for key in _LLAMA3_FIELDS if key not in rope]
        if missing:
            raise ConfigError(f"rope_type 'llama3' needs {', '.join(missing)} in rope_parameters / rope_scaling.")
        llama3 = {key: rope[key] for key in _LLAMA3_FIELDS}
    window = values.get("sliding_window", 4096) if values.get("use_sliding_window", False) else None
    extra = {}
    if "tie_word_embeddings" in config_cls.field_names():
        extra["tie_word_embeddings"] = values.get("tie_word_embeddings", False)
    return config_cls(
        vocab_size=values.get("vocab_size", 32000),
        hidden_size=values.get("hidden_size", 4096),
        intermediate_size=values.get("intermediate_size", 11008),
        num_hidden_layers=values.get("num_hidden_layers", 32),
        num_attention_heads=num_heads,
        num_key_value_heads=values.get("num_key_value_heads") or num_heads,
        head_dim=values.get("head_dim"),
        rms_norm_eps=values.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope["rope_theta"]),
        rope_scaling=llama3,
        max_position_embeddings=max_positions,
        attention_bias=values.get("attention_bias", False),
        mlp_bias=values.get("mlp_bias", False),
        sliding_window=window,
        max_window_layers=values.get("max_window_layers", 0) if window else 0,
        **extra,
    )


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig, index: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.resolved_head_dim,
            qkv_bias=config.attention_bias or config.qkv_bias, out_bias=config.attention_bias,
            qk_norm="rms" if config.qk_norm else None, norm_eps=config.rms_norm_eps,
            sliding_window=config.layer_window(index),
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        cache: DynamicCache | StaticCache | None,
        layer_idx: int,
    ) -> torch.Tensor:
        x = x + self.self_attn(
            self.input_layernorm(x), attn_mask=attn_mask, is_causal=True, rotary=rotary, cache=cache,
            layer_idx=layer_idx,
        )
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Token embeddings, decoder layers and the final norm; returns hidden states (B, L, hidden_size)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        scaling = Llama3RopeScaling(**config.rope_scaling) if config.rope_scaling else None
        self.rotary = RotaryEmbedding(config.resolved_head_dim, config.rope_theta, scaling=scaling)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | StaticCache | None = None,
    ) -> torch.Tensor:
        """Either `input_ids` (B, L) or `inputs_embeds` (B, L, hidden_size).

        attention_mask: (B, past + L) of 1 (token) and 0 (padding), covering the cached positions too
            (all max_length positions for a static cache with write_position set); None means no padding.
        position_ids: (B, L); defaults to past + arange(L).
        cache: a KV cache holding the past positions, updated in place.
        """
        x, position_ids, attn_mask = decoder_inputs(
            self.embed_tokens, input_ids, inputs_embeds, attention_mask, position_ids, cache
        )
        rotary = self.rotary(position_ids)
        for index, layer in enumerate(self.layers):
            x = layer(x, rotary, attn_mask, cache, index)
        return self.norm(x)


def decoder_inputs(
    embed_tokens: nn.Embedding,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache: DynamicCache | StaticCache | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A decoder's embeddings (B, L, D), position ids (B, L) and boolean attention mask (None: no padding)
    from the arguments of LlamaModel.forward (shared by the decoders built like it, e.g. Phi)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids (B, L) and inputs_embeds (B, L, hidden_size)")
    x = embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    batch_size, length = x.shape[:2]
    if position_ids is None:
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = torch.arange(past, past + length, device=x.device).expand(batch_size, length)
    keys = cache.key_length(length) if cache is not None else length
    if attention_mask is not None and attention_mask.shape != (batch_size, keys):
        raise ValueError(
            f"attention_mask must have shape (B, keys) = {(batch_size, keys)}, where keys counts the cached "
            f"positions too, got {tuple(attention_mask.shape)}"
        )
    # All-ones masks are dropped so attention takes its unmasked (fastest) path; under torch.compile the
    # check would break the graph, so the mask is kept.
    all_ones = attention_mask is None or (not torch.compiler.is_compiling() and bool(attention_mask.all()))
    return x, position_ids, None if all_ones else padding_mask(attention_mask)


class LlamaForCausalLM(CausalLM):
    """Llama 3.x and the decoders that differ from it only by options (Qwen2/2.5, Qwen3), with their LM head.

    Each transformers family it reads is registered under a subclass of its own (Qwen2ForCausalLM, ...), so
    that a saved model names its family.
    """

    config_class = LlamaLMConfig
    trunk_class = LlamaModel


def transformers_converter(
    model_type: str, convert_config: Callable[[dict[str, Any]], LlamaLMConfig]
) -> Converter:
    """The converter of a transformers `*ForCausalLM` checkpoint whose keys are this decoder's (`model.`,
    `lm_head.`); a tied head, which transformers does not save, is restored from the embeddings."""

    def convert_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaLMConfig) -> dict[str, torch.Tensor]:
        if config.tie_word_embeddings and "lm_head.weight" not in state_dict:
            state_dict = {**state_dict, "lm_head.weight": state_dict["model.embed_tokens.weight"]}
        return state_dict

    return Converter(
        "transformers",
        convert_state_dict=convert_state_dict,
        convert_config=convert_config,
        matches_config=lambda values: values.get("model_type") == model_type,
        matches_keys=lambda keys: "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys,
    )


def language_input(config: LlamaConfig, length: int = 64) -> InputSpec:
    """The default input of a language model: a prompt of `length` random token ids."""
    return InputSpec({"input_ids": TensorSpec((length,), torch.long, high=config.vocab_size)})


register_family(
    "llama", LlamaForCausalLM,
    [transformers_converter("llama", lambda values: llama_config_from_transformers(values, LlamaLMConfig))],
)
_LLAMA_TINY = LlamaLMConfig(
    vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=512,
    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
)
register_model(ModelEntry("llama-tiny", "llama", "language", _LLAMA_TINY, default_input=language_input(_LLAMA_TINY),
                          description="A 2-layer Llama 3.1-style decoder (llama3 rope scaling) for tests."))
