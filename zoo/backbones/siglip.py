"""SigLIP vision encoder with NaViT-style positions (Idefics3 / SmolVLM), a trunk for VLMs.

Images may be padded: a patch mask marks the valid patches, whose positions are bucketed onto the learned
position grid (so a partial image uses the whole grid, as in NaViT), and padded patches are masked out of
attention. Module names follow transformers (`embeddings.patch_embedding`, `embeddings.position_embedding`,
`encoder.layers.{i}.{layer_norm1,self_attn,layer_norm2,mlp}`, `post_layernorm`), except that attention's
output projection is `o_proj` (`out_proj` in transformers; the converters rename it).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import torch
from torch import nn

from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import ConfigError
from zoo.layers.attention import Attention
from zoo.layers.mlp import Mlp
from zoo.layers.norm import LayerNorm


@dataclasses.dataclass
class SiglipVisionConfig(ZooConfig):
    hidden_size: PositiveInt = 768
    intermediate_size: PositiveInt = 3072
    num_hidden_layers: PositiveInt = 12
    num_attention_heads: PositiveInt = 12
    num_channels: PositiveInt = 3
    image_size: PositiveInt = 512
    patch_size: PositiveInt = 16
    layer_norm_eps: PositiveFloat = 1e-6

    def validate(self) -> None:
        self.check_divisible("hidden_size", "num_attention_heads")
        if self.patch_size > self.image_size:
            raise ConfigError(f"SiglipVisionConfig.patch_size ({self.patch_size}) must be at most image_size "
                              f"({self.image_size}).")

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


def siglip_config_from_transformers(values: dict[str, Any]) -> SiglipVisionConfig:
    """A transformers Idefics3/SmolVLM vision config dict, with transformers' defaults for missing fields."""
    if values.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"vision hidden_act '{values['hidden_act']}' is not supported (only gelu_pytorch_tanh)")
    return SiglipVisionConfig(
        hidden_size=values.get("hidden_size", 1152),
        intermediate_size=values.get("intermediate_size", 3072),
        num_hidden_layers=values.get("num_hidden_layers", 12),
        num_attention_heads=values.get("num_attention_heads", 16),
        num_channels=values.get("num_channels", 3),
        image_size=values.get("image_size", 224),
        patch_size=values.get("patch_size", 32),
        layer_norm_eps=values.get("layer_norm_eps", 1e-6),
    )


class SiglipEmbeddings(nn.Module):
    """Patch embedding plus learned positions bucketed to each image's valid patch grid."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.side = config.patches_per_side
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size, config.patch_size)
        self.position_embedding = nn.Embedding(self.side**2, config.hidden_size)

    def position_ids(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """(N, h*w) grid positions of each image's valid patches (0 for padding) from its (N, h, w) patch mask.

        A valid region of n_h x n_w patches spreads over the whole side x side grid: row i goes to bucket
        floor(side * i / n_h), as in NaViT's fractional positions.
        """
        boundaries = torch.arange(1 / self.side, 1.0, 1 / self.side, device=patch_mask.device)
        # i * (1 / n) rather than i / n: the rounding decides buckets at the boundaries, and must match.
        row_step, col_step = 1.0 / patch_mask[:, :, 0].sum(1), 1.0 / patch_mask[:, 0, :].sum(1)
        row_fraction = torch.arange(patch_mask.shape[1], device=patch_mask.device)[None] * row_step[:, None]
        col_fraction = torch.arange(patch_mask.shape[2], device=patch_mask.device)[None] * col_step[:, None]
        row_bucket = torch.bucketize(row_fraction.clamp(max=1 - 1e-6), boundaries, right=True)
        col_bucket = torch.bucketize(col_fraction.clamp(max=1 - 1e-6), boundaries, right=True)
        grid = (row_bucket[:, :, None] * self.side + col_bucket[:, None, :]).flatten(1)
        return torch.where(patch_mask.flatten(1), grid, 0)

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values (N, C, H, W), patch_mask (N, H/p, W/p) bool -> tokens (N, H/p * W/p, hidden)."""
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        return patches.flatten(2).transpose(1, 2) + self.position_embedding(self.position_ids(patch_mask))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Attention(config.hidden_size, config.num_attention_heads, qkv_bias=True, out_bias=True)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config.hidden_size, config.intermediate_size, act_layer=partial(nn.GELU, approximate="tanh"))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))


class SiglipVisionTransformer(nn.Module):
    """Images (N, C, H, W) with an optional (N, H/p, W/p) patch mask -> tokens (N, H/p * W/p, hidden)."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = SiglipEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (N, {self.config.num_channels}, H, W), got {tuple(pixel_values.shape)}"
            )
        p = self.config.patch_size
        grid = (pixel_values.shape[0], pixel_values.shape[2] // p, pixel_values.shape[3] // p)
        if patch_mask is None:
            patch_mask = torch.ones(grid, dtype=torch.bool, device=pixel_values.device)
        elif tuple(patch_mask.shape) != grid:
            raise ValueError(f"patch_mask must be (N, H/p, W/p) = {grid}, got {tuple(patch_mask.shape)}")
        x = self.embeddings(pixel_values, patch_mask)
        keys = patch_mask.flatten(1)
        attn_mask = None if bool(keys.all()) else keys[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, attn_mask)
        return self.post_layernorm(x)
