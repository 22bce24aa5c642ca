"""AMD-Hummingbird: the pruned VideoCrafter2 text-to-video U-Nets (arXiv:2503.18559).

Hummingbird prunes VideoCrafter2's 1.4B lvdm U-Net to 0.9B (one ResBlock per level instead of two) and to 0.7B
(also no middle block), then trains it with T2V-Turbo consistency distillation and reward feedback: 4 to 8 LCM
steps, classifier-free guidance baked in through a guidance-scale embedding (`timestep_cond`).

The U-Net runs 2D layers on frames folded into the batch in `(b t)` order and 3D layers on (B, C, T, H, W): each
ResBlock ends with a temporal convolution block (`temopral_conv`, the published spelling), each attention level
holds a spatial transformer (self-attention, cross-attention to the OpenCLIP text, GEGLU) and a temporal one
(self-attention over frames), and `init_attn` is a temporal transformer after the first convolution. Time, fps
and guidance embeddings are added before the ResBlocks. Key names are the published lvdm ones.

Weights load from the release (`amd/AMD-Hummingbird-T2V`: `07B_merged_all.pt`, `09B_merged_all.pt`, whole
pickled lvdm LatentDiffusion modules read by `zoo.safe_pickle` without running any of their code) and from
diffusers' `UNet3DConditionModel` (ModelScope T2V; no fps embedding). The pipeline (text tower, VAE, LCM
sampler) is in `zoo.diffusion.hummingbird_pipeline`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.config import PositiveInt, Probability, ZooConfig
from zoo.errors import CheckpointError, ConfigError
from zoo.layers.attention import scaled_dot_product
from zoo.layers.conv import Conv2d, TemporalConv3d
from zoo.layers.embed import timestep_embedding
from zoo.layers.mlp import GEGLU
from zoo.layers.norm import GroupNorm, LayerNorm
from zoo.modeling import ZooModel
from zoo.registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model,
)

# ----------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass
class HummingbirdConfig(ZooConfig):
    """An lvdm text-to-video U-Net; the defaults are Hummingbird 0.7B (VideoCrafter2: num_res_blocks=2 with
    the middle block).

    attention_resolutions: downsampling factors (1, 2, 4, ...) of the levels that hold transformers.
    num_head_channels: channels per attention head (heads = channels / num_head_channels).
    init_attn_heads: heads of `init_attn` (of num_head_channels each).
    time_cond_proj_dim: width of the guidance-scale embedding `timestep_cond` (T2V-Turbo); None: no input.
    fps_cond: add an embedding of the frame rate to the time embedding.
    """

    in_channels: PositiveInt = 4
    out_channels: PositiveInt = 4
    model_channels: PositiveInt = 320
    channel_mult: tuple[PositiveInt, ...] = (1, 2, 4, 4)
    num_res_blocks: PositiveInt = 1
    has_middle_block: bool = False
    attention_resolutions: tuple[PositiveInt, ...] = (4, 2, 1)
    num_head_channels: PositiveInt = 64
    init_attn_heads: PositiveInt = 8
    context_dim: PositiveInt = 1024
    time_cond_proj_dim: PositiveInt | None = 256
    fps_cond: bool = True
    norm_groups: PositiveInt = 32
    dropout: Probability = 0.0

    def validate(self) -> None:
        for mult in self.channel_mult:
            channels = mult * self.model_channels
            if channels % self.norm_groups or channels % self.num_head_channels:
                raise ConfigError(
                    f"HummingbirdConfig: every level's channels (model_channels * channel_mult = {channels}) must be "
                    f"divisible by norm_groups ({self.norm_groups}) and num_head_channels ({self.num_head_channels})."
                )

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def downsampling(self) -> int:
        """How much smaller the deepest level is than the latent: H and W must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)


# ----------------------------------------------------------------------------------------------------
# Modules


