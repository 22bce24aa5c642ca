"""LowFormer: hardware-efficient convolutional transformer backbones.

LowFormer B0-B3 (WACV 2025, arXiv 2409.03460) and the edge-GPU variants E1-E3 of its journal extension
"Beyond MACs" (IJCV 2026, arXiv 2603.26551). A stride-2 conv stem and two stages of fused MBConv blocks
(strides 4 and 8) are followed by two stages of LowFormer blocks (strides 16 and 32), each a
conv-attention branch, an MLP branch and a local conv branch. The attention runs on a strided depthwise
summary of the map with half the channels and is brought back to full size by a transposed conv.

The module tree and parameter names are those of timm's `lowformer_*`, so timm checkpoints load as they
are and zoo's weights load into timm. The official release's checkpoints (`evalmodel.pt`) are converted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from itertools import pairwise
from typing import Annotated, Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range, ZooConfig
from ..errors import ConfigError
from ..registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)
from .features import run_stages
from .timm_contract import TimmBackbone


@dataclasses.dataclass
class LowFormerConfig(ZooConfig):
    """A LowFormer. `widths`/`depths` list the stem and the four stages.

    The stem and stages 1-2 count their fused MBConv blocks (a stage's first one downsamples); stages 3-4
    count LowFormer blocks after their downsampling block. `attention`/`mlp` switch the blocks' branches
    off (E1/E2 have neither, E3 no MLP); `head_widths` are the head's 1x1 conv and pre-logits widths.
    """

    widths: tuple[PositiveInt, ...] = (16, 32, 64, 128, 256)
    depths: tuple[NonNegativeInt, ...] = (0, 1, 1, 3, 4)
    head_widths: tuple[PositiveInt, ...] = (1536, 1600)
    expand_ratio: PositiveFloat = 4.0
    stem_expand_ratio: PositiveFloat = 2.0
    downsample_expand_ratio: PositiveFloat = 4.0
    attention: bool = True
    mlp: bool = True
    mlp_ratio: PositiveInt = 4
    in_chans: PositiveInt = 3
    num_classes: NonNegativeInt = 1000
    drop_rate: Probability = 0.0
    drop_path_rate: Annotated[float, Range(ge=0, lt=1)] = 0.0

    def validate(self) -> None:
        if len(self.widths) != 5 or len(self.depths) != 5:
            raise ConfigError(
                f"LowFormer needs 5 widths and 5 depths (stem, then four stages), got widths={self.widths}, "
                f"depths={self.depths}."
            )
        if min(self.depths[1:3]) < 1:
            raise ConfigError(f"Stages 1 and 2 start with their downsampling block: depth >= 1, got {self.depths}.")
        if len(self.head_widths) != 2:
            raise ConfigError(f"head_widths are (conv width, pre-logits width), got {self.head_widths}.")
        if self.attention and min(self.widths[3:]) < 2:
            raise ConfigError(f"Attention halves the widths of stages 3 and 4: they must be >= 2, got {self.widths}.")


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability `rate`, rescale the rest."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class Residual(nn.Module):
    """`x + main(x)` with stochastic depth on the branch; just `main(x)` for blocks that change the shape."""

    def __init__(self, main: nn.Module, shortcut: bool = True, drop_path_rate: float = 0.0):
        super().__init__()
        self.main = main
        self.shortcut = shortcut
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.shortcut:
            return self.main(x)
        return x + drop_path(self.main(x), self.drop_path_rate, self.training)


class ConvNormAct(nn.Module):
    """Conv (same padding), optional BatchNorm, optional Hardswish: (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
        bias: bool = False, norm: bool = True, act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias
        )
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class FusedMBConv(nn.Module):
    """3x3 conv to `expand_ratio` x Cin channels (BN, Hardswish), then a 1x1 projection to Cout (BN)."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: float, stride: int = 1, bias: bool = False):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.spatial_conv = ConvNormAct(in_channels, hidden, 3, stride, bias=bias)
        self.point_conv = ConvNormAct(hidden, out_channels, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """1x1 expansion and 3x3 depthwise conv (biases, Hardswish, no norm), then a 1x1 projection (BN)."""

    def __init__(self, channels: int, expand_ratio: float):
        super().__init__()
        hidden = round(channels * expand_ratio)
        self.inverted_conv = ConvNormAct(channels, hidden, 1, bias=True, norm=False)
        self.depth_conv = ConvNormAct(hidden, hidden, 3, groups=hidden, bias=True, norm=False)
        self.point_conv = ConvNormAct(hidden, channels, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class ConvAttention(nn.Module):
    """Softmax attention over a strided depthwise summary of the map: (B, C, H, W) -> (B, C, H, W).

    Queries, keys and values are a 1x1 projection of BN(depthwise conv(x)) to max(1, C // 60) heads of
    (C // heads) // 2 channels (about C/2 in all, laid out head by head as [q | k | v]); the transposed
    conv that upsamples the result back to H x W also projects it back to C channels.
    """

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.num_heads = max(1, dim // 60)
        self.head_dim = dim // self.num_heads // 2
        inner = self.num_heads * self.head_dim
        self.conv_proj = ConvNormAct(dim, dim, 5 if stride > 1 else 3, stride, groups=dim, act=False)
        self.pwise = nn.Conv2d(dim, 3 * inner, 1, bias=False)
        if stride == 1:
            self.upsampling = nn.ConvTranspose2d(inner, dim, 3, 1, 1)
        else:
            self.upsampling = nn.ConvTranspose2d(inner, dim, 2 * stride, stride, stride // 2)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        qkv = self.pwise(self.conv_proj(x))
        grid_height, grid_width = qkv.shape[-2:]
        # (B, heads * [q | k | v] * head_dim, h, w) -> q, k, v of shape (B, heads, h * w, head_dim); no -1 in
        # the shapes, which an empty batch would leave undetermined.
        qkv = qkv.unflatten(1, (self.num_heads, 3 * self.head_dim)).flatten(3)
        q, k, v = qkv.transpose(-1, -2).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).flatten(1, 2).unflatten(-1, (grid_height, grid_width))
        # A transposed conv overshoots odd sizes by one row/column.
        return self.upsampling(out)[..., :height, :width]


class LowFormerBlock(nn.Module):
    """Three residual branches at constant shape (B, C, H, W): attention, MLP, local conv.

    `x + Attn(GN(x))`, `x + MLP(GN(x))`, `x + MBConv(x)`. Without the MLP, attention takes `x` un-normed
    (as published for E3); without attention or MLP the block is its local branch alone.
    """

    def __init__(
        self, dim: int, attention_stride: int, config: LowFormerConfig, drop_path_rate: float = 0.0
    ):
        super().__init__()
        self.attn: nn.Module = nn.Identity()
        self.mlp: nn.Module = nn.Identity()
        if config.attention:
            attention = ConvAttention(dim, attention_stride)
            branch = nn.Sequential(nn.GroupNorm(1, dim), attention) if config.mlp else attention
            self.attn = Residual(branch, drop_path_rate=drop_path_rate)
        if config.mlp:
            hidden = dim * config.mlp_ratio
            self.mlp = Residual(
                nn.Sequential(nn.GroupNorm(1, dim), nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1)),
                drop_path_rate=drop_path_rate,
            )
        # As published: a fused MBConv below 256 channels, an MBConv (depthwise 3x3) from 256 on.
        if dim < 256:
            local: nn.Module = FusedMBConv(dim, dim, config.expand_ratio, bias=True)
        else:
            local = MBConv(dim, config.expand_ratio)
        self.local = Residual(local, drop_path_rate=drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.local(self.mlp(self.attn(x)))


class LowFormer(TimmBackbone):
    """LowFormer classifier: pixel_values (B, in_chans, H, W) -> logits (B, num_classes).

    `forward_features` gives (B, widths[-1], H/32, W/32); `forward_intermediates` the four stage maps
    at strides 4, 8, 16, 32 (described by `feature_info`) for dense tasks. Grad checkpointing recomputes
    each block of the stages.
    """

    config_class = LowFormerConfig
    stem_pattern = r"^stem\.\d+"
    block_pattern = r"^stages\.(\d+)\.(\d+)"
    coarse_block_pattern = r"^stages\.(\d+)"
    first_conv = "stem.0.conv"
    classifier_name = "classifier"
    preprocess = {"crop_pct": 0.95}

    def __init__(self, config: LowFormerConfig):
        super().__init__(config)
        widths, depths = config.widths, config.depths
        self.num_classes = config.num_classes
        self.num_features = widths[-1]
        self.head_hidden_size = config.head_widths[1]
        rates = _drop_path_rates(config.drop_path_rate, depths)

        stem_blocks = [
            Residual(FusedMBConv(widths[0], widths[0], config.stem_expand_ratio), drop_path_rate=r) for r in rates[0]
        ]
        self.stem = nn.Sequential(ConvNormAct(config.in_chans, widths[0], 3, stride=2), *stem_blocks)
        stages = []
        self.feature_info = []
        for index, (in_width, width, stage_rates) in enumerate(zip(widths[:-1], widths[1:], rates[1:])):
            downsample = Residual(
                FusedMBConv(in_width, width, config.downsample_expand_ratio, stride=2), shortcut=False
            )
            if index < 2:  # conv stages: the downsampling block is the first of the stage's blocks
                blocks = [downsample] + [
                    Residual(FusedMBConv(width, width, config.expand_ratio), drop_path_rate=rate)
                    for rate in stage_rates[1:]
                ]
            else:  # attention stages, attention at stride 2 in the first and 1 in the last
                blocks = [downsample] + [
                    LowFormerBlock(width, 2 if index == 2 else 1, config, drop_path_rate=r) for r in stage_rates
                ]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": width, "reduction": 2 ** (index + 2), "module": f"stages.{index}"})
        self.stages = nn.Sequential(*stages)

        head_conv, head_hidden = config.head_widths
        self.in_conv = ConvNormAct(widths[-1], head_conv, 1)
        self.pre_classifier = nn.Sequential(
            nn.Linear(head_conv, head_hidden, bias=False), nn.LayerNorm(head_hidden), nn.Hardswish()
        )
        self.classifier = nn.Linear(head_hidden, config.num_classes) if config.num_classes else nn.Identity()
        self.apply(_init_linear)

    def _check_input(self, pixel_values: Tensor) -> None:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.in_chans:
            raise ValueError(
                f"LowFormer expects pixel_values of shape (B, {self.config.in_chans}, H, W), "
                f"got {tuple(pixel_values.shape)}."
            )

    def forward_features(self, pixel_values: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> the last stage's map (B, widths[-1], H/32, W/32)."""
        self._check_input(pixel_values)
        x = self.stem(pixel_values)
        for stage in self.stages:
            x = self.run_blocks(stage, x)
        return x

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, widths[-1], h, w) -> logits (B, num_classes), or the pooled pre-logits (B, head_widths[1])."""
        x = self.in_conv(features).mean((2, 3))
        x = self.pre_classifier(x)
        x = F.dropout(x, self.config.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(pixel_values))

    def forward_intermediates(
        self, pixel_values: Tensor, indices: int | Sequence[int] | None = None, intermediates_only: bool = False
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The maps of the stages in `indices` (None: all four; n: the last n), each (B, C_i, H/s_i, W/s_i).

        Returns them alone with `intermediates_only` (stopping after the last one asked for), otherwise
        `(forward_features output, maps)`.
        """
        self._check_input(pixel_values)
        return run_stages(self.stem(pixel_values), self.stages, indices, intermediates_only, run=self.run_blocks)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier for `num_classes` (0: none; forward returns pre-logits)."""
        reference = self.pre_classifier[0].weight
        self.config = self.config.replace(num_classes=num_classes)
        self.num_classes = num_classes
        self.classifier = (
            nn.Linear(self.head_hidden_size, num_classes, device=reference.device, dtype=reference.dtype)
            if num_classes else nn.Identity()
        )
        self.classifier.apply(_init_linear)


def _drop_path_rates(max_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to `max_rate` over all blocks, split per stem/stage."""
    total = sum(depths)
    rates = [max_rate * i / max(total - 1, 1) for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths) + 1)]
    return [rates[start:end] for start, end in pairwise(starts)]


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------
# Published variants and checkpoint formats

