"""EPIT: light-field super-resolution with epipolar-plane Transformers (Liang et al., ICCV 2023, arXiv 2302.08058).

MLFSR's teacher for its T2M distillation, in the module tree and parameter names of BasicLFSR's `model/SR/EPIT.py`
(the checkpoints MLFSR's release ships as `EPIT_5x5_{2x,4x}_model.pth`). It shares MLFSR's frame (bicubic skip,
shallow convs, pixel-shuffle upsampler; `LightFieldSR`); its body is 5 AltFilters, each a Transformer over the
horizontal then the vertical epipolar planes, with one shared `epi_trans` and conv stack:
    y = conv(EPI_H(x)) + x,  out = conv(EPI_W(y)) + x.
Attention is masked to a window of all views by `spatial_window` pixels, so its cost grows with the square of
the epipolar plane's size (5 x h), against MLFSR's linear scans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import PositiveInt, ZooConfig
from ..errors import ConfigError
from ..registry import Converter, ModelEntry, PretrainedSource, register_family, register_model
from .mlfsr import BASICLFSR_DATASETS, RELEASE, RELEASE_FILES, LightFieldSR, check_scale, conv_stack, lightfield_input


@dataclasses.dataclass
class EPITConfig(ZooConfig):
    """An EPIT. BasicLFSR's values: 64 channels, 5x5 views, 5 AltFilters, attention width 2 x channels with 8
    heads, each token attending to every view within +-5 pixels (`spatial_window` 11; the angular window is
    2 x the views, so all of them)."""

    channels: PositiveInt = 64
    angular_resolution: PositiveInt = 5
    scale: PositiveInt = 4
    num_blocks: PositiveInt = 5
    attention_ratio: PositiveInt = 2
    num_heads: PositiveInt = 8
    spatial_window: PositiveInt = 11

    def validate(self) -> None:
        if (self.channels * self.attention_ratio) % self.num_heads:
            raise ConfigError(
                f"EPITConfig: channels x attention_ratio ({self.channels * self.attention_ratio}) must be divisible "
                f"by num_heads ({self.num_heads})."
            )


def window_mask(size: tuple[int, int], window: tuple[int, int], device=None) -> Tensor:
    """(a*b, a*b) bool mask, True where attention is NOT allowed: token (i, j) of an a x b slice sees (i', j') with
    -k // 2 <= i' - i < k - k // 2 for each axis's window k."""
    allowed = None
    for length, k in zip(size, window):
        offset = torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
        axis = (offset >= -(k // 2)) & (offset < k - k // 2)
        if allowed is None:
            allowed = axis
        else:  # (a, a) and (b, b) -> ((a b), (a b))
            allowed = (allowed[:, None, :, None] & axis[None, :, None, :]).flatten(0, 1).flatten(1)
    return ~allowed


class WindowAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (`in_proj_weight` packs q, k, v; no biases):
    (N, L, D) queries/keys and values -> (N, L, D), run by scaled_dot_product_attention under a bool mask."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query_key: Tensor, value: Tensor, blocked: Tensor) -> Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        q, k, v = (
            rearrange(F.linear(x, w), "n l (h d) -> n h l d", h=self.num_heads)
            for x, w in ((query_key, w_q), (query_key, w_k), (value, w_v))
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked)
        return self.out_proj(rearrange(out, "n h l d -> n l (h d)"))


class BasicTrans(nn.Module):
    """A Transformer over 2-D slices (B, C, n, a, b) of one epipolar subspace, tokens in row-major order:
    x = linear_in(X); x = MHA(q = k = LN(x), v = x, window mask) + x; x = FFN(x) + x; out = linear_out(x)."""

    def __init__(self, config: EPITConfig):
        super().__init__()
        dim = config.channels * config.attention_ratio
        self.window = (2 * config.angular_resolution, config.spatial_window)
        self.linear_in = nn.Linear(config.channels, dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.attention = WindowAttention(dim, config.num_heads)
        self.feed_forward = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, 2 * dim, bias=False),
            nn.ReLU(inplace=True),
            nn.Dropout(0.0),
            nn.Linear(2 * dim, dim, bias=False),
            nn.Dropout(0.0),
        )
        self.linear_out = nn.Linear(dim, config.channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, n, a1, a2 = x.shape
        tokens = self.linear_in(rearrange(x, "b c n a1 a2 -> (b n) (a1 a2) c"))
        tokens = self.attention(self.norm(tokens), tokens, window_mask((a1, a2), self.window, x.device)) + tokens
        tokens = self.feed_forward(tokens) + tokens
        return rearrange(self.linear_out(tokens), "(b n) (a1 a2) c -> b c n a1 a2", a1=a1, b=b, n=n)


class AltFilter(nn.Module):
    """EPI-H then EPI-W Transformer with one shared `epi_trans` and conv stack, both steps adding the input."""

    def __init__(self, config: EPITConfig):
        super().__init__()
        self.angular_resolution = config.angular_resolution
        self.epi_trans = BasicTrans(config)
        self.conv = conv_stack(config.channels)

    def forward(self, x: Tensor) -> Tensor:
        a, (h, w) = self.angular_resolution, x.shape[-2:]
        y = rearrange(x, "b c (u v) h w -> b c (v w) u h", u=a)
        y = rearrange(self.epi_trans(y), "b c (v w) u h -> b c (u v) h w", v=a, w=w)
        y = self.conv(y) + x
        y = rearrange(y, "b c (u v) h w -> b c (u h) v w", u=a)
        y = rearrange(self.epi_trans(y), "b c (u h) v w -> b c (u v) h w", u=a, h=h)
        return self.conv(y) + x


class EPIT(LightFieldSR):
    """EPIT: `forward(lr, info=None)`, (B, 1, U*h, V*w) Y mosaic -> (B, 1, U*h*s, V*w*s); `forward_features` also
    returns the body features (B, C, U*V, h, w) that MLFSR's T2M loss distils."""

    config_class = EPITConfig

    def build_body(self) -> nn.Sequential:
        return nn.Sequential(*[AltFilter(self.config) for _ in range(self.config.num_blocks)])

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.altblock)


