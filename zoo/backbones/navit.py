"""NaViT SigLIP with 2D axial RoPE (VideoLLaMA3's and Hulu-Med's vision encoder, = transformers
`VideoLlama3VisionModel`).

Images and videos of any size (in patches) are packed into one sequence of patches, described by `grid_thw`
(frames, rows, columns per item) and `merge_sizes`. There is no absolute position embedding: each head rotates
half its channels by the patch row and half by the column. Attention is block-diagonal per frame (flash-attn
varlen on CUDA, a block mask otherwise). After the post-LN, each item is down-sampled bilinearly by its merge
size (1 for images, 2 for videos in VideoLLaMA3). Patches come in merge-block order, (t, h/m, w/m, m, m, C, p, p),
as the processors make them; `patchify` builds that layout from pixels. Key names follow transformers, except
`self_attn.o_proj` (`out_proj`) and `embeddings.patch_embedding.proj` (the shared `PatchEmbed`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import ConfigError, InputError
from zoo.layers.activation import activation_layer
from zoo.layers.embed import PatchEmbed
from zoo.layers.norm import LayerNorm
from zoo.layers.rotary import RotaryEmbedding
from zoo.layers.token_reduction import downsample_token_grid
from zoo.modeling import ZooModel
from zoo.registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)

from .vit import EncoderLayer


@dataclasses.dataclass
class NaViTSiglipConfig(ZooConfig):
    hidden_size: PositiveInt = 768
    intermediate_size: PositiveInt = 3072
    num_hidden_layers: PositiveInt = 12
    num_attention_heads: PositiveInt = 12
    num_channels: PositiveInt = 3
    patch_size: PositiveInt = 16
    hidden_act: Literal["gelu_pytorch_tanh", "gelu", "quick_gelu"] = "gelu_pytorch_tanh"
    layer_norm_eps: PositiveFloat = 1e-6
    rope_theta: PositiveFloat = 10000.0

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 4:
            raise ConfigError(
                f"NaViTSiglipConfig.hidden_size ({self.hidden_size}) must be num_attention_heads "
                f"({self.num_attention_heads}) times a head size divisible by 4 (2D rotary: 2 axes of channel pairs)."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# transformers' VideoLlama3VisionConfig defaults, for the fields a config.json leaves out.
_TRANSFORMERS_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}
ROPE_TYPES = ("axial",)


def navit_config_from_transformers(values: dict[str, Any]) -> NaViTSiglipConfig:
    """A transformers VideoLlama3VisionConfig dict (or a VideoLlama3Config's `vision_config`, or Hulu-Med's
    `hulumed_vision_encoder` config), with transformers' defaults for omitted fields. The rope is read from
    `rope_parameters` (transformers 5) or `rope_scaling`/`rope_theta` (4.x spellings)."""
    if values.get("model_type") == "video_llama_3" or "vision_config" in values:
        values = values.get("vision_config") or {}
    rope = values.get("rope_parameters") or values.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "axial"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"NaViT SigLIP rope_type '{rope_type}' is not supported; supported: {', '.join(ROPE_TYPES)}.")
    fields = {name: values.get(name, default) for name, default in _TRANSFORMERS_DEFAULTS.items()}
    return NaViTSiglipConfig(**fields, rope_theta=rope.get("rope_theta", values.get("rope_theta", 10000.0)))


def patchify(pixel_values: torch.Tensor, patch_size: int, merge_size: int = 1) -> tuple[torch.Tensor, list[int]]:
    """Frames (T, C, H, W) of one image or video -> patches (T*h*w, C*p*p) in merge-block order and its [t, h, w].

    H and W must be multiples of patch_size * merge_size (InputError otherwise)."""
    if pixel_values.ndim != 4:
        raise InputError(f"pixel_values must be frames (T, C, H, W), got {tuple(pixel_values.shape)}.")
    height, width = pixel_values.shape[2:]
    unit = patch_size * merge_size
    if height % unit or width % unit:
        raise InputError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}"
            + (f" times the merge size {merge_size}" if merge_size > 1 else "")
            + f"; resize the images to multiples of {unit}."
        )
    patches = rearrange(
        pixel_values, "t c (hb m1 p1) (wb m2 p2) -> (t hb wb m1 m2) (c p1 p2)", m1=merge_size, m2=merge_size,
        p1=patch_size, p2=patch_size,
    )
    return patches, [pixel_values.shape[0], height // patch_size, width // patch_size]


def navit_position_ids(grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> torch.Tensor:
    """(total, 2) (row, column) of every patch, in merge-block order, repeated over each item's frames."""
    positions = []
    for (t, h, w), m in zip(grid_thw.tolist(), merge_sizes.tolist()):
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack((rows, cols), dim=-1)
        blocks = rearrange(grid, "(hb m1) (wb m2) two -> (hb wb m1 m2) two", m1=m, m2=m)
        positions.append(blocks.repeat(t, 1))
    return torch.cat(positions).to(grid_thw.device) if positions else grid_thw.new_zeros(0, 2)


