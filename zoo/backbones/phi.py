"""Phi-2 (and Phi-1/1.5): a parallel-residual decoder with partial rotary positions, and TinyGPT-V's variant.

Each block adds attention and MLP of the same LayerNorm'd input to its residual: x + attn(ln(x)) + mlp(ln(x)).
Rotary positions turn the first `partial_rotary_factor` of each head's channels (32 of 80 in Phi-2); the MLP
is fc1 -> gelu_new -> fc2 and every projection, the LM head's included, has a bias.

TinyGPT-V's patched Phi adds a per-head q/k LayerNorm before rotary (transformers' `qk_layernorm`) and an
RMSNorm on the attention branch only (`attention_rms_norm`, its `post_layernorm`), and stores q/k/v as one
`query_key_value` projection interleaved per head; the converter reads that layout as well as split q/k/v.
Module names follow transformers' PhiForCausalLM but for the shared attention's `o_proj` (Phi's `dense`) and
`q_norm` / `k_norm` (`q_layernorm` / `k_layernorm`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Annotated, Any, Literal

import torch
from torch import nn

from zoo.backbones.generation import CausalLM
from zoo.backbones.llama import check_activation, decoder_inputs, language_input, transformers_rope
from zoo.config import PositiveFloat, PositiveInt, Range, ZooConfig
from zoo.errors import CheckpointError, ConfigError
from zoo.layers.attention import Attention, DynamicCache, StaticCache
from zoo.layers.mlp import Mlp
from zoo.layers.norm import LayerNorm, RMSNorm
from zoo.layers.rotary import RotaryEmbedding
from zoo.registry import Converter, ModelEntry, PretrainedSource, register_family, register_model, rename_keys

ACTIVATIONS = {"gelu_new": functools.partial(nn.GELU, approximate="tanh"), "gelu": nn.GELU}


@dataclasses.dataclass
class PhiConfig(ZooConfig):
    """A Phi decoder with its LM head. qk_layernorm and attention_rms_norm (eps rms_norm_eps) are TinyGPT-V's."""

    vocab_size: PositiveInt = 51200
    hidden_size: PositiveInt = 2560
    intermediate_size: PositiveInt = 10240
    num_hidden_layers: PositiveInt = 32
    num_attention_heads: PositiveInt = 32
    num_key_value_heads: PositiveInt = 32
    partial_rotary_factor: Annotated[float, Range(gt=0, le=1)] = 0.4
    rope_theta: PositiveFloat = 10000.0
    layer_norm_eps: PositiveFloat = 1e-5
    max_position_embeddings: PositiveInt = 2048
    hidden_act: Literal["gelu_new", "gelu"] = "gelu_new"
    tie_word_embeddings: bool = False
    qk_layernorm: bool = False
    attention_rms_norm: bool = False
    rms_norm_eps: PositiveFloat = 1e-6

    def validate(self) -> None:
        self.check_divisible("hidden_size", "num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"PhiConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_key_value_heads}).")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ConfigError(f"PhiConfig.partial_rotary_factor ({self.partial_rotary_factor}) of head_dim "
                              f"{self.head_dim} gives {self.rotary_dim} rotary channels; it must be a positive even "
                              "number.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        """The rotated channels of each head, transformers' int(head_dim * partial_rotary_factor)."""
        return int(self.head_dim * self.partial_rotary_factor)


class PhiDecoderLayer(nn.Module):
    """x + norm(attn(ln(x))) + mlp(ln(x)); `norm` is TinyGPT-V's RMSNorm, or the identity."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, qkv_bias=True, out_bias=True,
            qk_norm="layer" if config.qk_layernorm else None, norm_eps=config.layer_norm_eps,
        )
        self.post_layernorm = (RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if config.attention_rms_norm
                               else nn.Identity())
        self.mlp = Mlp(config.hidden_size, config.intermediate_size, act_layer=ACTIVATIONS[config.hidden_act])

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        cache: DynamicCache | StaticCache | None,
        layer_idx: int,
    ) -> torch.Tensor:
        h = self.input_layernorm(x)
        attn = self.self_attn(h, attn_mask=attn_mask, is_causal=True, rotary=rotary, cache=cache, layer_idx=layer_idx)
        return self.post_layernorm(attn) + self.mlp(h) + x


class PhiModel(nn.Module):
    """Token embeddings, decoder layers and the final LayerNorm; returns hidden states (B, L, hidden_size)."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(PhiDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.final_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary = RotaryEmbedding(config.rotary_dim, config.rope_theta)

    @property
    def norm(self) -> LayerNorm:
        """The final LayerNorm under LlamaModel's name, for code that drives either decoder's layers itself
        (`zoo.vlm.token_reduction.decoder_forward`); the weights keep Phi's key `final_layernorm`."""
        return self.final_layernorm

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | StaticCache | None = None,
    ) -> torch.Tensor:
        """As LlamaModel.forward."""
        x, position_ids, attn_mask = decoder_inputs(
            self.embed_tokens, input_ids, inputs_embeds, attention_mask, position_ids, cache
        )
        rotary = self.rotary(position_ids)
        for index, layer in enumerate(self.layers):
            x = layer(x, rotary, attn_mask, cache, index)
        return self.final_layernorm(x)