B0 = LowFormerConfig()
VARIANTS: dict[str, LowFormerConfig] = {
    "b0": B0,
    "b1": B0.replace(depths=(0, 1, 1, 5, 5), downsample_expand_ratio=6.0),
    "b1.5": B0.replace(
        widths=(20, 40, 80, 160, 320), depths=(0, 1, 1, 6, 6), head_widths=(2304, 2560),
        downsample_expand_ratio=6.0,
    ),
    "b3": B0.replace(
        widths=(32, 64, 128, 256, 512), depths=(1, 2, 3, 6, 6), stem_expand_ratio=4.0,
        downsample_expand_ratio=6.0,
    ),
    "e1": B0.replace(
        widths=(20, 40, 80, 160, 320), depths=(0, 1, 1, 4, 4), head_widths=(2304, 2560),
        downsample_expand_ratio=6.0, attention=False, mlp=False,
    ),
    "e2": B0.replace(
        widths=(32, 64, 128, 256, 512), depths=(1, 2, 3, 4, 4), stem_expand_ratio=4.0,
        downsample_expand_ratio=6.0, attention=False, mlp=False,
    ),
    "e3": B0.replace(
        widths=(32, 64, 128, 256, 512), depths=(1, 2, 3, 6, 6), stem_expand_ratio=4.0,
        downsample_expand_ratio=6.0, mlp=False,
    ),
}


