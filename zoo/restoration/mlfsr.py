"""MLFSR: Mamba-based light-field super-resolution with efficient subspace scanning (ACCV 2024, arXiv 2406.16083).

A 4-D light field of U x V views is super-resolved from the Y channel of its sub-aperture mosaic. Shallow
per-view conv features go through a body of [AltFilterEPI, AltFilterSA, SAModulation] blocks that scan the
features with bidirectional Mamba along 2-D subspaces of the light field (the two epipolar planes, each view,
the angular plane of each pixel), then a pixel-shuffle upsampler adds a residual to the bicubic upsampling of
each view. Cost is linear in the number of pixels, so whole light fields run without patching.

The module tree and parameter names are those of the official release (github RSGao/MLFSR, `model/SR/MLFSR.py`),
so its `{'epoch', 'state_dict'}` checkpoints load as they are. Widths, scale and angular size, hard-coded there,
are config fields here. `LightFieldSR` holds what MLFSR shares with its EPIT teacher (`zoo.restoration.epit`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import PositiveInt, Range, ZooConfig
from ..errors import CheckpointError, ConfigError, InputError
from ..layers.mamba import Mamba
from ..layers.scan2d import light_field_to_sequences, sequences_to_light_field
from ..modeling import ZooModel
from ..registry import Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model


@dataclasses.dataclass
class MLFSRConfig(ZooConfig):
    """An MLFSR. The release's values: 64 channels, 5x5 views, 3 body blocks, BiMamba with d_state 8, expand 2,
    d_conv 4 and dt_rank 4; CAB with `channels // cab_compress` middle channels and a channel attention squeezed
    to `channels // cab_squeeze`; BasicSS2D's layer scale `gamma` starts at `layer_scale_init`."""

    channels: PositiveInt = 64
    angular_resolution: PositiveInt = 5
    scale: PositiveInt = 4
    num_blocks: PositiveInt = 3
    d_state: PositiveInt = 8
    expand: PositiveInt = 2
    d_conv: PositiveInt = 4
    dt_rank: PositiveInt = 4
    cab_compress: PositiveInt = 3
    cab_squeeze: PositiveInt = 30
    layer_scale_init: Annotated[float, Range(ge=0)] = 1e-4

    def validate(self) -> None:
        for field in ("cab_compress", "cab_squeeze"):
            if self.channels // getattr(self, field) < 1:
                raise ConfigError(
                    f"MLFSRConfig.channels ({self.channels}) // {field} ({getattr(self, field)}) must be >= 1."
                )


# ---------------------------------------------------------------------------------------------------------------
# Modules shared with EPIT


def conv_stack(channels: int, num_convs: int = 3, last_act: bool = False) -> nn.Sequential:
    """`num_convs` per-view 3x3 convs (Conv3d (1, 3, 3), no bias) on (B, C, U*V, h, w), LeakyReLU(0.2) between."""
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers.append(nn.Conv3d(channels, channels, kernel_size=(1, 3, 3), padding=(0, 1, 1), bias=False))
        if last_act or i < num_convs - 1:
            layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def interpolate_views(lr: Tensor, angular_resolution: int, scale: int) -> Tensor:
    """Bicubic upsampling (PyTorch, align_corners=False) of each view of a mosaic (B, C, U*h, V*w)."""
    views = rearrange(lr, "b c (u h) (v w) -> (b u v) c h w", u=angular_resolution, v=angular_resolution)
    views = F.interpolate(views, scale_factor=scale, mode="bicubic", align_corners=False)
    return rearrange(views, "(b u v) c h w -> b c (u h) (v w)", u=angular_resolution, v=angular_resolution)