class PhiForCausalLM(CausalLM):
    """Phi-2 (and TinyGPT-V's variant) with its biased LM head."""

    config_class = PhiConfig
    trunk_class = PhiModel
    lm_head_bias = True


# ---------------------------------------------------------------------------------------------------
# Published format: transformers' PhiForCausalLM, and TinyGPT-V's fused query_key_value

_TRANSFORMERS_RENAMES = (
    (r"\.self_attn\.dense\.", ".self_attn.o_proj."),
    (r"\.self_attn\.([qk])_layernorm\.", r".self_attn.\1_norm."),
)
_FUSED_QKV = re.compile(r"(.*\.self_attn\.)query_key_value\.(weight|bias)$")


def split_fused_qkv(state_dict: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """`state_dict` with each `query_key_value` projection (TinyGPT-V's, output channels ordered head by head,
    q, k, v within a head) split into `q_proj`, `k_proj` and `v_proj`."""
    split = {}
    for key, value in state_dict.items():
        match = _FUSED_QKV.match(key)
        if match is None:
            split[key] = value
            continue
        if value.shape[0] % (3 * num_heads):
            raise CheckpointError(f"{key} has {value.shape[0]} output channels, not 3 per head of {num_heads} heads; "
                                  "check num_attention_heads.")
        per_head = value.unflatten(0, (num_heads, 3, -1))
        for index, name in enumerate("qkv"):
            split[f"{match[1]}{name}_proj.{match[2]}"] = per_head[:, index].flatten(0, 1)
    return split


def _from_transformers_state_dict(state_dict: dict[str, torch.Tensor], config: PhiConfig) -> dict[str, torch.Tensor]:
    converted = rename_keys(split_fused_qkv(state_dict, config.num_attention_heads), _TRANSFORMERS_RENAMES)
    if config.tie_word_embeddings and "lm_head.weight" not in converted:
        converted["lm_head.weight"] = converted["model.embed_tokens.weight"]
    return converted


def phi_config_from_transformers(values: dict[str, Any]) -> PhiConfig:
    """A transformers PhiConfig dict (4.x or 5.x spelling) as a PhiConfig, with transformers' defaults for the
    fields it omits."""
    rope = transformers_rope(values, supported=("default",))
    num_heads = values.get("num_attention_heads", 32)
    return PhiConfig(
        vocab_size=values.get("vocab_size", 51200),
        hidden_size=values.get("hidden_size", 2048),
        intermediate_size=values.get("intermediate_size", 8192),
        num_hidden_layers=values.get("num_hidden_layers", 24),
        num_attention_heads=num_heads,
        num_key_value_heads=values.get("num_key_value_heads") or num_heads,
        partial_rotary_factor=rope.get("partial_rotary_factor", 0.5),
        rope_theta=float(rope["rope_theta"]),
        layer_norm_eps=values.get("layer_norm_eps", 1e-5),
        max_position_embeddings=values.get("max_position_embeddings", 2048),
        hidden_act=check_activation(values, "gelu_new", supported=tuple(ACTIVATIONS)),
        tie_word_embeddings=values.get("tie_word_embeddings", False),
        qk_layernorm=values.get("qk_layernorm", False),
    )


TRANSFORMERS = Converter(
    "transformers",
    convert_state_dict=_from_transformers_state_dict,
    convert_config=phi_config_from_transformers,
    matches_config=lambda values: values.get("model_type") == "phi",
    matches_keys=lambda keys: any(".self_attn.dense." in key or ".query_key_value." in key for key in keys),
)

register_family("phi", PhiForCausalLM, [TRANSFORMERS])


# ---------------------------------------------------------------------------------------------------
# Registry


def _register(name: str, config: PhiConfig, sources: tuple[PretrainedSource, ...], description: str,
              expected_params: int | None = None) -> None:
    register_model(ModelEntry(name, "phi", "language", config, sources=sources, description=description,
                              default_input=language_input(config), expected_params=expected_params))


_register(
    "phi-2", PhiConfig(),
    (PretrainedSource("microsoft/phi-2", format="transformers", license="mit"),),
    "Phi-2 (2.7B): 32 parallel-residual layers, 32 heads of 80 channels with 32 rotary, gelu_new, biased LM head.",
    2_779_683_840,
)
_register(
    "phi-tiny",
    PhiConfig(vocab_size=512, hidden_size=80, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, max_position_embeddings=512),
    (), "A 2-layer Phi for tests (heads of 20 channels, 8 of them rotary).",
)