def _timm_architecture(variant: str) -> str:
    return "lowformer_" + variant.replace(".", "")


# timm's constructor arguments that have a field here, by their timm name.
_TIMM_ARGS = {
    "width_list": "widths", "depth_list": "depths", "head_widths": "head_widths", "expand_ratio": "expand_ratio",
    "stem_expand_ratio": "stem_expand_ratio", "attn": "attention", "attn_mlp": "mlp",
    "attn_mlp_ratio": "mlp_ratio", "in_chans": "in_chans", "num_classes": "num_classes",
    "drop_rate": "drop_rate", "drop_path_rate": "drop_path_rate",
}
# timm arguments with only one value that matches the published models.
_TIMM_FIXED_ARGS = {"global_pool": "avg", "fused_conv": True, "expand_groups": 1}


def _timm_config(values: dict[str, Any]) -> LowFormerConfig:
    """A timm Hub config.json (`architecture`, `num_classes`, optional `model_args`) as a LowFormerConfig."""
    by_architecture = {_timm_architecture(v): config for v, config in VARIANTS.items()}
    architecture = values.get("architecture")
    if architecture not in by_architecture:
        raise ConfigError(
            f"timm architecture '{architecture}' has no zoo LowFormer config; zoo reads {', '.join(by_architecture)}."
        )
    model_args = {"num_classes": values.get("num_classes", 1000), **values.get("model_args", {})}
    overrides = {}
    for name, value in model_args.items():
        if name == "downsample_expand_ratios" and len(set(value)) == 1:
            overrides["downsample_expand_ratio"] = value[0]
        elif name in _TIMM_ARGS:
            overrides[_TIMM_ARGS[name]] = value
        elif _TIMM_FIXED_ARGS.get(name, object()) != value:
            raise ConfigError(f"timm LowFormer argument {name}={value!r} has no zoo equivalent.")
    return by_architecture[architecture].replace(**overrides)


