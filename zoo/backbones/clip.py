"""CLIP ViT vision tower (= transformers `CLIPVisionModel`), the image encoder of LLaVA-style VLMs.

Pre-LN ViT with a class token, learned absolute positions, a LayerNorm before the first layer
(`pre_layrnorm`, transformers' spelling) and one after, applied to the class token only (`post_layernorm`).
VLMs take a hidden state instead: `select_features(pixels, layer=-2, feature="patch")` is LLaVA's
`hidden_states[-2][:, 1:]`, and runs only the layers it needs. Key names follow transformers without the
`vision_model.` prefix, except `self_attn.o_proj` (`out_proj`) and `embeddings.patch_embedding.proj` (the shared
`PatchEmbed`); the converter reads `CLIPVisionModel` checkpoints and the vision tower of full `CLIPModel` ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import nn

from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import InputError
from zoo.layers.activation import activation_layer
from zoo.layers.embed import PatchEmbed
from zoo.layers.norm import LayerNorm
from zoo.modeling import ZooModel
from zoo.registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)

from .vit import EncoderLayer, check_images, resize_positions


@dataclasses.dataclass
class CLIPVisionConfig(ZooConfig):
    hidden_size: PositiveInt = 768
    intermediate_size: PositiveInt = 3072
    num_hidden_layers: PositiveInt = 12
    num_attention_heads: PositiveInt = 12
    num_channels: PositiveInt = 3
    image_size: PositiveInt = 224
    patch_size: PositiveInt = 32
    hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    layer_norm_eps: PositiveFloat = 1e-5

    def validate(self) -> None:
        self.check_divisible("hidden_size", "num_attention_heads")
        self.check_divisible("image_size", "patch_size")


# transformers' CLIPVisionConfig defaults, for the fields a config.json leaves out.
_TRANSFORMERS_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}


def clip_vision_config_from_transformers(values: dict[str, Any]) -> CLIPVisionConfig:
    """A transformers CLIPVisionConfig dict, or a CLIPConfig dict (its `vision_config`), with transformers'
    defaults for the fields it omits."""
    if values.get("model_type") == "clip" or "vision_config" in values:
        values = values.get("vision_config") or {}
    return CLIPVisionConfig(**{name: values.get(name, default) for name, default in _TRANSFORMERS_DEFAULTS.items()})


@dataclasses.dataclass
class CLIPVisionOutput:
    """The pooled image embedding (post-LN class token) first, then every token of the last layer and, when
    asked for, the hidden states: the pre-LN'd embeddings followed by each layer's output."""

    pooler_output: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class CLIPVisionEmbeddings(nn.Module):
    """Class token + patches, plus learned positions (bicubically resized for other image sizes on request)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.grid = (config.image_size // config.patch_size,) * 2
        self.class_embedding = nn.Parameter(torch.randn(config.hidden_size))
        self.patch_embedding = PatchEmbed(config.num_channels, config.hidden_size, config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(self.grid[0] * self.grid[1] + 1, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        grid = check_images(pixel_values, self.config.num_channels, self.config.patch_size)
        if grid != self.grid and not interpolate_pos_encoding:
            size = self.config.image_size
            raise InputError(
                f"image size {pixel_values.shape[2]}x{pixel_values.shape[3]} differs from the model's {size}x{size}; "
                f"resize the images or pass interpolate_pos_encoding=True."
            )
        weight = self.patch_embedding.proj.weight
        patches, _ = self.patch_embedding(pixel_values.to(weight.dtype))
        cls = self.class_embedding.to(weight.dtype).expand(patches.shape[0], 1, -1)
        positions = self.position_embedding.weight
        positions = torch.cat((positions[:1], resize_positions(positions[1:], grid)))
        return torch.cat((cls, patches), dim=1) + positions


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        act_layer = activation_layer(config.hidden_act)
        self.layers = nn.ModuleList(
            EncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size, act_layer,
                         config.layer_norm_eps)
            for _ in range(config.num_hidden_layers)
        )


class CLIPVision(ZooModel):
    """Images (N, C, H, W) -> `CLIPVisionOutput`; `select_features` gives a VLM's chosen hidden state."""

    config_class = CLIPVisionConfig

    def __init__(self, config: CLIPVisionConfig):
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, interpolate_pos_encoding: bool = False
    ) -> CLIPVisionOutput:
        """interpolate_pos_encoding: resize the learned positions (bicubic) to another image size, as transformers."""
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        hidden_states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            hidden_states.append(x)
        return CLIPVisionOutput(
            pooler_output=self.post_layernorm(x[:, 0]),
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )

    def select_features(
        self,
        pixel_values: torch.Tensor,
        layer: int = -2,
        feature: Literal["patch", "cls_patch"] = "patch",
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """`hidden_states[layer]` (index 0 is the embeddings), without the class token for feature="patch" or
        with it for "cls_patch", as LLaVA's `mm_vision_select_layer` / `mm_vision_select_feature`."""
        count = len(self.encoder.layers) + 1
        if not -count <= layer < count:
            raise InputError(f"layer {layer} is out of range for {count} hidden states (-{count}..{count - 1}).")
        if feature not in ("patch", "cls_patch"):
            raise InputError(f"feature must be 'patch' or 'cls_patch', got {feature!r}.")
        x = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        for block in self.encoder.layers[: layer % count]:
            x = block(x)
        return x[:, 1:] if feature == "patch" else x


_TRANSFORMERS_RULES = [
    (r"^vision_model\.", ""),
    (r"\.self_attn\.out_proj\.", ".self_attn.o_proj."),
    (r"^embeddings\.patch_embedding\.weight$", "embeddings.patch_embedding.proj.weight"),
]


_NOT_VISION = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")


def _from_transformers_state_dict(state_dict: dict[str, torch.Tensor], config: CLIPVisionConfig) -> dict:
    """A CLIPVisionModel state dict (keys with or without `vision_model.`, as transformers 4 and 5 save them) or a
    CLIPModel one, whose text tower and projections are dropped."""
    vision = {k: v for k, v in state_dict.items() if not k.startswith(_NOT_VISION) and not k.endswith("position_ids")}
    return rename_keys(vision, _TRANSFORMERS_RULES)


TRANSFORMERS = Converter(
    "transformers",
    convert_state_dict=_from_transformers_state_dict,
    convert_config=clip_vision_config_from_transformers,
    matches_config=lambda values: values.get("model_type") in ("clip", "clip_vision_model"),
    matches_keys=lambda keys: any(k.endswith("embeddings.patch_embedding.weight") for k in keys),
)

register_family("clip-vision", CLIPVision, [TRANSFORMERS])

register_model(ModelEntry(
    name="clip-vit-l-336",
    family="clip-vision",
    task="backbone",
    config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14),
    sources=(PretrainedSource("openai/clip-vit-large-patch14-336", format="transformers", license="mit"),),
    paper="2103.00020",
    description="OpenAI CLIP ViT-L/14 image tower at 336 px (LLaVA's vision encoder), transformers weights.",
    default_input=InputSpec({"pixel_values": TensorSpec((3, 336, 336))}),
    expected_params=303_507_456,
))

register_model(ModelEntry(
    name="clip-vit-tiny",
    family="clip-vision",
    task="backbone",
    config=CLIPVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=3,
                            image_size=32, patch_size=8),
    description="A small random CLIP vision tower (3 heads) for tests and demos.",
    default_input=InputSpec({"pixel_values": TensorSpec((3, 32, 32))}),
))