class NaViTEmbeddings(nn.Module):
    def __init__(self, config: NaViTSiglipConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = PatchEmbed(config.num_channels, config.hidden_size, config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patches (total, C*p*p) -> tokens (total, hidden)."""
        p, c = self.config.patch_size, self.config.num_channels
        patches = pixel_values.to(self.patch_embedding.proj.weight.dtype).view(-1, c, p, p)
        return self.patch_embedding(patches)[0].view(-1, self.config.hidden_size)


class NaViTEncoder(nn.Module):
    def __init__(self, config: NaViTSiglipConfig):
        super().__init__()
        act_layer = activation_layer(config.hidden_act)
        self.layers = nn.ModuleList(
            EncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size, act_layer,
                         config.layer_norm_eps)
            for _ in range(config.num_hidden_layers)
        )


class NaViTSiglip(ZooModel):
    """Packed patches (total, C*p*p) with grid_thw (n, 3) and merge_sizes (n,) -> tokens
    (sum of t * h/m * w/m, hidden), items in order."""

    config_class = NaViTSiglipConfig

    def __init__(self, config: NaViTSiglipConfig):
        super().__init__(config)
        quarter = config.head_dim // 2
        self.rotary = RotaryEmbedding((quarter, quarter), theta=config.rope_theta)
        self.embeddings = NaViTEmbeddings(config)
        self.encoder = NaViTEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def _check(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> None:
        c, p = self.config.num_channels, self.config.patch_size
        if pixel_values.ndim != 2 or pixel_values.shape[1] != c * p * p:
            raise InputError(
                f"pixel_values must be patches (total, {c}*{p}*{p} = {c * p * p}) as `patchify` makes them from images "
                f"whose sizes divide by the patch size {p}; got {tuple(pixel_values.shape)}."
            )
        if grid_thw.ndim != 2 or grid_thw.shape[1] != 3 or merge_sizes.shape != grid_thw.shape[:1]:
            raise InputError(f"grid_thw must be (n, 3) and merge_sizes (n,), got {tuple(grid_thw.shape)} and "
                             f"{tuple(merge_sizes.shape)}.")
        if int(grid_thw.prod(dim=1).sum()) != pixel_values.shape[0]:
            raise InputError(f"grid_thw describes {int(grid_thw.prod(dim=1).sum())} patches, but pixel_values holds "
                             f"{pixel_values.shape[0]}.")
        if bool(((grid_thw[:, 1:] % merge_sizes[:, None]) != 0).any()):
            raise InputError(f"every grid's rows and columns must divide by its merge size; got grid_thw "
                             f"{grid_thw.tolist()} and merge_sizes {merge_sizes.tolist()}.")

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> torch.Tensor:
        self._check(pixel_values, grid_thw, merge_sizes)
        frame_lengths = (grid_thw[:, 1] * grid_thw[:, 2]).repeat_interleave(grid_thw[:, 0])
        cu_seqlens = F.pad(frame_lengths.cumsum(0), (1, 0)).to(pixel_values.device)
        cos, sin = self.rotary(navit_position_ids(grid_thw, merge_sizes).to(pixel_values.device))
        x = self.embeddings(pixel_values)[None]
        for layer in self.encoder.layers:
            x = layer(x, rotary=(cos, sin), cu_seqlens=cu_seqlens)
        x = self.post_layernorm(x[0])
        return torch.cat([x[:0], *self._merge(x, grid_thw, merge_sizes)])

    @staticmethod
    def _merge(x: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Each item's tokens, back in row-major order and bilinearly down-sampled by its merge size."""
        merged = []
        items = zip(x.split(grid_thw.prod(dim=1).tolist()), grid_thw.tolist(), merge_sizes.tolist())
        for tokens, (t, h, w), m in items:
            frames = rearrange(tokens, "(t hb wb m1 m2) d -> t (hb m1 wb m2) d", t=t, hb=h // m, wb=w // m, m1=m, m2=m)
            merged.append(downsample_token_grid(frames, (h, w), m, mode="bilinear")[0].flatten(0, 1))
        return merged


_TRANSFORMERS_RULES = [
    (r"^(model\.)?vision_(model|encoder)\.", ""),
    (r"\.self_attn\.out_proj\.", ".self_attn.o_proj."),
    (r"^embeddings\.patch_embedding\.", "embeddings.patch_embedding.proj."),
]


TRANSFORMERS = Converter(
    "transformers",
    convert_state_dict=lambda state_dict, config: rename_keys(state_dict, _TRANSFORMERS_RULES),
    convert_config=navit_config_from_transformers,
    matches_config=lambda values: values.get("model_type") in ("video_llama_3_vision", "hulumed_vision_encoder"),
    matches_keys=lambda keys: any(k.endswith("self_attn.out_proj.weight") for k in keys)
    and not any("position_embedding" in k for k in keys),
)

register_family("navit-siglip", NaViTSiglip, [TRANSFORMERS])


def _example_inputs(config: NaViTSiglipConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, Any]:
    """Alternately a 4x6-patch image (merge 1) and a 2-frame 4x4-patch video (merge 2)."""
    grids = [[1, 4, 6] if i % 2 == 0 else [2, 4, 4] for i in range(batch_size)]
    grid_thw = torch.tensor(grids, dtype=torch.long).view(-1, 3)
    patch = config.num_channels * config.patch_size**2
    return {
        "pixel_values": torch.randn(int(grid_thw.prod(dim=1).sum()), patch, generator=generator),
        "grid_thw": grid_thw,
        "merge_sizes": torch.tensor([1 if i % 2 == 0 else 2 for i in range(batch_size)], dtype=torch.long),
    }


def _input_spec(config: NaViTSiglipConfig) -> InputSpec:
    patch = config.num_channels * config.patch_size**2
    return InputSpec(
        {"pixel_values": TensorSpec((24, patch)), "grid_thw": TensorSpec((3,), torch.long, low=1, high=7),
         "merge_sizes": TensorSpec((), torch.long, low=1, high=2)},
        factory=_example_inputs,
    )


_SO400M = NaViTSiglipConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                            patch_size=14)
register_model(ModelEntry(
    name="siglip-navit",
    family="navit-siglip",
    task="backbone",
    config=_SO400M,
    sources=(PretrainedSource("ZJU-AI4H/SigLip-NaViT", format="transformers"),),
    paper="2510.08668",
    description="Hulu-Med's SigLIP-so400m NaViT encoder with 2D RoPE (VideoLLaMA3's design), packed images "
                "and videos.",
    default_input=_input_spec(_SO400M),
    expected_params=412_147_440,
))

_TINY = NaViTSiglipConfig(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=5,
                          patch_size=4)
register_model(ModelEntry(
    name="siglip-navit-tiny",
    family="navit-siglip",
    task="backbone",
    config=_TINY,
    description="A small random NaViT SigLIP (5 heads) for tests and demos.",
    default_input=_input_spec(_TINY),
))