# The official release nests blocks in OpSequential(op_list) and its LowFormer blocks in
# `total = Sequential(Sequential(attention, mlp) | attention | Identity, local)`.
_ORIGINAL_RULES = [
    (r"^backbone\.input_stem\.op_list\.", "stem."),
    (r"^backbone\.stages\.(\d+)\.op_list\.", r"stages.\1."),
    (r"^head\.opseq\.", "head."),  # the TorchScript head wraps its OpSequential once more
    (r"^head\.op_list\.0\.", "in_conv."),
    (r"^head\.op_list\.2\.linear\.", "pre_classifier.0."),
    (r"^head\.op_list\.2\.norm\.", "pre_classifier.1."),
    (r"^head\.op_list\.3\.linear\.", "classifier."),
    (r"\.total\.0\.0\.", ".attn."),
    (r"\.total\.0\.1\.", ".mlp."),
    (r"\.total\.0\.", ".attn."),
    (r"\.total\.1\.", ".local."),
    (r"\.conv_proj\.0\.", ".conv_proj.conv."),
    (r"\.conv_proj\.1\.", ".conv_proj.norm."),
    (r"\.pwise\.0\.", ".pwise."),
]


def _original_to_zoo(state_dict: dict[str, Tensor], config: LowFormerConfig) -> dict[str, Tensor]:
    return rename_keys(state_dict, _ORIGINAL_RULES)


