"""The BLIP-2 Q-Former for query-only input (= transformers `Blip2QFormerModel` fed only `query_embeds`).

A post-LN BERT encoder over learned query tokens: every layer self-attends among the queries, every
`cross_attention_frequency`-th layer (0, f, 2f, ...) then cross-attends to the image tokens, and each layer ends
with the query FFN (`intermediate_query`/`output_query`); the text embeddings and text FFN of the full Q-Former
are never used, so they are not built. A building block of BLIP-2-style VLMs (TinyGPT-V, MiniGPT-4), not
registered alone: it takes image tokens besides its queries and its weights are published inside BLIP-2
checkpoints, which `qformer_state_dict_from_transformers` and `qformer_state_dict_from_lavis` read.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import torch
from torch import nn

from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import InputError
from zoo.layers.activation import activation_layer
from zoo.layers.attention import Attention, padding_mask
from zoo.layers.mlp import Mlp
from zoo.layers.norm import LayerNorm
from zoo.registry import rename_keys


@dataclasses.dataclass
class QFormerConfig(ZooConfig):
    hidden_size: PositiveInt = 768
    num_hidden_layers: PositiveInt = 12
    num_attention_heads: PositiveInt = 12
    intermediate_size: PositiveInt = 3072
    hidden_act: Literal["gelu", "gelu_pytorch_tanh", "quick_gelu"] = "gelu"
    layer_norm_eps: PositiveFloat = 1e-12
    cross_attention_frequency: PositiveInt = 2
    encoder_hidden_size: PositiveInt = 1408

    def validate(self) -> None:
        self.check_divisible("hidden_size", "num_attention_heads")


# transformers' Blip2QFormerConfig defaults, for the fields a config.json leaves out.
_TRANSFORMERS_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "cross_attention_frequency": 2, "encoder_hidden_size": 1408,
}


def qformer_config_from_transformers(values: dict[str, Any]) -> QFormerConfig:
    """A transformers Blip2QFormerConfig dict, or a Blip2Config dict (its `qformer_config`), with transformers'
    defaults for the fields it omits."""
    if values.get("model_type") == "blip-2" or "qformer_config" in values:
        values = values.get("qformer_config") or {}
    return QFormerConfig(**{name: values.get(name, default) for name, default in _TRANSFORMERS_DEFAULTS.items()})


class QFormerLayer(nn.Module):
    """Post-LN: x = norm(x + self_attn(x)), then optionally norm(x + cross_attn(x, image)), then norm(x + mlp(x))."""

    def __init__(self, config: QFormerConfig, cross_attention: bool):
        super().__init__()
        dim, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
        self.self_attn = Attention(dim, heads, qkv_bias=True, out_bias=True)
        self.self_attn_norm = LayerNorm(dim, eps=eps)
        self.cross_attn = self.cross_attn_norm = None
        if cross_attention:
            self.cross_attn = Attention(
                dim, heads, context_dim=config.encoder_hidden_size, qkv_bias=True, out_bias=True
            )
            self.cross_attn_norm = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, config.intermediate_size, act_layer=activation_layer(config.hidden_act))
        self.mlp_norm = LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.self_attn_norm(x + self.self_attn(x))
        if self.cross_attn is not None:
            x = self.cross_attn_norm(x + self.cross_attn(x, context=context, attn_mask=context_mask))
        return self.mlp_norm(x + self.mlp(x))


class QFormer(nn.Module):
    """query_embeds (B, Q, hidden) and image tokens (B, S, encoder_hidden) -> query outputs (B, Q, hidden)."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.config = config
        self.layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            QFormerLayer(config, cross_attention=i % config.cross_attention_frequency == 0)
            for i in range(config.num_hidden_layers)
        )

    def forward(
        self,
        query_embeds: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """encoder_attention_mask: (B, S) of 1 (image token) and 0 (padding), as transformers."""
        hidden, encoder_hidden = self.config.hidden_size, self.config.encoder_hidden_size
        if query_embeds.ndim != 3 or query_embeds.shape[-1] != hidden:
            raise InputError(f"query_embeds must be (B, Q, {hidden}), got {tuple(query_embeds.shape)}.")
        states = encoder_hidden_states
        if states.ndim != 3 or (states.shape[0], states.shape[2]) != (query_embeds.shape[0], encoder_hidden):
            raise InputError(f"encoder_hidden_states must be (B, S, {encoder_hidden}) with B = "
                             f"{query_embeds.shape[0]}, got {tuple(states.shape)}.")
        mask = None if encoder_attention_mask is None else padding_mask(encoder_attention_mask)
        x = self.layernorm(query_embeds)
        context = encoder_hidden_states.to(x.dtype)
        for layer in self.layers:
            x = layer(x, context, mask)
        return x


_TRANSFORMERS_RULES = [
    (r"^qformer\.", ""),
    (r"^encoder\.layer\.", "layers."),
    (r"\.attention\.attention\.", ".self_attn."),
    (r"\.attention\.output\.dense\.", ".self_attn.o_proj."),
    (r"\.attention\.output\.LayerNorm\.", ".self_attn_norm."),
    (r"\.crossattention\.attention\.", ".cross_attn."),
    (r"\.crossattention\.output\.dense\.", ".cross_attn.o_proj."),
    (r"\.crossattention\.output\.LayerNorm\.", ".cross_attn_norm."),
    (r"\.(self_attn|cross_attn)\.query\.", r".\1.q_proj."),
    (r"\.(self_attn|cross_attn)\.key\.", r".\1.k_proj."),
    (r"\.(self_attn|cross_attn)\.value\.", r".\1.v_proj."),
    (r"\.intermediate_query\.dense\.", ".mlp.fc1."),
    (r"\.output_query\.dense\.", ".mlp.fc2."),
    (r"\.output_query\.LayerNorm\.", ".mlp_norm."),
]
# The text path: its FFN (`intermediate`/`output` right after the layer index) and embeddings.
_TEXT_ONLY = r"^(encoder\.layer\.\d+\.(intermediate|output)\.|embeddings\.|cls\.)"


def qformer_state_dict_from_transformers(state_dict: dict[str, torch.Tensor], config: QFormerConfig) -> dict:
    """A Blip2QFormerModel state dict (or a Blip2 model's `qformer.*`) in this module's keys, text path dropped."""
    if any(k.startswith("qformer.") for k in state_dict):
        state_dict = {k.removeprefix("qformer."): v for k, v in state_dict.items() if k.startswith("qformer.")}
    kept = {k: v for k, v in state_dict.items() if not re.match(_TEXT_ONLY, k)}
    return rename_keys(kept, _TRANSFORMERS_RULES)


_LAVIS_RULES = [
    (r"^Qformer\.bert\.embeddings\.LayerNorm\.", "layernorm."),
    (r"^Qformer\.bert\.", ""),
    (r"\.attention\.self\.", ".attention.attention."),
    (r"\.crossattention\.self\.", ".crossattention.attention."),
]


def qformer_state_dict_from_lavis(state_dict: dict[str, torch.Tensor], config: QFormerConfig) -> dict:
    """LAVIS's `Qformer.bert.*` keys (BLIP-2's `.pth` checkpoints) in this module's keys; other keys are ignored."""
    qformer = {k: v for k, v in state_dict.items() if k.startswith("Qformer.bert.")}
    return qformer_state_dict_from_transformers(rename_keys(qformer, _LAVIS_RULES), config)
