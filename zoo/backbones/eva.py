"""EVA ViT-g as LAVIS builds it for BLIP-2 / MiniGPT-4 / TinyGPT-V (= transformers `Blip2VisionModel`).

Pre-LN ViT with a class token and learned absolute positions. Attention has one `qkv` projection without bias
plus learned `q_bias` and `v_bias` (the key bias is zero and not a parameter). The ViT has no final norm; BLIP-2's
`ln_vision` after it is transformers' `post_layernorm`, built when `post_layernorm=True`. For another image size
the position embeddings are resized once, at load time (bicubic, in float32), as LAVIS does; the forward takes
only the configured size. A building block of the VLM families, not registered alone: its weights are published
inside BLIP-2 checkpoints and LAVIS's `eva_vit_g.pth`, which `eva_state_dict_from_transformers` and
`eva_state_dict_from_lavis` read. Key names follow transformers' `Blip2VisionModel` without the `vision_model.`
prefix, with `q_bias`/`v_bias` kept apart and `embeddings.patch_embedding.proj` (the shared `PatchEmbed`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import CheckpointError, InputError
from zoo.layers.activation import activation_layer
from zoo.layers.attention import scaled_dot_product
from zoo.layers.embed import PatchEmbed
from zoo.layers.norm import LayerNorm
from zoo.registry import rename_keys

from .vit import EncoderLayer, check_images, resize_positions


@dataclasses.dataclass
class EvaVisionConfig(ZooConfig):
    hidden_size: PositiveInt = 1408
    intermediate_size: PositiveInt = 6144
    num_hidden_layers: PositiveInt = 39
    num_attention_heads: PositiveInt = 16
    image_size: PositiveInt = 224
    patch_size: PositiveInt = 14
    hidden_act: Literal["gelu", "gelu_pytorch_tanh", "quick_gelu"] = "gelu"
    layer_norm_eps: PositiveFloat = 1e-6
    qkv_bias: bool = True
    post_layernorm: bool = False

    def validate(self) -> None:
        self.check_divisible("hidden_size", "num_attention_heads")
        self.check_divisible("image_size", "patch_size")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


# transformers' Blip2VisionConfig defaults, for the fields a config.json leaves out.
_TRANSFORMERS_DEFAULTS = {
    "hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True,
}


def eva_config_from_transformers(values: dict[str, Any], **overrides: Any) -> EvaVisionConfig:
    """A transformers Blip2VisionConfig dict, or a Blip2Config dict (its `vision_config`), with transformers'
    defaults for omitted fields; transformers' model has `post_layernorm` (BLIP-2's ln_vision)."""
    if values.get("model_type") == "blip-2" or "vision_config" in values:
        values = values.get("vision_config") or {}
    fields = {name: values.get(name, default) for name, default in _TRANSFORMERS_DEFAULTS.items()}
    return EvaVisionConfig(**{**fields, "post_layernorm": True, **overrides})


class EvaAttention(nn.Module):
    """Self-attention with a fused bias-free `qkv` projection plus separate `q_bias` and `v_bias`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.projection = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        return self.projection(rearrange(scaled_dot_product(q, k, v), "b h l d -> b l (h d)"))


