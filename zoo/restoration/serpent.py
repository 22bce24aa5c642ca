"""Serpent, RECONSTRUCTED from the paper's description: multi-scale selective state-space image restoration.

Serpent (Sepehri, Fabian, Soltanolkotabi; arXiv 2403.17902, NGSM workshop @ ICML 2024) restores images (Gaussian
deblurring, 8x super-resolution) with selective SSMs (Mamba's S6) arranged multi-scale in a U-Net-like hierarchy.
Its code (github.com/AIF4S/Serpent, formerly MShahabSepehri/Serpent) and the body of its paper could not be read
from here, so this module is a reconstruction from what the abstract and the introduction say: patch-embedded
stages whose blocks run the selective scan over the feature map unrolled in four directions (row- and
column-major, each both ways) at every scale, downsampling and upsampling between scales, skip connections and a
global residual. Widths, depths and every scan option are config fields, because the published ones are unknown.

The models are registered as ``serpent-recon-*``. They cannot load the official checkpoints
(``shahab7899/Serpent``: ``serpent_tiny_deblur_256.ckpt``, ``serpent_tiny_superres_512.ckpt``), whose layout is
unknown; asking for those names raises an error that says so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ZooConfig
from ..errors import ConfigError, InputError
from ..layers.mlp import Mlp
from ..layers.norm import LayerNorm
from ..layers.scan2d import IMAGE_DIRECTIONS, image_to_sequences, sequences_to_image
from ..layers.selective_scan import DEFAULT_CHUNK_SIZE, selective_scan
from ..modeling import ZooModel
from ..registry import InputSpec, ModelEntry, TensorSpec, register_family, register_model, register_unavailable

PAPER = "2403.17902"
RECONSTRUCTION_NOTE = (
    "Reconstructed from the Serpent paper's abstract and introduction (arXiv 2403.17902); the official code and the "
    "paper's architecture section could not be read, so widths, depths, blocks and key names are zoo's own and the "
    "official checkpoints (huggingface.co/shahab7899/Serpent) cannot be loaded."
)


@dataclasses.dataclass
class SerpentConfig(ZooConfig):
    """A reconstructed Serpent U-Net.

    Scale s (0 = after the patch embedding) has width ``embed_dim * dim_multipliers[s]`` and runs ``depths[s]``
    Serpent blocks in the encoder; the deepest scale is the bottleneck. The decoder runs ``decoder_depths[s]``
    blocks at scale s (deepest-but-one first, as in the encoder order: index s is scale s) after a 2x upsampling
    and the fusion of the skip connection. ``upscale`` > 1 makes a super-resolution model: the low-resolution
    input is resized (``upsample_mode``) by that factor first, and the network restores the resized image.

    Mixer (VMamba-style SS2D): in_proj to 2 * ``ssm_expand`` * width, a depthwise ``ssm_conv`` x ``ssm_conv`` conv
    and SiLU, the S6 scan over the unrolled map in each of ``directions`` (per-direction x_proj, dt_proj, A and D;
    ``ssm_state`` states; ``dt_rank`` 0 means ceil(width / 16)), the directions folded back and summed, a
    LayerNorm, the SiLU(z) gate and out_proj. ``scan_backend`` picks the scan path (see
    `zoo.layers.selective_scan.selective_scan`); every path gives the same result.
    """

    in_channels: PositiveInt = 3
    out_channels: PositiveInt = 3
    upscale: PositiveInt = 1
    upsample_mode: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    patch_size: PositiveInt = 2
    embed_dim: PositiveInt = 32
    dim_multipliers: tuple[PositiveInt, ...] = (1, 2, 4, 4)
    depths: tuple[NonNegativeInt, ...] = (2, 2, 2, 2)
    decoder_depths: tuple[NonNegativeInt, ...] = (2, 2, 2)
    ssm_state: PositiveInt = 16
    ssm_expand: PositiveFloat = 2.0
    ssm_conv: PositiveInt = 3
    dt_rank: NonNegativeInt = 0
    directions: tuple[str, ...] = IMAGE_DIRECTIONS
    mlp_ratio: NonNegativeFloat = 2.0
    global_residual: bool = True
    scan_backend: Literal["auto", "chunked", "ref"] = "auto"
    scan_chunk_size: PositiveInt = DEFAULT_CHUNK_SIZE

    def validate(self) -> None:
        if not self.depths or len(self.dim_multipliers) != len(self.depths):
            raise ConfigError(
                f"SerpentConfig: dim_multipliers {self.dim_multipliers} and depths {self.depths} need one entry per "
                "scale."
            )
        if len(self.decoder_depths) != len(self.depths) - 1:
            raise ConfigError(
                f"SerpentConfig.decoder_depths needs one entry per scale above the bottleneck "
                f"({len(self.depths) - 1}), got {self.decoder_depths}."
            )
        unknown = [d for d in self.directions if d not in IMAGE_DIRECTIONS]
        if unknown or not self.directions or len(set(self.directions)) != len(self.directions):
            raise ConfigError(
                f"SerpentConfig.directions must be distinct names from {IMAGE_DIRECTIONS}, got {self.directions}."
            )
        if self.ssm_conv % 2 == 0:
            raise ConfigError(f"SerpentConfig.ssm_conv must be odd (a centred depthwise conv), got {self.ssm_conv}.")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * m for m in self.dim_multipliers)

    @property
    def size_multiple(self) -> int:
        """Input sizes (after the ``upscale`` resize) must be multiples of this."""
        return self.patch_size * 2 ** (len(self.depths) - 1)


class SS2D(nn.Module):
    """Selective scan over a 2-D map in several directions: (batch, height, width, dim) -> same shape.

    The directions are scanned in one `selective_scan` call: u is (batch, K * d_inner, length) and B, C are
    grouped (batch, K, state, length), so direction k's channels read its own B and C.
    """

    def __init__(self, dim: int, config: SerpentConfig):
        super().__init__()
        self.directions = tuple(config.directions)
        self.d_inner = int(config.ssm_expand * dim)
        self.d_state = config.ssm_state
        self.dt_rank = config.dt_rank or math.ceil(dim / 16)
        self.backend = config.scan_backend
        self.chunk_size = config.scan_chunk_size
        k, d, n, r = len(self.directions), self.d_inner, self.d_state, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, config.ssm_conv, padding=config.ssm_conv // 2, groups=d)
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d).uniform_(-(d**-0.5), d**-0.5))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r).uniform_(-(r**-0.5), r**-0.5))
        # S4D-real and Mamba's time-step initialisation: dt ~ logU[1e-3, 1e-1], bias = softplus^-1(dt)
        dt = torch.exp(torch.rand(k, d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1))
        self.Ds = nn.Parameter(torch.ones(k * d))
        self.out_norm = LayerNorm(d)
        self.out_proj = nn.Linear(d, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(rearrange(x, "b h w d -> b d h w")))
        xs = image_to_sequences(x, self.directions)  # (b, k, d, l)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        y = selective_scan(
            xs.flatten(1, 2),
            dts.flatten(1, 2),
            -torch.exp(self.A_logs.float()),
            Bs,
            Cs,
            self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().flatten(),
            delta_softplus=True,
            backend=self.backend,
            **({} if self.backend == "ref" else {"chunk_size": self.chunk_size}),
        )
        y = sequences_to_image(y.unflatten(1, (len(self.directions), -1)), height, width, self.directions)
        y = self.out_norm(rearrange(y, "b d h w -> b h w d")) * F.silu(z)
        return self.out_proj(y)


class SerpentBlock(nn.Module):
    """x + SS2D(LN(x)), then x + MLP(LN(x)) (no MLP when ``mlp_ratio`` is 0); on (batch, height, width, dim)."""

    def __init__(self, dim: int, config: SerpentConfig):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.mixer = SS2D(dim, config)
        hidden = int(dim * config.mlp_ratio)
        self.norm2 = LayerNorm(dim) if hidden else None
        self.mlp = Mlp(dim, hidden) if hidden else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class Downsample(nn.Module):
    """2x2 patch merging as a stride-2 conv: (batch, h, w, dim) -> (batch, h / 2, w / 2, out_dim)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.conv(rearrange(x, "b h w c -> b c h w")), "b c h w -> b h w c")