class TemporalConvBlock(nn.Module):
    """x + 4 x [GroupNorm, SiLU, (Dropout), Conv3d (3, 1, 1)] over (B, C, T, H, W): a ResBlock's temporal mixing."""

    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()

        def layer(with_dropout: bool) -> nn.Sequential:
            conv = TemporalConv3d(channels, channels, 3, 1)
            dropped = [nn.Dropout(dropout)] if with_dropout else []
            return nn.Sequential(GroupNorm(groups, channels), nn.SiLU(), *dropped, conv)

        self.conv1 = layer(False)
        self.conv2, self.conv3, self.conv4 = layer(True), layer(True), layer(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; + the time embedding; GroupNorm, SiLU, dropout, conv; + skip; then the temporal
    convolution block over the frames. Takes (B*T, C, H, W) frames in (b t) order and emb (B*T, time_embed_dim)."""

    def __init__(self, channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm(groups, channels), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
            Conv2d(out_channels, out_channels, 3, padding=1),
        )  # fmt: skip
        self.skip_connection = nn.Identity() if channels == out_channels else Conv2d(channels, out_channels, 1)
        self.temopral_conv = TemporalConvBlock(out_channels, groups, dropout)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None].to(x.dtype)
        h = self.skip_connection(x) + self.out_layers(h)
        h = self.temopral_conv(rearrange(h, "(b t) c h w -> b c t h w", t=num_frames))
        return rearrange(h, "b c t h w -> (b t) c h w")


class CrossAttention(nn.Module):
    """Multi-head attention with bias-free q/k/v and a biased output (lvdm's CrossAttention). Self-attention
    when no context is given (or built without context_dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, dim), context (N, S, context_dim) -> (N, L, dim)."""
        context = x if context is None else context
        q, k, v = (
            rearrange(proj(t), "n l (h d) -> n h l d", h=self.heads)
            for proj, t in ((self.to_q, x), (self.to_k, context), (self.to_v, context))
        )
        return self.to_out(rearrange(scaled_dot_product(q, k, v), "n h l d -> n l (h d)"))


class FeedForward(nn.Module):
    """GEGLU to 4 x dim, dropout, linear back to dim (published keys `net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention (to the context, or a second self-attention without one), GEGLU feed-forward;
    each pre-LayerNorm and residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, dropout: float):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, head_dim, dropout=dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = CrossAttention(dim, heads, head_dim, context_dim, dropout)
        self.norm1, self.norm2, self.norm3 = LayerNorm(dim), LayerNorm(dim), LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Attention within each frame: GroupNorm (eps 1e-6), linear proj_in, a transformer block with cross-attention
    to the text, linear proj_out, residual. Takes (B*T, C, H, W) and context (B*T, S, context_dim)."""

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, groups: int, dropout: float):
        super().__init__()
        inner = heads * head_dim
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, context_dim, dropout)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        h = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            h = block(h, context)
        return x + rearrange(self.proj_out(h), "n (h w) c -> n c h w", h=height)


class TemporalTransformer(nn.Module):
    """Self-attention over the frames of each pixel: GroupNorm over (C, T, H, W) groups (eps 1e-6), proj_in, a
    transformer block whose two attentions are both self-attention, proj_out, residual.

    linear: Linear projections (the blocks' temporal transformers); else Conv1d (k=1) ones, as `init_attn` has.
    Takes (B*T, C, H, W) in (b t) order.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int, dropout: float, linear: bool = True):
        super().__init__()
        inner = heads * head_dim
        self.linear = linear
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, head_dim, None, dropout)])
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv1d(inner, channels, 1)

    def _project(self, proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C_in) -> (N, T, C_out) by a Linear or a Conv1d (k=1) on channels."""
        return proj(x) if self.linear else proj(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        b, height, width = x.shape[0] // num_frames, x.shape[-2], x.shape[-1]
        h = self.norm(rearrange(x, "(b t) c h w -> b c t h w", t=num_frames))
        h = self._project(self.proj_in, rearrange(h, "b c t h w -> (b h w) t c"))
        for block in self.transformer_blocks:
            h = block(h)
        h = self._project(self.proj_out, h)
        return x + rearrange(h, "(b h w) t c -> (b t) c h w", b=b, h=height, w=width)


class Downsample(nn.Module):
    """A stride-2 3x3 convolution on each frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution, on each frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetStage(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: its layers in order, each given what it takes."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, num_frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, num_frames)
            else:
                x = layer(x)
        return x


class HummingbirdUNet(ZooModel):
    """The lvdm 3D U-Net of VideoCrafter2 and Hummingbird. Forward mirrors lvdm's `UNetModel.forward`."""

    config_class = HummingbirdConfig

    def __init__(self, config: HummingbirdConfig):
        super().__init__(config)
        mc, emb_dim, groups, dropout = config.model_channels, config.time_embed_dim, config.norm_groups, config.dropout
        head_dim = config.num_head_channels

        def mlp(in_dim: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(in_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res_block(channels: int, out_channels: int) -> ResBlock:
            return ResBlock(channels, out_channels, emb_dim, groups, dropout)

        def transformers(channels: int) -> list[nn.Module]:
            heads = channels // head_dim
            return [
                SpatialTransformer(channels, heads, head_dim, config.context_dim, groups, dropout),
                TemporalTransformer(channels, heads, head_dim, groups, dropout),
            ]

        self.time_embed = mlp(mc)
        if config.time_cond_proj_dim is not None:
            self.time_cond_proj = nn.Linear(config.time_cond_proj_dim, mc, bias=False)
        if config.fps_cond:
            self.fps_embedding = mlp(mc)

        self.input_blocks = nn.ModuleList([UNetStage([Conv2d(config.in_channels, mc, 3, padding=1)])])
        self.init_attn = UNetStage(
            [TemporalTransformer(mc, config.init_attn_heads, head_dim, groups, dropout, linear=False)]
        )
        skip_channels, channels, scale = [mc], mc, 1
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [res_block(channels, mult * mc)]
                channels = mult * mc
                if scale in config.attention_resolutions:
                    layers += transformers(channels)
                self.input_blocks.append(UNetStage(layers))
                skip_channels.append(channels)
            if level != last_level:
                self.input_blocks.append(UNetStage([Downsample(channels)]))
                skip_channels.append(channels)
                scale *= 2

        if config.has_middle_block:
            self.middle_block = UNetStage([res_block(channels, channels), *transformers(channels),
                                           res_block(channels, channels)])  # fmt: skip

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res_block(channels + skip_channels.pop(), mult * mc)]
                channels = mult * mc
                if scale in config.attention_resolutions:
                    layers += transformers(channels)
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(channels))
                    scale //= 2
                self.output_blocks.append(UNetStage(layers))

        self.out = nn.Sequential(GroupNorm(groups, mc), nn.SiLU(), Conv2d(mc, config.out_channels, 3, padding=1))

    def fsdp_units(self) -> list[nn.Module]:
        middle = [self.middle_block] if self.config.has_middle_block else []
        return [*self.input_blocks, self.init_attn, *middle, *self.output_blocks]

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None = None,
        fps: torch.Tensor | int = 16,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise of a video latent.

        x: (B, in_channels, T, H, W), H and W multiples of `config.downsampling` (8 for four levels).
        timesteps: (B,) or a scalar in [0, 1000).
        context: (B, S, context_dim) OpenCLIP text features (77 tokens of the penultimate layer).
        fps: the frame rate, an int or (B,); used by models with `fps_cond`.
        timestep_cond: (B, time_cond_proj_dim) the guidance-scale embedding (`guidance_embedding`), for models
            with `time_cond_proj_dim`; None adds nothing.
        Returns (B, out_channels, T, H, W).
        """
        config = self.config
        if x.ndim != 5 or x.shape[1] != config.in_channels or x.shape[-1] % config.downsampling \
                or x.shape[-2] % config.downsampling:
            raise ValueError(
                f"x must be (B, {config.in_channels}, T, H, W) with H and W multiples of {config.downsampling}, "
                f"got {tuple(x.shape)}"
            )
        batch, _, num_frames = x.shape[:3]
        if context is None or context.ndim != 3 or context.shape[0] != batch or context.shape[-1] != config.context_dim:
            shape = None if context is None else tuple(context.shape)
            raise ValueError(f"context must be ({batch}, S, {config.context_dim}) text features, got {shape}")
        if timestep_cond is not None and config.time_cond_proj_dim is None:
            raise ValueError("This U-Net has no guidance embedding (time_cond_proj_dim is None): "
                             "pass no timestep_cond.")
        emb = self.embed(torch.as_tensor(timesteps, device=x.device), fps, timestep_cond, batch).to(x.dtype)
        emb = emb.repeat_interleave(num_frames, dim=0)
        context = context.to(x.dtype).repeat_interleave(num_frames, dim=0)

        h = rearrange(x, "b c t h w -> (b t) c h w")
        skips = []
        for i, stage in enumerate(self.input_blocks):
            h = stage(h, emb, context, num_frames)
            if i == 0:
                h = self.init_attn(h, emb, context, num_frames)
            skips.append(h)
        if config.has_middle_block:
            h = self.middle_block(h, emb, context, num_frames)
        for stage in self.output_blocks:
            h = stage(torch.cat((h, skips.pop()), dim=1), emb, context, num_frames)
        return rearrange(self.out(h), "(b t) c h w -> b c t h w", t=num_frames)

    def embed(
        self, timesteps: torch.Tensor, fps: torch.Tensor | int, timestep_cond: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """The (batch, time_embed_dim) embedding of time, guidance and fps, in the weights' dtype."""
        mc = self.config.model_channels
        dtype = self.time_embed[0].weight.dtype
        t_emb = timestep_embedding(timesteps.expand(batch), mc, flip_sin_to_cos=True, downscale_freq_shift=0)
        t_emb = t_emb.to(dtype)
        if timestep_cond is not None:
            if timestep_cond.shape != (batch, self.config.time_cond_proj_dim):
                raise ValueError(f"timestep_cond must be ({batch}, {self.config.time_cond_proj_dim}), "
                                 f"got {tuple(timestep_cond.shape)}")
            t_emb = t_emb + self.time_cond_proj(timestep_cond.to(dtype))
        emb = self.time_embed(t_emb)
        if self.config.fps_cond:
            fps = torch.as_tensor(fps, device=timesteps.device).expand(batch)
            fps_emb = timestep_embedding(fps, mc, flip_sin_to_cos=True, downscale_freq_shift=0)
            emb = emb + self.fps_embedding(fps_emb.to(dtype))
        return emb


def guidance_embedding(guidance_scale: torch.Tensor | float, dim: int = 256, batch: int = 1) -> torch.Tensor:
    """(batch, dim) T2V-Turbo embedding of the guidance scale w: [sin, cos] of w * 1000, frequencies
    10000^(-i / (dim/2 - 1)), as the release's pipeline computes `timestep_cond`."""
    w = torch.as_tensor(guidance_scale, dtype=torch.float32).expand(batch) * 1000.0
    half = dim // 2
    # In this order, as the release (the angles reach 7500 rad: float32 rounding of the frequencies shows).
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w[:, None] * freqs[None]
    return torch.cat((angles.sin(), angles.cos()), dim=1)


# ----------------------------------------------------------------------------------------------------
# Converters

RELEASE_PREFIX = "model.diffusion_model."
RELEASE_FILES = ("07B_merged_all.pt", "09B_merged_all.pt")


def _release_to_zoo(state_dict: dict[str, torch.Tensor], config: HummingbirdConfig) -> dict[str, torch.Tensor]:
    """The U-Net of a whole LatentDiffusion state dict (`model.diffusion_model.*`), or a bare U-Net's keys."""
    if any(key.startswith(RELEASE_PREFIX) for key in state_dict):
        return {k.removeprefix(RELEASE_PREFIX): v for k, v in state_dict.items() if k.startswith(RELEASE_PREFIX)}
    return dict(state_dict)


def _release_config(values: dict[str, Any]) -> HummingbirdConfig:
    return HummingbirdConfig(**values)


def release_config_values(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The U-Net config of a release state dict, read from its keys and shapes. Heads and GroupNorm groups are not
    stored: like the release, `init_attn` has 8 heads (so num_head_channels is its width / 8) and norms 32 groups."""
    sd = _release_to_zoo(state_dict, None)
    if "input_blocks.0.0.weight" not in sd or "init_attn.0.proj_in.weight" not in sd:
        raise CheckpointError("The checkpoint holds no lvdm U-Net with init_attn (model.diffusion_model.*).")
    mc, in_channels = sd["input_blocks.0.0.weight"].shape[:2]
    downsamplers = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.weight", k)))
    res_blocks = [k for k in sd if re.fullmatch(r"input_blocks\.\d+\.0\.in_layers\.2\.weight", k)]
    levels = len(downsamplers) + 1
    nrb = len(res_blocks) // levels
    first = [1 + level * (nrb + 1) for level in range(levels)]
    context = [v for k, v in sd.items() if k.endswith(".1.transformer_blocks.0.attn2.to_k.weight")]
    return {
        "in_channels": in_channels,
        "out_channels": sd["out.2.weight"].shape[0],
        "model_channels": mc,
        "channel_mult": tuple(sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0] // mc for i in first),
        "num_res_blocks": nrb,
        "has_middle_block": "middle_block.0.in_layers.0.weight" in sd,
        "attention_resolutions": tuple(2**level for level, i in enumerate(first)
                                       if f"input_blocks.{i}.1.proj_in.weight" in sd),
        "num_head_channels": sd["init_attn.0.proj_in.weight"].shape[0] // 8,
        "context_dim": context[0].shape[1] if context else HummingbirdConfig.context_dim,
        "time_cond_proj_dim": sd["time_cond_proj.weight"].shape[1] if "time_cond_proj.weight" in sd else None,
        "fps_cond": "fps_embedding.0.weight" in sd,
    }


def release_file(folder: Path) -> Path | None:
    """The release's `*_merged_all.pt` in `folder`, or None."""
    found = [folder / name for name in RELEASE_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise CheckpointError(f"{folder} holds both {found[0].name} and {found[1].name}: keep one per folder.")
    return found[0] if found else None


def read_release(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a release file (U-Net, VAE, text tower), read by the restricted unpickler."""
    from zoo.safe_pickle import load_module_state_dict

    return load_module_state_dict(path)


def _read_release_folder(folder: Path, patterns: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    path = release_file(folder)
    if path is None:
        raise CheckpointError(f"{folder} holds no {' or '.join(RELEASE_FILES)} (the AMD-Hummingbird-T2V release).")
    return read_release(path)


def _read_release_config_and_weights(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    if release_file(folder) is None:
        return None
    state_dict = _read_release_folder(folder)
    return release_config_values(state_dict), state_dict


_RESNET_KEYS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _diffusers_prefixes(config: HummingbirdConfig) -> dict[str, str]:
    """{diffusers prefix: zoo prefix} of every block of a `UNet3DConditionModel` built like `config`; a ResBlock's
    prefix ends in '.0.' on the zoo side, where `_RESNET_KEYS` renames its layers."""
    nrb, levels = config.num_res_blocks, len(config.channel_mult)
    prefixes = {"conv_in.": "input_blocks.0.0.", "transformer_in.": "init_attn.0.",
                "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "time_embedding.cond_proj.": "time_cond_proj.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}

    def layers(diffusers: str, zoo: str, j: int) -> None:
        prefixes.update({
            f"{diffusers}.resnets.{j}.": f"{zoo}.0.", f"{diffusers}.temp_convs.{j}.": f"{zoo}.0.temopral_conv.",
            f"{diffusers}.attentions.{j}.": f"{zoo}.1.", f"{diffusers}.temp_attentions.{j}.": f"{zoo}.2.",
        })  # fmt: skip

    for level in range(levels):
        first = 1 + level * (nrb + 1)
        for j in range(nrb):
            layers(f"down_blocks.{level}", f"input_blocks.{first + j}", j)
        prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{first + nrb}.0.op."
    for up in range(levels):
        first = up * (nrb + 1)
        for j in range(nrb + 1):
            layers(f"up_blocks.{up}", f"output_blocks.{first + j}", j)
        upsample = 3 if 2 ** (levels - 1 - up) in config.attention_resolutions else 1
        prefixes[f"up_blocks.{up}.upsamplers.0.conv."] = f"output_blocks.{first + nrb}.{upsample}.conv."
    layers("mid_block", "middle_block", 0)
    prefixes["mid_block.resnets.1."] = "middle_block.3.0."
    prefixes["mid_block.temp_convs.1."] = "middle_block.3.temopral_conv."
    return prefixes


def _diffusers_to_zoo(state_dict: dict[str, torch.Tensor], config: HummingbirdConfig) -> dict[str, torch.Tensor]:
    """`UNet3DConditionModel` keys -> lvdm keys; the 1x1 Conv2d projections of the spatial transformers become
    Linear, the Linear projections of `transformer_in` become Conv1d (k=1)."""
    prefixes = _diffusers_prefixes(config)
    converted = {}
    for key, value in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"UNet3DConditionModel key '{key}' has no place in the Hummingbird U-Net "
                                  f"(is the checkpoint's config the one its weights were saved with?).")
        zoo, rest = prefixes[prefix], key.removeprefix(prefix)
        if ".resnets." in prefix:  # a ResBlock: rename its layer, then drop the '.0.' placeholder of middle_block.3
            layer, _, param = rest.partition(".")
            zoo, rest = zoo.replace("middle_block.3.0.", "middle_block.3."), f"{_RESNET_KEYS[layer]}.{param}"
        key = zoo + rest
        if re.search(r"\.proj_(in|out)\.weight$", key):
            if key.startswith("init_attn."):
                value = value[..., None]
            elif value.ndim == 4:
                value = value[:, :, 0, 0]
        converted[key] = value
    return converted


def _diffusers_config(values: dict[str, Any]) -> HummingbirdConfig:
    """`UNet3DConditionModel` config.json -> HummingbirdConfig (no fps embedding: diffusers has none)."""
    channels = list(values.get("block_out_channels", (320, 640, 1280, 1280)))
    if any(c % channels[0] for c in channels):
        raise ConfigError(f"UNet3DConditionModel block_out_channels {channels} are not multiples of the first.")
    down = values.get("down_block_types", ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",))
    if values.get("norm_eps", 1e-5) != 1e-5 or values.get("act_fn", "silu") != "silu":
        raise ConfigError("zoo reads UNet3DConditionModel checkpoints with norm_eps 1e-5 and act_fn 'silu'.")
    head = values.get("attention_head_dim", 64)
    if not isinstance(head, int):
        raise ConfigError(f"zoo reads UNet3DConditionModel with one attention_head_dim, got {head}.")
    return HummingbirdConfig(
        in_channels=values.get("in_channels", 4),
        out_channels=values.get("out_channels", 4),
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=values.get("layers_per_block", 2),
        has_middle_block=True,
        attention_resolutions=tuple(2**i for i, kind in enumerate(down) if kind.startswith("CrossAttn")),
        num_head_channels=head,
        context_dim=values.get("cross_attention_dim", 1024),
        time_cond_proj_dim=values.get("time_cond_proj_dim"),
        fps_cond=False,
        norm_groups=values.get("norm_num_groups", 32),
    )


def _has_release_keys(keys: Collection[str]) -> bool:
    return any(key.removeprefix(RELEASE_PREFIX).startswith("init_attn.0.") for key in keys)


RELEASE = Converter(
    "original",
    convert_state_dict=_release_to_zoo,
    convert_config=_release_config,
    matches_keys=_has_release_keys,
    read_folder=_read_release_config_and_weights,
    read_weights=_read_release_folder,
)
DIFFUSERS = Converter(
    "diffusers",
    convert_state_dict=_diffusers_to_zoo,
    convert_config=_diffusers_config,
    matches_config=lambda values: values.get("_class_name") == "UNet3DConditionModel",
    matches_keys=lambda keys: "transformer_in.proj_in.weight" in keys,
)


# ----------------------------------------------------------------------------------------------------
# Registry


def _input_spec(latent: tuple[int, int, int], text: tuple[int, int] = (77, 1024)) -> InputSpec:
    """One denoising step: a latent (frames, height, width), t in [0, 1000), text tokens, fps 8 and guidance 7.5."""
    tensors = {"x": TensorSpec((4, *latent)), "timesteps": TensorSpec((), torch.int64, 0, 1000),
               "context": TensorSpec(text), "timestep_cond": TensorSpec((256,))}  # fmt: skip

    def make(config: HummingbirdConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, Any]:
        inputs = {name: tensors[name].make(batch_size, generator) for name in ("x", "context")}
        inputs["timesteps"] = tensors["timesteps"].make(batch_size, generator)
        inputs["fps"] = 8
        if config.time_cond_proj_dim is not None:
            inputs["timestep_cond"] = guidance_embedding(7.5, config.time_cond_proj_dim, batch_size)
        return inputs

    return InputSpec(tensors, factory=make)


def _release(file: str) -> tuple[PretrainedSource, ...]:
    return (PretrainedSource("amd/AMD-Hummingbird-T2V", tag="original", files=(file,), format="original",
                             license="gpl-3.0", notes="A whole pickled lvdm LatentDiffusion module (U-Net, VAE, "
                             "OpenCLIP-H text tower), read by zoo's restricted unpickler."),)  # fmt: skip


PAPER = "2503.18559"
# 16 frames (the training clip length; the release generates 26) of a 320 x 512 video, VAE f8.
LATENT = (16, 40, 64)

register_family("hummingbird", HummingbirdUNet, [RELEASE, DIFFUSERS], runner="zoo.diffusion.hummingbird_pipeline:run")
register_model(ModelEntry(
    "hummingbird-t2v-0.7b", "hummingbird", "diffusion", HummingbirdConfig(),
    sources=_release("07B_merged_all.pt"), paper=PAPER,
    description="AMD-Hummingbird text-to-video, the '0.7B' U-Net (772M: VideoCrafter2 with one ResBlock per level "
                "and no middle block), 4-8 LCM steps with the guidance scale embedded; 26 frames at 320 x 512, 8 fps.",
    default_input=_input_spec(LATENT), expected_params=772_091_780,
))  # fmt: skip
register_model(ModelEntry(
    "hummingbird-t2v-0.9b", "hummingbird", "diffusion", HummingbirdConfig(has_middle_block=True),
    sources=_release("09B_merged_all.pt"), paper=PAPER,
    description="AMD-Hummingbird text-to-video, the 0.9B U-Net (945M: VideoCrafter2 with one ResBlock per level), "
                "4-8 LCM steps with the guidance scale embedded; 26 frames at 320 x 512, 8 fps.",
    default_input=_input_spec(LATENT), expected_params=945_209_220,
))  # fmt: skip
register_model(ModelEntry(
    "hummingbird-tiny", "hummingbird", "diffusion",
    HummingbirdConfig(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_head_channels=16,
                      init_attn_heads=2, context_dim=24, time_cond_proj_dim=16, norm_groups=8,
                      has_middle_block=True),
    description="A tiny random Hummingbird U-Net for tests and demos.",
    default_input=_input_spec((3, 8, 8), text=(5, 24)),
))  # fmt: skip