class LightFieldSR(ZooModel):
    """Shared frame of MLFSR and EPIT: bicubic skip, shallow features, `altblock` body, pixel-shuffle upsampler.

    `forward(lr, info=None)` takes the Y mosaic (B, 1, U*h, V*w) and returns (B, 1, U*h*s, V*w*s), as BasicLFSR
    calls the official models (`info` is BasicLFSR's degradation info, unused). `forward_features` also returns the
    body's output (B, C, U*V, h, w) before the global residual, the feature of the T2M distillation loss.
    """

    def __init__(self, config: ZooConfig):
        super().__init__(config)
        channels, scale = config.channels, config.scale
        self.conv_init0 = nn.Sequential(
            nn.Conv3d(1, channels, kernel_size=(1, 3, 3), padding=(0, 1, 1), bias=False)
        )
        self.conv_init = conv_stack(channels, last_act=True)
        self.altblock = self.build_body()
        self.upsampling = nn.Sequential(
            nn.Conv2d(channels, channels * scale**2, kernel_size=1, bias=False),
            nn.PixelShuffle(scale),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 1, kernel_size=3, padding=1, bias=False),
        )

    def build_body(self) -> nn.Sequential:
        raise NotImplementedError

    def check_input(self, lr: Tensor) -> None:
        a = self.config.angular_resolution
        name = type(self).__name__
        if not isinstance(lr, Tensor) or lr.dim() != 4:
            shape = tuple(lr.shape) if isinstance(lr, Tensor) else type(lr).__name__
            raise InputError(f"{name} takes a Y-channel light-field mosaic (B, 1, {a}*h, {a}*w), got {shape}.")
        if lr.shape[1] != 1:
            raise InputError(
                f"{name} super-resolves the Y channel only: got {lr.shape[1]} channels. Convert RGB to YCbCr "
                f"(zoo.data.lightfield.rgb_to_ycbcr) and pass Y as (B, 1, {a}*h, {a}*w); upsample Cb/Cr bicubically."
            )
        if lr.shape[-2] % a or lr.shape[-1] % a or lr.shape[-1] == 0 or lr.shape[-2] == 0:
            raise InputError(
                f"{name}: the mosaic size {tuple(lr.shape[-2:])} is not divisible by the angular resolution {a}; "
                f"pass {a}x{a} views of equal size (crop each view, not the mosaic)."
            )

    def forward_features(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1, U*h, V*w) -> SR (B, 1, U*h*s, V*w*s) and body features (B, C, U*V, h, w)."""
        self.check_input(lr)
        a = self.config.angular_resolution
        skip = interpolate_views(lr, a, self.config.scale)
        x = rearrange(lr, "b c (u h) (v w) -> b c (u v) h w", u=a, v=a)
        shallow = self.conv_init0(x)
        shallow = self.conv_init(shallow) + shallow
        features = self.altblock(shallow)
        mosaic = rearrange(features + shallow, "b c (u v) h w -> b c (u h) (v w)", u=a, v=a)
        return self.upsampling(mosaic) + skip, features

    def forward(self, lr: Tensor, info=None) -> Tensor:
        return self.forward_features(lr)[0]

    @torch.no_grad()
    def super_resolve(self, lr: Tensor, mode: Literal["whole", "patch"] = "whole", patch_size: int = 32,
                      stride: int = 16, batch_size: int = 16) -> Tensor:
        """Inference on whole light fields (B, 1, U*h, V*w) -> (B, 1, U*h*s, V*w*s).

        "whole" runs each light field at once. "patch" is BasicLFSR's test mode: each view is cut into overlapping
        `patch_size` patches every `stride` pixels (`lf_divide`), the patch light fields run in batches of
        `batch_size`, and the centres of their outputs are stitched (`lf_integrate`).
        """
        if mode == "whole":
            return self(lr)
        if mode != "patch":
            raise ConfigError(f"super_resolve: mode must be 'whole' or 'patch', got {mode!r}")
        if not 0 < stride <= patch_size or (patch_size - stride) % 2:
            raise ConfigError(f"super_resolve: need 0 < stride <= patch_size with an even difference, got "
                              f"patch_size={patch_size}, stride={stride}")
        from ..data.lightfield import lf_divide, lf_integrate

        self.check_input(lr)
        a, s = self.config.angular_resolution, self.config.scale
        h, w = lr.shape[-2] // a, lr.shape[-1] // a
        results = []
        for mosaic in lr[:, 0]:
            patches = lf_divide(mosaic, a, patch_size, stride)
            flat = patches.flatten(0, 1)[:, None]
            sr = torch.cat([self(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)])
            views = lf_integrate(sr[:, 0].unflatten(0, patches.shape[:2]), a, patch_size * s, stride * s, h * s, w * s)
            results.append(rearrange(views, "u v h w -> 1 (u h) (v w)"))
        return torch.stack(results)


# ---------------------------------------------------------------------------------------------------------------
# MLFSR modules


class ChannelAttention(nn.Module):
    """RCAN's channel attention: x * sigmoid(1x1(ReLU(1x1(GAP(x))))) on (N, C, a, b)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // squeeze, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // squeeze, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: 3x3 conv to C // compress, GELU, 3x3 conv back, channel attention."""

    def __init__(self, channels: int, compress: int, squeeze: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(channels, channels // compress, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels // compress, channels, 3, padding=1),
            ChannelAttention(channels, squeeze),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cab(x)


class BasicSS2D(nn.Module):
    """Mamba over the 2-D slices of one subspace scan (the paper's MGI core).

    On tokens X (N, a*b, C) of N slices of a x b scanned row-major:
        T1 = BiMamba(LN1(X)) + X;  T2 = DWConv3x3(CAB(LN2(T1) as a map)) + T1;  out = T2 + gamma * X.
    """

    def __init__(self, config: MLFSRConfig):
        super().__init__()
        c = config.channels
        self.norm1 = nn.LayerNorm(c)
        self.norm2 = nn.LayerNorm(c)
        self.mamba = Mamba(
            c, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand, dt_rank=config.dt_rank,
            bimamba_type="v2",
        )
        self.gamma = nn.Parameter(torch.full((c,), config.layer_scale_init))
        self.ca = CAB(c, config.cab_compress, config.cab_squeeze)
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        """tokens (N, a*b, C) of slices of `size` (a, b) -> (N, a*b, C)."""
        a, b = size
        t1 = self.mamba(self.norm1(tokens)) + tokens
        local = rearrange(self.norm2(t1), "n (a b) c -> n c a b", a=a, b=b)
        t2 = rearrange(self.conv(self.ca(local)), "n c a b -> n (a b) c") + t1
        return t2 + self.gamma * tokens


class SubspaceScan(nn.Module):
    """Shared by the scanning filters: BasicSS2D over one subspace of (B, C, U*V, h, w), folded back."""

    def __init__(self, angular_resolution: int):
        super().__init__()
        self.angular_resolution = angular_resolution

    def scan(self, block: BasicSS2D, x: Tensor, subspace: str) -> Tensor:
        a = self.angular_resolution
        h, w = x.shape[-2:]
        size = {"spatial": (h, w), "angular": (a, a), "epi_h": (a, h), "epi_w": (a, w)}[subspace]
        tokens = light_field_to_sequences(x, (a, a), subspace)
        return sequences_to_light_field(block(tokens, size), (a, a), (h, w), subspace)


class AltFilterEPI(SubspaceScan):
    """Two epipolar scans with one shared BasicSS2D and conv stack; each step adds the block input:
    y = conv(EPI_H(x)) + x, out = conv(EPI_W(y)) + x."""

    def __init__(self, config: MLFSRConfig):
        super().__init__(config.angular_resolution)
        self.epi_trans = BasicSS2D(config)
        self.conv = conv_stack(config.channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.scan(self.epi_trans, x, "epi_h")) + x
        return self.conv(self.scan(self.epi_trans, y, "epi_w")) + x


class AltFilterSA(SubspaceScan):
    """A spatial then an angular scan (own BasicSS2D each, one shared conv stack); each step adds the block input."""

    def __init__(self, config: MLFSRConfig):
        super().__init__(config.angular_resolution)
        self.spa_trans = BasicSS2D(config)
        self.ang_trans = BasicSS2D(config)
        self.conv = conv_stack(config.channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.scan(self.spa_trans, x, "spatial")) + x
        return self.conv(self.scan(self.ang_trans, y, "angular")) + x


class SAModulation(nn.Module):
    """Spatial-angular modulator (SAM): y = x * sigmoid(1x1(x)); out = y * sigmoid(1x1'(y)), no residual.

    Both 1x1 convs act per token, so the release's spatial and angular reshapes leave the result unchanged.
    """

    def __init__(self, config: MLFSRConfig):
        super().__init__()
        self.modulation1 = nn.Conv2d(config.channels, config.channels, 1)
        self.modulation2 = nn.Conv2d(config.channels, config.channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(3)  # (B, C, U*V, h*w): a 1x1 conv of any 2-D arrangement of the tokens
        y = tokens * torch.sigmoid(self.modulation1(tokens))
        return (y * torch.sigmoid(self.modulation2(y))).reshape(x.shape)


class MLFSR(LightFieldSR):
    """MLFSR: `forward(lr, info=None)`, (B, 1, U*h, V*w) Y mosaic -> (B, 1, U*h*s, V*w*s). See the module docstring."""

    config_class = MLFSRConfig

    def build_body(self) -> nn.Sequential:
        blocks: list[nn.Module] = []
        for _ in range(self.config.num_blocks):
            blocks += [AltFilterEPI(self.config), AltFilterSA(self.config), SAModulation(self.config)]
        return nn.Sequential(*blocks)

    def fsdp_units(self) -> list[nn.Module]:
        return [module for module in self.altblock.modules() if isinstance(module, BasicSS2D)]


# ---------------------------------------------------------------------------------------------------------------
# Converters


def checkpoint_scale(state_dict: dict[str, Tensor], channels: int) -> int | None:
    """The upsampling factor a checkpoint was trained for, from its pixel-shuffle conv (C * s^2 outputs)."""
    weight = state_dict.get("upsampling.0.weight")
    if weight is None or weight.shape[0] % channels:
        return None
    return math.isqrt(weight.shape[0] // channels)


def check_scale(state_dict: dict[str, Tensor], config: ZooConfig, family: str) -> dict[str, Tensor]:
    """`state_dict` unchanged, or a CheckpointError when it is for another scale than `config`."""
    found = checkpoint_scale(state_dict, config.channels)
    if found is not None and found != config.scale:
        raise CheckpointError(
            f"This {family.upper()} checkpoint is for x{found} super-resolution, the model is x{config.scale}: "
            f"load it with zoo.create('{family}-x{found}', checkpoint_path=...) (or scale={found})."
        )
    return dict(state_dict)


def _original_to_zoo(state_dict: dict[str, Tensor], config: MLFSRConfig) -> dict[str, Tensor]:
    """The release's keys are zoo's (a `module.` prefix is already stripped by the loader); check the scale."""
    return check_scale(state_dict, config, "mlfsr")


def _is_original(keys: Collection[str]) -> bool:
    return "altblock.0.epi_trans.mamba.A_b_log" in keys and "altblock.1.spa_trans.gamma" in keys


ORIGINAL = Converter("original", convert_state_dict=_original_to_zoo, matches_keys=_is_original)

register_family("mlfsr", MLFSR, [ORIGINAL])

# ---------------------------------------------------------------------------------------------------------------
# Registry

PAPER = "2406.16083"
RELEASE = "RSGao/MLFSR"
RELEASE_FILES = "https://github.com/RSGao/MLFSR/raw/main/pretrained_models"
BASICLFSR_DATASETS = ("EPFL", "HCI_new", "HCI_old", "INRIA_Lytro", "Stanford_Gantry")


def lightfield_input(views: int, size: int) -> InputSpec:
    return InputSpec({"lr": TensorSpec((1, views * size, views * size))})


def _register(name: str, scale: int, params: int) -> None:
    register_model(ModelEntry(
        name=name, family="mlfsr", task="restoration", config=MLFSRConfig(scale=scale), paper=PAPER,
        sources=(PretrainedSource(
            RELEASE, url=f"{RELEASE_FILES}/MLFSR_5x5_{scale}x.pth", format="original", license="apache-2.0",
            datasets=BASICLFSR_DATASETS,
            notes="The release's {'epoch', 'state_dict'} file, stage 2 (T2M-distilled from EPIT).",
        ),),
        description=f"MLFSR x{scale} light-field super-resolution of 5x5 views (Y channel).",
        default_input=lightfield_input(5, 32), expected_params=params,
    ))


_register("mlfsr-x4", 4, 1_406_863)
_register("mlfsr-x2", 2, 1_357_711)

register_model(ModelEntry(
    name="mlfsr-tiny", family="mlfsr", task="restoration",
    config=MLFSRConfig(channels=16, scale=2, num_blocks=1, d_state=4, dt_rank=2, cab_compress=2, cab_squeeze=4),
    description="A small random MLFSR (x2, 5x5 views) for tests and demos.",
    default_input=lightfield_input(5, 6),
))