def _is_original(keys: Collection[str]) -> bool:
    return any(k.startswith(("backbone.input_stem.", "backbone.stages.")) for k in keys)


TIMM = Converter(
    "timm",
    convert_state_dict=lambda state_dict, config: state_dict,
    convert_config=_timm_config,
    matches_config=lambda values: str(values.get("architecture", "")).startswith("lowformer_"),
)
ORIGINAL = Converter("original", convert_state_dict=_original_to_zoo, matches_keys=_is_original)

register_family("lowformer", LowFormer, [TIMM, ORIGINAL], runner="zoo.backbones.classify:run")

IMAGENET_EVAL = {
    "input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.95,
    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
}
IMAGE_224 = InputSpec({"pixel_values": TensorSpec((3, 224, 224))})

# variant: (parameters, ImageNet-1k top-1 as published, GMACs at 224x224 as counted by the tests)
_PUBLISHED = {
    "b0": (14_100_472, 78.4, 0.94),
    "b1": (17_936_312, 79.9, 1.41),
    "b1.5": (33_982_028, 81.2, 2.57),
    "b3": (57_086_920, 83.6, 6.10),
    "e1": (18_896_268, 78.8, 1.35),
    "e2": (22_750_664, 81.6, 3.79),
    "e3": (41_316_808, 83.0, 4.87),
}

for _variant, (_params, _top1, _macs) in _PUBLISHED.items():
    _edge = _variant.startswith("e")
    register_model(ModelEntry(
        name=f"lowformer-{_variant}",
        family="lowformer",
        task="backbone",
        config=VARIANTS[_variant],
        sources=(
            PretrainedSource(
                f"timm/{_timm_architecture(_variant)}.in1k", tag="in1k", format="timm", license="apache-2.0",
                metrics={"top1": _top1}, preprocess=IMAGENET_EVAL, datasets=("imagenet-1k",),
            ),
        ),
        paper="2603.26551" if _edge else "2409.03460",
        description=(
            f"LowFormer-{_variant.upper()} ImageNet-1k classifier ({_macs:.2f} GMACs at 224x224"
            f"{', edge-GPU variant' if _edge else ''}), timm weights."
        ),
        default_input=IMAGE_224,
        expected_params=_params,
    ))

register_model(ModelEntry(
    name="lowformer-tiny",
    family="lowformer",
    task="backbone",
    config=LowFormerConfig(
        widths=(8, 16, 24, 32, 64), depths=(1, 2, 1, 1, 1), head_widths=(64, 96), num_classes=10
    ),
    description="A small random LowFormer (every branch type) for tests and demos.",
    default_input=InputSpec({"pixel_values": TensorSpec((3, 64, 64))}),
))