class Upsample(nn.Module):
    """1x1 conv to 4 * out_dim and pixel shuffle: (batch, h, w, dim) -> (batch, 2h, 2w, out_dim)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, 4 * out_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pixel_shuffle(self.conv(rearrange(x, "b h w c -> b c h w")), 2)
        return rearrange(x, "b c h w -> b h w c")


class DecoderStage(nn.Module):
    """Upsample the deeper features, concatenate the skip, fuse (Linear 2 * dim -> dim), then Serpent blocks."""

    def __init__(self, deeper_dim: int, dim: int, depth: int, config: SerpentConfig):
        super().__init__()
        self.upsample = Upsample(deeper_dim, dim)
        self.fuse = nn.Linear(2 * dim, dim)
        self.blocks = nn.Sequential(*(SerpentBlock(dim, config) for _ in range(depth)))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.blocks(self.fuse(torch.cat([self.upsample(x), skip], dim=-1)))


class Serpent(ZooModel):
    """Degraded images (batch, in_channels, h, w) in [0, 1] -> restored (batch, out_channels, h * upscale, w * upscale).

    Patch embedding (stride ``patch_size`` conv), encoder scales of Serpent blocks with 2x downsampling between
    them, a decoder that upsamples 2x and fuses the encoder's skip at each scale, a LayerNorm, a 3x3 conv head
    with pixel shuffle back to full resolution, and the (resized) input added as the global residual. The head
    starts at zero, so a fresh model is the identity (or the plain resize for super-resolution).
    """

    config_class = SerpentConfig

    def __init__(self, config: SerpentConfig):
        super().__init__(config)
        widths = config.widths
        p = config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, widths[0], kernel_size=p, stride=p)
        self.encoder = nn.ModuleList(
            nn.Sequential(*(SerpentBlock(width, config) for _ in range(depth)))
            for width, depth in zip(widths, config.depths, strict=True)
        )
        self.downsample = nn.ModuleList(Downsample(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.decoder = nn.ModuleList(
            DecoderStage(widths[s + 1], widths[s], config.decoder_depths[s], config) for s in range(len(widths) - 1)
        )
        self.norm = LayerNorm(widths[0])
        self.head = nn.Conv2d(widths[0], config.out_channels * p * p, kernel_size=3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def fsdp_units(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, SerpentBlock)]

    def forward(self, pixel_values: Tensor) -> Tensor:
        config = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != config.in_channels:
            raise InputError(
                f"Serpent takes images (batch, {config.in_channels}, height, width), got {tuple(pixel_values.shape)}."
            )
        if pixel_values.shape[0] == 0:
            raise InputError("Serpent got an empty batch (batch size 0); pass at least one image.")
        x = pixel_values
        if config.upscale > 1:
            x = F.interpolate(x, scale_factor=config.upscale, mode=config.upsample_mode,
                              **({} if config.upsample_mode == "nearest" else {"align_corners": False}))
        height, width = x.shape[-2:]
        multiple = config.size_multiple
        if height % multiple or width % multiple:
            raise InputError(
                f"Serpent needs a height and width that are multiples of {multiple} (patch_size * 2 ** (scales - 1))"
                f"{f' after the {config.upscale}x resize' if config.upscale > 1 else ''}; got {height}x{width}. "
                "Pad or crop the image."
            )
        features = rearrange(self.patch_embed(x), "b c h w -> b h w c")
        skips = []
        for s, stage in enumerate(self.encoder):
            features = stage(features)
            if s < len(self.downsample):
                skips.append(features)
                features = self.downsample[s](features)
        for s in reversed(range(len(self.decoder))):
            features = self.decoder[s](features, skips[s])
        out = self.head(rearrange(self.norm(features), "b h w c -> b c h w"))
        out = F.pixel_shuffle(out, config.patch_size)
        if config.global_residual:
            out = out + x[:, : config.out_channels]
        return out


# registry

register_family("serpent", Serpent)

# Our own sizes, not published ones (those are unknown): a test/demo size and one U-Net of 4 scales used for the
# tasks and the efficiency benchmark at 256^2 deblurring and 8x super-resolution to 512^2.
RECON_BASE = SerpentConfig()
_TINY = SerpentConfig(embed_dim=8, dim_multipliers=(1, 2), depths=(1, 1), decoder_depths=(1,), ssm_state=4,
                      mlp_ratio=2.0)

register_model(ModelEntry(
    name="serpent-recon-tiny",
    family="serpent",
    task="restoration",
    config=_TINY,
    paper=PAPER,
    description="Tiny reconstructed Serpent (2 scales, width 8) for tests and demos. " + RECONSTRUCTION_NOTE,
    default_input=InputSpec({"pixel_values": TensorSpec((3, 32, 32))}),
))
register_model(ModelEntry(
    name="serpent-recon-deblur-256",
    family="serpent",
    task="restoration",
    config=RECON_BASE,
    paper=PAPER,
    description="Reconstructed Serpent U-Net (4 scales, widths 32-128) for 256x256 Gaussian deblurring; zoo's "
                "own size. " + RECONSTRUCTION_NOTE,
    default_input=InputSpec({"pixel_values": TensorSpec((3, 256, 256))}),
))
register_model(ModelEntry(
    name="serpent-recon-sr8-512",
    family="serpent",
    task="restoration",
    config=RECON_BASE.replace(upscale=8),
    paper=PAPER,
    description="Reconstructed Serpent U-Net (4 scales, widths 32-128) for 8x super-resolution to 512x512 (the "
                "64x64 input is resized bicubically first); zoo's own size. " + RECONSTRUCTION_NOTE,
    default_input=InputSpec({"pixel_values": TensorSpec((3, 64, 64))}),
))

for _official in ("serpent-tiny-deblur-256", "serpent-tiny-superres-512"):
    register_unavailable(
        _official,
        f"'{_official}' is the official Serpent release ({_official.replace('-', '_')}.ckpt in the Hub repo "
        "shahab7899/Serpent), which zoo cannot build or load: zoo's Serpent is a reconstruction from the paper's "
        "description (the official code and architecture section were unreadable), with its own layout. Use "
        "'serpent-recon-deblur-256' or 'serpent-recon-sr8-512' (random weights; train them with `zoo train`).",
    )

__all__ = ["RECONSTRUCTION_NOTE", "SS2D", "Serpent", "SerpentBlock", "SerpentConfig"]
