"""The Llama-family decoder (Llama, SmolLM2, Qwen2-style with qkv bias): a trunk for VLMs and language models.

Module names follow transformers' LlamaModel (`embed_tokens`, `layers.{i}.self_attn.{q,k,v,o}_proj`,
`layers.{i}.mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm`, `norm`), so published
checkpoints map by identity.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import ConfigError
from zoo.layers.attention import Attention, DynamicCache, StaticCache, padding_mask
from zoo.layers.mlp import SwiGLU
from zoo.layers.norm import RMSNorm
from zoo.layers.rotary import Llama3RopeScaling, RotaryEmbedding


@dataclasses.dataclass
class LlamaConfig(ZooConfig):
    """A Llama-style decoder. `rope_scaling` holds Llama-3.1's "llama3" scaling fields, if any."""

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
    mlp_bias: bool = False

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


def llama_config_from_transformers(values: dict[str, Any]) -> LlamaConfig:
    """A transformers LlamaConfig dict (with transformers' defaults for missing fields) as a LlamaConfig.

    Reads both `rope_parameters` (transformers 5) and the older top-level `rope_theta` / `rope_scaling`.
    """
    rope = values.get("rope_parameters") or {}
    scaling = values.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"rope_type '{rope_type}' is not supported (zoo reads 'default' and 'llama3')")
    llama3 = {**scaling, **rope} if rope_type == "llama3" else None
    num_heads = values.get("num_attention_heads", 32)
    return LlamaConfig(
        vocab_size=values.get("vocab_size", 32000),
        hidden_size=values.get("hidden_size", 4096),
        intermediate_size=values.get("intermediate_size", 11008),
        num_hidden_layers=values.get("num_hidden_layers", 32),
        num_attention_heads=num_heads,
        num_key_value_heads=values.get("num_key_value_heads") or num_heads,
        head_dim=values.get("head_dim"),
        rms_norm_eps=values.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", values.get("rope_theta", 10000.0))),
        rope_scaling=None if llama3 is None else {
            key: llama3[key] for key in ("factor", "low_freq_factor", "high_freq_factor",
                                         "original_max_position_embeddings")
        },
        max_position_embeddings=values.get("max_position_embeddings", 2048),
        attention_bias=values.get("attention_bias", False),
        mlp_bias=values.get("mlp_bias", False),
    )


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = Attention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.resolved_head_dim,
            qkv_bias=config.attention_bias, out_bias=config.attention_bias,
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
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
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
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, L) and inputs_embeds (B, L, hidden_size)")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
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
        attn_mask = None if all_ones else padding_mask(attention_mask)
        rotary = self.rotary(position_ids)
        for index, layer in enumerate(self.layers):
            x = layer(x, rotary, attn_mask, cache, index)
        return self.norm(x)
