"""WaveMix: token mixing with a multi-level 2D Haar wavelet transform.

WaveMix (arXiv 2203.03689; extended as arXiv 2205.14375) is an isotropic stack of WaveMix blocks at one
resolution. Each block reduces the channels to a quarter, takes a multi-level Haar DWT (each level stacks
the lowpass and the three highs back to full width at half the resolution), and mixes the levels coarse to
fine with 1x1-conv MLPs and x2 transposed convs. A conv stem downsamples the image first; the head pools
and classifies, or (segmentation) upsamples x4 and classifies every pixel.

The published weights are the authors' plain state dicts at `cloudwalker/wavemix`, converted by the
"original" converter; the published configs are registered below, with the accuracy in each file's name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import NonNegativeInt, PositiveInt, Probability, ZooConfig
from ..errors import ConfigError
from ..layers.wavelet import haar_dwt2d_concat
from ..registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)
from .features import run_stages
from .timm_contract import TimmBackbone


@dataclasses.dataclass
class WaveMixConfig(ZooConfig):
    """A WaveMix. The pip package's names: `dim` is final_dim, `ff_dim` ff_channel, `mlp_ratio` mult.

    `stem` "patchify" (two 3x3 convs, then a `patch_size` patch conv, GELU and BN) or "strided" (two 3x3
    convs of stride `stem_stride`). Non-empty `segmentation_widths` (two widths) make a segmentation
    model whose head upsamples x4 with two transposed convs of those widths. `dropout` acts inside the
    level MLPs (0.5 in every published config).
    """

    dim: PositiveInt = 192
    depth: PositiveInt = 16
    levels: PositiveInt = 3
    mlp_ratio: PositiveInt = 2
    ff_dim: PositiveInt = 192
    stem: Literal["patchify", "strided"] = "patchify"
    patch_size: PositiveInt = 4
    stem_stride: PositiveInt = 2
    in_chans: PositiveInt = 3
    num_classes: NonNegativeInt = 1000
    segmentation_widths: tuple[PositiveInt, ...] = ()
    dropout: Probability = 0.5

    def validate(self) -> None:
        if self.dim % 4:
            raise ConfigError(f"WaveMix needs dim divisible by 4 (its blocks reduce to dim / 4), got dim={self.dim}.")
        if len(self.segmentation_widths) not in (0, 2):
            raise ConfigError(f"segmentation_widths are two upsampling widths, got {self.segmentation_widths}.")

    @property
    def reduction(self) -> int:
        """How much the stem downsamples."""
        return self.patch_size if self.stem == "patchify" else self.stem_stride**2


class LevelMlp(nn.Module):
    """The MLP of one wavelet level: (B, Cin, h, w) -> (B, Cout, 2h, 2w).

    1x1 conv to `hidden`, GELU, dropout, 1x1 conv to `ff_dim`, x2 transposed conv (k4, s2) to Cout, BN.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, ff_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Conv2d(hidden, ff_dim, 1)
        self.upsample = nn.ConvTranspose2d(ff_dim, out_channels, 4, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc2(self.drop(self.act(self.fc1(x))))
        if self.training:
            return self.norm(self.upsample(hidden))
        # In eval the BN is a per-channel affine map: fold it into the transposed conv's weight and bias, which
        # saves a pass over the largest activation of the block.
        scale = self.norm.weight * torch.rsqrt(self.norm.running_var + self.norm.eps)
        weight = self.upsample.weight * scale[:, None, None]
        bias = (self.upsample.bias - self.norm.running_mean) * scale + self.norm.bias
        return F.conv_transpose2d(hidden, weight, bias, self.upsample.stride, self.upsample.padding)


def _joint_kernel(first: Tensor, second: Tensor) -> Tensor:
    """The kernel of the one conv equal to conv `second` after conv `first`, both unpadded and `first` of stride
    1: their full convolution, K[o, c, i + u, j + v] = sum_m W2[o, m, i, j] W1[m, c, u, v]. `fold` (col2im) sums
    the products onto K's grid, with `first`'s taps as the patch and `second`'s as the positions."""
    (out_channels, _, height, width), (_, in_channels, first_height, first_width) = second.shape, first.shape
    products = torch.einsum("omij,mcuv->ocuvij", second, first).reshape(1, -1, height * width)
    size = (height + first_height - 1, width + first_width - 1)
    return F.fold(products, size, (first_height, first_width)).view(out_channels, in_channels, *size)


class PatchifyStem(nn.Sequential):
    """Two 3x3 convs (stride 1, padding 1), a patch conv, GELU and BN: (B, Cin, H, W) -> (B, dim, H / p, W / p).

    The three convs have no nonlinearity between them, so in eval they run as one conv of kernel p + 4 and
    stride p over the input padded by 2: at dim 192 and p = 4, 26x fewer multiplies. That conv also sees the
    first conv's outputs on a one-pixel ring around the image, where the second conv's zero padding has zeros;
    the ring reaches only the first and last output row and column, and its share there is subtracted.
    Training runs the three convs.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__(
            nn.Conv2d(in_chans, dim // 4, 3, 1, 1),
            nn.Conv2d(dim // 4, dim // 2, 3, 1, 1),
            nn.Conv2d(dim // 2, dim, patch_size, patch_size),
            nn.GELU(),
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        first, second, patch, act, norm = self
        stride = patch.stride[0]
        # A conv maps a constant input b to W.sum((2, 3)) @ b: that carries each bias through the next conv.
        first_two_bias = second.bias + second.weight.sum((2, 3)) @ first.bias
        bias = patch.bias + patch.weight.sum((2, 3)) @ first_two_bias
        weight = _joint_kernel(_joint_kernel(first.weight, second.weight), patch.weight)
        x = F.pad(x, (2, 2, 2, 2))
        out = F.conv2d(x, weight, bias, stride)
        # The ring: the first conv at the positions one pixel outside the image, its rows with the corners.
        ring = first.weight, first.bias
        top, bottom = F.conv2d(x[:, :, :3], *ring), F.conv2d(x[:, :, -3:], *ring)
        left = F.pad(F.conv2d(x[:, :, 1:-1, :3], *ring), (0, 0, 1, 1))
        right = F.pad(F.conv2d(x[:, :, 1:-1, -3:], *ring), (0, 0, 1, 1))
        # A ring row reaches the first (last) output row only, through the first (last) kernel row of the
        # second and patch convs together, which is the joint kernel of their first (last) rows; the same
        # for columns. One index picks both the output edge and the kernel edge.
        for edge, ring_part, edge_stride in (
            ((..., slice(0, 1), slice(None)), top, (1, stride)),
            ((..., slice(-1, None), slice(None)), bottom, (1, stride)),
            ((..., slice(0, 1)), left, (stride, 1)),
            ((..., slice(-1, None)), right, (stride, 1)),
        ):
            edge_kernel = _joint_kernel(second.weight[edge], patch.weight[edge])
            out[edge] -= F.conv2d(ring_part, edge_kernel, stride=edge_stride)
        return norm(act(out))


class WaveMixBlock(nn.Module):
    """`x + mix(x)` at constant shape (B, C, H, W), with H and W divisible by 2**levels.

    A 1x1 conv reduces x to C/4 channels; its Haar DWT gives at level j the C channels [LL_j | highs_j]
    at (H, W) / 2**j. The coarsest level's MLP output (C/2 channels, or C with one level) is
    concatenated to the next finer level's bands, and so on up to the finest, whose MLP returns C
    channels at full resolution.
    """

    def __init__(self, config: WaveMixConfig):
        super().__init__()
        dim, levels = config.dim, config.levels
        hidden = dim * config.mlp_ratio
        self.reduce = nn.Conv2d(dim, dim // 4, 1)
        self.levels = nn.ModuleList(
            LevelMlp(
                dim if level == levels - 1 else dim + dim // 2,
                dim if level == 0 else dim // 2,
                hidden, config.ff_dim, config.dropout,
            )
            for level in range(levels)
        )

    def forward(self, x: Tensor) -> Tensor:
        bands = haar_dwt2d_concat(self.reduce(x), len(self.levels))
        if _is_channels_last(x):  # the bands come out NCHW; the convs, and the residual add, are faster in x's layout
            bands = [band.contiguous(memory_format=torch.channels_last) for band in bands]
        mixed = self.levels[-1](bands[-1])
        for band, mlp in zip(reversed(bands[:-1]), reversed(self.levels[:-1])):
            mixed = mlp(torch.cat([band, mixed], dim=1))
        return mixed.add_(x)


class WaveMixHead(nn.Module):
    """Classification: mean-pool and a linear layer, (B, C, h, w) -> (B, classes).

    Segmentation: two x2 transposed convs and a 1x1 conv, (B, C, h, w) -> (B, classes, 4h, 4w).
    """

    def __init__(self, config: WaveMixConfig):
        super().__init__()
        self.segmentation = bool(config.segmentation_widths)
        if self.segmentation:
            first, second = config.segmentation_widths
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(config.dim, first, 4, stride=2, padding=1),
                nn.ConvTranspose2d(first, second, 4, stride=2, padding=1),
            )
            self.in_features = second
        else:
            self.in_features = config.dim
        self.fc = self.make_classifier(config.num_classes)

    def make_classifier(self, num_classes: int) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        if self.segmentation:
            return nn.Conv2d(self.in_features, num_classes, 1)
        return nn.Linear(self.in_features, num_classes)

    def forward(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.upsample(features) if self.segmentation else features.mean((2, 3))
        return x if pre_logits else self.fc(x)


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _channels_last_on_cpu(x: Tensor) -> Tensor:
    """The trunk runs channels-last on CPU, where oneDNN's convolutions and transposed convolutions are faster in
    that layout (about 1.1-1.2x end to end; results agree with NCHW to rounding); the blocks bring their Haar bands
    into it too. Elsewhere the layout is left to the caller (`model.to(memory_format=torch.channels_last)`)."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


class WaveMix(TimmBackbone):
    """WaveMix: pixel_values (B, in_chans, H, W) -> logits (B, num_classes), or for segmentation
    (B, num_classes, 4H / r, 4W / r), the input size with the published stems (r = 4). H and W must be
    multiples of the stem's downsampling r times 2**levels.

    `forward_features` gives (B, dim, H / r, W / r) with r the stem's downsampling; `forward_intermediates`
    gives the output of any of the blocks (all of that shape), described by `feature_info`. Grad checkpointing
    recomputes each block.
    """

    config_class = WaveMixConfig
    stem_pattern = r"^stem\."
    block_pattern = coarse_block_pattern = r"^blocks\.(\d+)"
    first_conv = "stem.0"
    classifier_name = "head.fc"
    preprocess = {"crop_pct": 1.0}  # the repo's timm config

    def __init__(self, config: WaveMixConfig):
        super().__init__(config)
        dim = config.dim
        self.num_classes = config.num_classes
        self.num_features = dim
        if config.stem == "patchify":
            self.stem = PatchifyStem(config.in_chans, dim, config.patch_size)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(config.in_chans, dim // 2, 3, config.stem_stride, 1),
                nn.Conv2d(dim // 2, dim, 3, config.stem_stride, 1),
            )
        self.blocks = nn.Sequential(*[WaveMixBlock(config) for _ in range(config.depth)])
        self.head = WaveMixHead(config)
        self.head_hidden_size = self.head.in_features
        self.feature_info = [
            {"num_chs": dim, "reduction": config.reduction, "module": f"blocks.{i}"} for i in range(config.depth)
        ]

    def _check_input(self, pixel_values: Tensor) -> None:
        config = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != config.in_chans:
            raise ValueError(
                f"WaveMix expects pixel_values of shape (B, {config.in_chans}, H, W), "
                f"got {tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        step = config.reduction * 2**config.levels
        if height % step or width % step:
            suggestion = f"{max(step, round(height / step) * step)}x{max(step, round(width / step) * step)}"
            raise ValueError(
                f"This WaveMix needs H and W divisible by {step} (its stem downsamples by {config.reduction}, "
                f"then {config.levels} wavelet level(s) halve the map {config.levels} time(s)), got "
                f"{height}x{width}. Resize or pad the images, e.g. to {suggestion}."
            )

    def forward_features(self, pixel_values: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> (B, dim, H / r, W / r), r the stem's downsampling."""
        self._check_input(pixel_values)
        return self.run_blocks(self.blocks, self.stem(_channels_last_on_cpu(pixel_values))).contiguous()

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Logits from `forward_features`' output; with `pre_logits` the pooled features (B, dim), or the
        upsampled maps (B, segmentation_widths[1], 4h, 4w) of a segmentation model."""
        return self.head(features, pre_logits=pre_logits)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(pixel_values))

    def forward_intermediates(
        self, pixel_values: Tensor, indices: int | Sequence[int] | None = None, intermediates_only: bool = False
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The outputs of the blocks in `indices` (None: all; n: the last n), each (B, dim, H / r, W / r).

        Returns them alone with `intermediates_only` (stopping after the last one asked for), otherwise
        `(forward_features output, maps)`.
        """
        self._check_input(pixel_values)
        x = self.stem(_channels_last_on_cpu(pixel_values))
        return run_stages(x, self.blocks, indices, intermediates_only, output=Tensor.contiguous, run=self.run_block)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier for `num_classes` (0: none; forward returns pre-logits)."""
        reference = self.stem[0].weight
        self.config = self.config.replace(num_classes=num_classes)
        self.num_classes = num_classes
        self.head.fc = self.head.make_classifier(num_classes).to(reference.device, reference.dtype)


# ---------------------------------------------------------------------------------------------------
# The authors' checkpoints: wavemix.classification.WaveMix and wavemix.SemSegment.WaveMix state dicts

_LEVEL_MLP_NAMES = {"0": "fc1", "3": "fc2", "4": "upsample", "5": "norm"}  # positions in their nn.Sequential


_ORIGINAL_RULES = [
    (r"^conv\.", "stem."),
    (r"^layers\.(\d+)\.reduction\.", r"blocks.\1.reduce."),
    # feedforward1 is the finest level's MLP; one-level blocks call theirs just feedforward.
    (r"^layers\.(\d+)\.feedforward(\d?)\.(\d)\.",
     lambda m: f"blocks.{m[1]}.levels.{int(m[2] or 1) - 1}.{_LEVEL_MLP_NAMES[m[3]]}."),
    # The classifier is `pool.2`; segmentation heads are `pool` (Cityscapes) or `expand` (SemSegment).
    (r"^(pool|expand)\.2\.", "head.fc."),
    (r"^(pool|expand)\.([01])\.", r"head.upsample.\2."),
]


def _original_to_zoo(state_dict: dict[str, Tensor], config: WaveMixConfig) -> dict[str, Tensor]:
    return rename_keys(state_dict, _ORIGINAL_RULES)


def _is_original(keys: Collection[str]) -> bool:
    return any(re.match(r"layers\.\d+\.feedforward\d?\.", key) for key in keys)


ORIGINAL = Converter("original", convert_state_dict=_original_to_zoo, matches_keys=_is_original)

register_family("wavemix", WaveMix, [ORIGINAL], runner="zoo.backbones.classify:run")

HUB_ID = "cloudwalker/wavemix"
IMAGENET_MEAN_STD = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
# The repo's timm config for its ImageNet models.
IMAGENET_EVAL = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 1.0, **IMAGENET_MEAN_STD}
# The test-set normalisation of the repo's CIFAR-10 and Tiny ImageNet training scripts (no resizing).
CIFAR10_EVAL = {"input_size": (3, 32, 32), "mean": (0.4941, 0.4853, 0.4507), "std": (0.2468, 0.2430, 0.2618)}
TINYIMAGENET_EVAL = {"input_size": (3, 64, 64), "mean": (0.4825, 0.4499, 0.3984), "std": (0.2764, 0.2691, 0.2825)}

PAPER = "2205.14375"


# The data each tag's weights were trained on, as the Hub names those data sets.
DATASETS = {"in1k": "imagenet-1k", "cifar10": "cifar10", "cifar100": "cifar100", "places365": "places365",
            "galaxy10": "galaxy10-decals", "cityscapes": "cityscapes", "tinyimagenet": "tiny-imagenet"}


def _source(tag: str, file: str, metrics: dict[str, float], preprocess: dict, notes: str = "") -> PretrainedSource:
    return PretrainedSource(
        HUB_ID, tag=tag, files=(f"Saved_Models_Weights/{file}",), format="original", license="mit",
        metrics=metrics, preprocess=preprocess, datasets=(DATASETS[tag.partition("_")[0]],), notes=notes,
    )


def _register(
    name: str, config: WaveMixConfig, sources: tuple[PretrainedSource, ...], description: str, params: int,
) -> None:
    size = sources[0].preprocess["input_size"]
    register_model(ModelEntry(
        name=name, family="wavemix", task="backbone", config=config, sources=sources, paper=PAPER,
        description=description, default_input=InputSpec({"pixel_values": TensorSpec(tuple(size))}),
        expected_params=params,
    ))


def _config(dim: int, depth: int, levels: int, num_classes: int, **kwargs) -> WaveMixConfig:
    return WaveMixConfig(dim=dim, depth=depth, levels=levels, ff_dim=dim, num_classes=num_classes, **kwargs)


_register(
    "wavemix-192-16-l3", _config(192, 16, 3, 1000),
    (_source("in1k", "ImageNet/wavemix_192_16_75.06.pth", {"top1": 75.06}, IMAGENET_EVAL),),
    "WaveMix-192/16 (3-level) ImageNet-1k classifier, 224x224.", 27_857_608,
)
_register(
    "wavemix-192-16-l1", _config(192, 16, 1, 1000),
    (_source("in1k", "ImageNet/wavemixlite_71.18.pth", {"top1": 71.18}, IMAGENET_EVAL),),
    "WaveMix-Lite-192/16 (1-level) ImageNet-1k classifier, 224x224.", 12_494_536,
)
_register(
    "wavemix-256-16-l3", _config(256, 16, 3, 1000),
    (_source("in1k", "ImageNet/ImageNet73.03.pth", {"top1": 73.03}, IMAGENET_EVAL),),
    "WaveMix-256/16 (3-level) ImageNet-1k classifier, 224x224.", 49_416_808,
)
_register(
    "wavemix-256-16-l4", _config(256, 16, 4, 1000, stem="strided", stem_stride=2),
    (_source(
        "in1k", "ImageNet/imagenet4level_70.42.pth", {"top1": 70.42},
        {"input_size": (3, 256, 256), **IMAGENET_MEAN_STD},
        notes="The release states no input size; 224 is not divisible (224 / 4 = 56 is not a multiple of 2**4).",
    ),),
    "WaveMix-256/16 (4-level, strided stem) ImageNet-1k classifier, 256x256.", 62_764_776,
)
_register(
    "wavemix-256-12-l2-places365", _config(256, 12, 2, 365, patch_size=8),
    (_source(
        "places365", "Places365/places365_54.94.pth", {"top1": 54.94},
        {"input_size": (3, 224, 224), **IMAGENET_MEAN_STD},
        notes="The release states no preprocessing; ImageNet's is assumed.",
    ),),
    "WaveMix-256/12 (2-level, patch 8) Places-365 classifier.", 28_449_261,
)
for _dim, _depth, _top1, _params in ((144, 7, 94.58, 3_042_550), (320, 8, 95.37, 17_073_610)):
    _register(
        f"wavemix-{_dim}-{_depth}-l1-cifar10", _config(_dim, _depth, 1, 10, stem="strided", stem_stride=1),
        (_source("cifar10", f"cifar10/cifar10_{_top1}.pth", {"top1": _top1}, CIFAR10_EVAL),),
        f"WaveMix-Lite-{_dim}/{_depth} CIFAR-10 classifier, 32x32.", _params,
    )
for _depth, _top1, _params in ((8, 77.82, 10_954_084), (10, 78.81, 13_611_492)):
    _register(
        f"wavemix-256-{_depth}-l1-cifar100", _config(256, _depth, 1, 100, stem="strided", stem_stride=1),
        (_source("cifar100", f"cifar100/cifar100_{_top1}.pth", {"top1": _top1}, {"input_size": (3, 32, 32)},
                 notes="The release states no normalisation for CIFAR-100."),),
        f"WaveMix-Lite-256/{_depth} CIFAR-100 classifier, 32x32.", _params,
    )
_register(
    "wavemix-256-12-l1-tinyimagenet", _config(256, 12, 1, 200, stem="strided", stem_stride=1),
    (_source("tinyimagenet", "tinyimagenet/tinyimagenet_62.51.pth", {"top1": 62.51}, TINYIMAGENET_EVAL),),
    "WaveMix-Lite-256/12 Tiny ImageNet classifier, 64x64.", 16_294_600,
)
_register(
    "wavemix-192-16-l3-tinyimagenet", _config(192, 16, 3, 200),
    (
        _source("tinyimagenet", "tinyimagenet/tiny_71.69.pth", {"top1": 71.69}, TINYIMAGENET_EVAL),
        _source("tinyimagenet_r128", "tinyimagenet/tiny_78.76.pth", {"top1": 78.76},
                {**TINYIMAGENET_EVAL, "input_size": (3, 128, 128)}, notes="Images resized to 128x128."),
    ),
    "WaveMix-192/16 (3-level) Tiny ImageNet classifier, 64x64 (or 128x128: tag tinyimagenet_r128).", 27_703_208,
)
for _levels, _top1, _params in ((1, 90.23, 12_303_466), (3, 95.42, 27_666_538)):
    _register(
        f"wavemix-192-16-l{_levels}-galaxy10", _config(192, 16, _levels, 10),
        (_source("galaxy10", f"galaxy10/galaxy_{_top1}.pth", {"top1": _top1}, {"input_size": (3, 256, 256)},
                 notes="Galaxy10 DECaLS images (256x256), no normalisation stated."),),
        f"WaveMix-192/16 ({_levels}-level) Galaxy10 DECaLS classifier, 256x256.", _params,
    )
_register(
    "wavemix-192-16-l3-cityscapes", _config(192, 16, 3, 20, segmentation_widths=(128, 64)),
    (_source(
        "cityscapes", "cityscapes_83.04.pth", {"miou": 83.04}, {"input_size": (3, 1024, 2048), **IMAGENET_MEAN_STD}
    ),),
    "WaveMix-192/16 (3-level) Cityscapes semantic segmentation (19 classes + void), 1024x2048.", 28_190_388,
)
register_model(ModelEntry(
    name="wavemix-tiny",
    family="wavemix",
    task="backbone",
    config=WaveMixConfig(dim=32, depth=2, levels=2, ff_dim=16, patch_size=2, num_classes=10),
    description="A small random WaveMix for tests and demos.",
    default_input=InputSpec({"pixel_values": TensorSpec((3, 32, 32))}),
))