def _original_to_zoo(state_dict: dict[str, Tensor], config: EPITConfig) -> dict[str, Tensor]:
    """BasicLFSR's keys are zoo's; check the scale."""
    return check_scale(state_dict, config, "epit")


def _is_original(keys: Collection[str]) -> bool:
    return "altblock.0.epi_trans.attention.in_proj_weight" in keys


ORIGINAL = Converter("original", convert_state_dict=_original_to_zoo, matches_keys=_is_original)

register_family("epit", EPIT, [ORIGINAL])


def _register(scale: int, params: int) -> None:
    register_model(ModelEntry(
        name=f"epit-x{scale}", family="epit", task="restoration", config=EPITConfig(scale=scale),
        paper="2302.08058",
        sources=(PretrainedSource(
            RELEASE, url=f"{RELEASE_FILES}/EPIT_5x5_{scale}x_model.pth", format="original", license="apache-2.0",
            datasets=BASICLFSR_DATASETS, notes="BasicLFSR's EPIT checkpoint, shipped with MLFSR as its T2M teacher.",
        ),),
        description=f"EPIT x{scale} light-field super-resolution of 5x5 views (Y channel); MLFSR's teacher.",
        default_input=lightfield_input(5, 32), expected_params=params,
    ))


_register(4, 1_470_080)
_register(2, 1_420_928)

register_model(ModelEntry(
    name="epit-tiny", family="epit", task="restoration",
    config=EPITConfig(channels=16, scale=2, num_blocks=1, num_heads=2, spatial_window=5),
    description="A small random EPIT (x2, 5x5 views) for tests and demos.",
    default_input=lightfield_input(5, 6),
))