class EvaEmbeddings(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        self.config = config
        self.class_embedding = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.patch_embedding = PatchEmbed(3, config.hidden_size, config.patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, config.grid**2 + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = check_images(pixel_values, 3, self.config.patch_size)
        if grid != (self.config.grid, self.config.grid):
            size = self.config.image_size
            raise InputError(
                f"image size {pixel_values.shape[2]}x{pixel_values.shape[3]} differs from the model's {size}x{size}; "
                f"resize the images, or build the model with image_size={pixel_values.shape[2]} (square images) "
                f"and load the weights again to resize its position embeddings."
            )
        patches, _ = self.patch_embedding(pixel_values.to(self.patch_embedding.proj.weight.dtype))
        cls = self.class_embedding.expand(patches.shape[0], -1, -1).to(patches.dtype)
        return torch.cat((cls, patches), dim=1) + self.position_embedding.to(patches.dtype)


class EvaEncoder(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        act_layer = activation_layer(config.hidden_act)
        self.layers = nn.ModuleList(
            EncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size, act_layer,
                         config.layer_norm_eps,
                         attention=EvaAttention(config.hidden_size, config.num_attention_heads, config.qkv_bias))
            for _ in range(config.num_hidden_layers)
        )


class EvaVisionTransformer(nn.Module):
    """Images (N, 3, S, S) at the configured size S -> tokens (N, 1 + (S/p)^2, hidden), class token first."""

    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = EvaEmbeddings(config)
        self.encoder = EvaEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps) if config.post_layernorm else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers:
            x = layer(x)
        return x if self.post_layernorm is None else self.post_layernorm(x)


def _resize_position_embedding(state_dict: dict[str, torch.Tensor], config: EvaVisionConfig) -> None:
    """Resize `embeddings.position_embedding` (1, 1 + n, D) in place to the config's grid (class position kept)."""
    positions = state_dict["embeddings.position_embedding"]
    patches = resize_positions(positions[0, 1:], (config.grid, config.grid))
    state_dict["embeddings.position_embedding"] = torch.cat((positions[0, :1], patches))[None]


def _fit_to_config(state_dict: dict[str, torch.Tensor], config: EvaVisionConfig) -> dict[str, torch.Tensor]:
    """Drop `post_layernorm` unless configured; resize the positions to the configured image size."""
    if not config.post_layernorm:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("post_layernorm.")}
    if "embeddings.position_embedding" in state_dict:
        _resize_position_embedding(state_dict, config)
    return state_dict


_TRANSFORMERS_RULES = [
    (r"^vision_model\.", ""),
    (r"^embeddings\.patch_embedding\.", "embeddings.patch_embedding.proj."),
]


def eva_state_dict_from_transformers(state_dict: dict[str, torch.Tensor], config: EvaVisionConfig) -> dict:
    """A Blip2VisionModel state dict (or a Blip2 model's `vision_model.*`) in this module's keys: `qkv.bias` split
    into `q_bias`/`v_bias`, positions resized to `config.image_size`, `post_layernorm` dropped unless configured."""
    if any(k.startswith("vision_model.") for k in state_dict):
        state_dict = {k: v for k, v in state_dict.items() if k.startswith("vision_model.")}
    converted = {}
    for key, value in rename_keys(state_dict, _TRANSFORMERS_RULES).items():
        if key.endswith(".self_attn.qkv.bias"):
            q_bias, k_bias, v_bias = value.chunk(3)
            if k_bias.any():
                raise CheckpointError(f"{key} has a non-zero key bias, which EVA's attention does not have.")
            converted[key.replace("qkv.bias", "q_bias")], converted[key.replace("qkv.bias", "v_bias")] = q_bias, v_bias
        else:
            converted[key] = value
    return _fit_to_config(converted, config)


_LAVIS_RULES = [
    (r"^visual_encoder\.", ""),
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding.proj."),
    (r"^blocks\.(\d+)\.norm(\d)\.", r"encoder.layers.\1.layer_norm\2."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.attn\.", r"encoder.layers.\1.self_attn."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^ln_vision\.", "post_layernorm."),
]


def eva_state_dict_from_lavis(state_dict: dict[str, torch.Tensor], config: EvaVisionConfig) -> dict:
    """LAVIS's `eva_vit_g.pth` (or a BLIP-2 checkpoint's `visual_encoder.*` and `ln_vision.*`) in this module's keys,
    positions resized to `config.image_size`."""
    if any(k.startswith("visual_encoder.") for k in state_dict):
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(("visual_encoder.", "ln_vision."))}
    return _fit_to_config(rename_keys(state_dict, _LAVIS_RULES), config)
