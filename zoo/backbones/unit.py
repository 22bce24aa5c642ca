"""UNIT's vision encoder: a timm ViT with RADIO's patch generator (arXiv 2409.04095, NeurIPS 2024).

UNIT teaches an image ViT to read text; what it publishes is the encoder (`yeeaa/UNIT_600M`, `yeeaa/UNIT_1B`,
inference code in yeezhu/UNIT, adapted from NVIDIA RADIO). The trunk is timm's `VisionTransformer` blocks (fused
biased qkv, LayerNorm eps 1e-6) under timm's key names; before it, RADIO's patch generator:

- an input conditioner: pixels in [0, 1] minus CLIP's mean over its std (buffers `norm_mean`/`norm_std`);
- the patches (b, c, H, W) -> (b, h*w, c*p*p) through a bias-free Linear computed in float32;
- the cropped position embedding (CPE): a stored grid of side round(cpe_max_size / p), used as it is for inputs at
  that grid; otherwise (at evaluation) bilinearly resized (align_corners=True) to the square of the input grid's
  larger side and cropped at the top left, resized again only where that still does not fit. When the stored
  grid equals timm's `img_size` grid (no CPE), it is cropped, then resized if still too small;
- `num_cls_tokens` class tokens and `register_multiple - num_cls_tokens % register_multiple` registers, prepended
  after the positions.

The blocks run, then timm's final `norm`, which is an Identity under global pooling 'avg' (UNIT-1B): its stored
`fc_norm` is never applied and the tokens come out un-normalised. `forward(pixels)` returns
`(cls_tokens (B, D), spatial_tokens (B, h*w, D))` as the official `UNITModel` does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import NonNegativeInt, PositiveFloat, PositiveInt, Probability, ZooConfig
from ..errors import ConfigError, InputError
from ..registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)
from .features import take_indices
from .timm_contract import TimmBackbone

# timm.data.constants.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: the input conditioner's defaults.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass
class UnitConfig(ZooConfig):
    """A UNIT encoder.

    `image_size` is timm's `img_size` (it decides whether the CPE is on: stored grid != image_size / patch);
    `cpe_max_size` sets the stored position grid, round(cpe_max_size / patch_size) a side. `global_pool` is timm's:
    'avg' replaces the final norm by an `fc_norm` that UNIT's forward never applies. `num_classes` > 0 keeps timm's
    (unused) classifier so that checkpoints holding it load strictly. `pos_dropout` drops a sample's whole position
    encoding in training, as RADIO does.
    """

    embed_dim: PositiveInt = 1280
    depth: PositiveInt = 32
    num_heads: PositiveInt = 16
    mlp_ratio: PositiveFloat = 4.0
    patch_size: PositiveInt = 14
    image_size: PositiveInt = 224
    in_chans: PositiveInt = 3
    qkv_bias: bool = True
    init_values: PositiveFloat | None = None
    cpe_max_size: PositiveInt = 448
    num_cls_tokens: PositiveInt = 1
    register_multiple: NonNegativeInt = 0
    global_pool: Literal["token", "avg", ""] = "token"
    num_classes: NonNegativeInt = 0
    pos_dropout: Probability = 0.1
    drop_path_rate: Probability = 0.0

    def validate(self) -> None:
        self.check_divisible("embed_dim", "num_heads")
        if self.grid < 1:
            raise ConfigError(f"UnitConfig.cpe_max_size ({self.cpe_max_size}) must be at least half a patch "
                              f"({self.patch_size}).")

    @property
    def grid(self) -> int:
        """The stored position grid's side, as the official code rounds it (Python's round)."""
        return round(self.cpe_max_size / self.patch_size)

    @property
    def num_registers(self) -> int:
        return self.register_multiple - self.num_cls_tokens % self.register_multiple if self.register_multiple else 0

    @property
    def num_prefix_tokens(self) -> int:
        return self.num_cls_tokens + self.num_registers

    @property
    def cpe_mode(self) -> bool:
        """RADIO's CPE: on when the stored grid differs from the grid of timm's `img_size`."""
        return self.grid * self.patch_size != self.image_size

    @property
    def final_norm(self) -> bool:
        """timm's rule: global pooling 'avg' uses `fc_norm` (never applied by UNIT) instead of `norm`."""
        return self.global_pool != "avg"


class InputConditioner(nn.Module):
    """Pixels in [0, 1] (B, C, H, W) -> (x - mean) / std, with CLIP's statistics as (C, 1, 1) buffers."""

    def __init__(self, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        super().__init__()
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.norm_mean) / self.norm_std


class ClsToken(nn.Module):
    """Class and register tokens `token` (num_cls + num_registers, D), prepended to (B, N, D)."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.token = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.token.to(x.dtype).expand(x.shape[0], -1, -1), x), dim=1)


class PatchGenerator(nn.Module):
    """Images (B, C, H, W), normalised -> tokens (B, prefix + (H/p)(W/p), D): patches embedded in float32, plus the
    cropped position embedding, then the class and register tokens."""

    def __init__(self, config: UnitConfig):
        super().__init__()
        self.config = config
        dim, patch = config.embed_dim, config.patch_size
        self.embedder = nn.Linear(config.in_chans * patch * patch, dim, bias=False)
        self.pos_embed = nn.Parameter(torch.randn(1, config.grid**2, dim) * dim**-0.5)
        self.cls_token = ClsToken(dim, config.num_prefix_tokens)

    def forward(self, x: Tensor) -> Tensor:
        rows, cols = x.shape[-2] // self.config.patch_size, x.shape[-1] // self.config.patch_size
        patches = rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=self.config.patch_size, q=self.config.patch_size)
        weight = self.embedder.weight
        patches = F.linear(patches.float(), weight.float()).to(weight.dtype)
        positions = self.positions(rows, cols, patches.shape[0]).to(patches.dtype)
        if self.training and self.config.pos_dropout > 0:
            keep = torch.rand(patches.shape[0], 1, 1, device=patches.device) > self.config.pos_dropout
            positions = torch.where(keep, positions, 0)
        return self.cls_token(patches + positions)

    def positions(self, rows: int, cols: int, batch: int = 1) -> Tensor:
        """The position encoding of a (rows, cols) patch grid: (1, rows*cols, D), or (batch, rows*cols, D) for
        the random crops of training in CPE mode."""
        side = self.config.grid
        if (rows, cols) == (side, side):
            return self.pos_embed
        grid = rearrange(self.pos_embed.float(), "1 (h w) d -> 1 d h w", h=side)
        if self.config.cpe_mode and self.training:
            grid = _random_crops(grid, rows, cols, batch)
        elif self.config.cpe_mode:
            larger = max(rows, cols)
            grid = F.interpolate(grid, size=(larger, larger), mode="bilinear", align_corners=True)[..., :rows, :cols]
        else:
            grid = grid[..., :rows, :cols]
        if grid.shape[-2:] != (rows, cols):
            grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=True)
        return rearrange(grid, "b d h w -> b (h w) d")


def _random_crops(grid: Tensor, rows: int, cols: int, batch: int) -> Tensor:
    """RADIO's training augmentation of the position grid (1, D, S, S): per sample, a window of scale in
    [sqrt(0.1), 1] and aspect in [3/4, 4/3] at a random place, sampled bilinearly at (rows, cols) points."""
    device = grid.device
    min_scale = math.sqrt(0.1)
    scale = torch.rand(batch, 1, 1, device=device) * (1 - min_scale) + min_scale
    log_aspect = math.log(4 / 3)
    aspect = torch.exp(torch.rand(batch, 1, 1, device=device) * 2 * log_aspect - log_aspect)
    scale_xy = torch.stack((scale * aspect, scale / aspect), dim=-1).clamp(0, 1)
    offset = torch.rand(batch, 1, 1, 2, device=device) * (1 - scale_xy)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, rows, device=device), torch.linspace(0, 1, cols, device=device),
                            indexing="ij")
    points = (torch.stack((xs, ys), dim=-1) * scale_xy + offset) * 2 - 1
    return F.grid_sample(grid.expand(batch, -1, -1, -1), points, mode="bilinear", padding_mode="zeros",
                         align_corners=True)


class UnitEncoder(TimmBackbone):
    """UNIT's encoder: pixels in [0, 1] (B, C, H, W), H and W multiples of the patch -> (cls (B, D), spatial (B, N, D)).

    `forward_features` gives every token (B, prefix + N, D) after the final norm (if any); `forward_intermediates`
    the blocks' spatial tokens as (B, D, H/p, W/p) maps, as timm's ViT does.
    """

    config_class = UnitConfig
    stem_pattern = r"^input_conditioner|^patch_generator"
    block_pattern = r"^blocks\.(\d+)"
    coarse_block_pattern = r"^blocks\.(\d+)"
    first_conv = "patch_generator.embedder"
    classifier_name = "head"
    # The published processor resizes, crops and rescales to [0, 1]; the model normalises itself.
    preprocess = {"input_size": (3, 448, 448), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                  "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def __init__(self, config: UnitConfig):
        super().__init__(config)
        from timm.models.vision_transformer import Block

        dim = config.embed_dim
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = config.num_classes
        self.input_conditioner = InputConditioner()
        self.patch_generator = PatchGenerator(config)
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.Sequential(*(
            Block(dim, config.num_heads, config.mlp_ratio, qkv_bias=config.qkv_bias, init_values=config.init_values,
                  drop_path=rate, norm_layer=norm_layer)
            for rate in rates
        ))
        self.norm = norm_layer(dim) if config.final_norm else nn.Identity()
        self.fc_norm = nn.Identity() if config.final_norm else norm_layer(dim)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes else nn.Identity()
        self.apply(_init_weights)

    def no_weight_decay(self) -> set[str]:
        return {"patch_generator.pos_embed", "patch_generator.cls_token.token"}

    def _check_input(self, pixel_values: Tensor) -> tuple[int, int]:
        channels, patch = self.config.in_chans, self.config.patch_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            raise InputError(f"UNIT takes pixels (B, {channels}, H, W) in [0, 1], got {tuple(pixel_values.shape)}.")
        height, width = pixel_values.shape[-2:]
        if height % patch or width % patch:
            nearest = [max(patch, round(side / patch) * patch) for side in (height, width)]
            raise InputError(
                f"image size {height}x{width} is not a multiple of UNIT's patch size {patch}; resize or crop it to "
                f"the nearest valid size, {nearest[0]}x{nearest[1]}."
            )
        return height // patch, width // patch

    def embed(self, pixel_values: Tensor) -> Tensor:
        """Pixels in [0, 1] (B, C, H, W) -> the tokens entering the blocks (B, prefix + N, D)."""
        self._check_input(pixel_values)
        return self.patch_generator(self.input_conditioner(pixel_values))

    def forward_features(self, pixel_values: Tensor) -> Tensor:
        """Pixels in [0, 1] (B, C, H, W) -> every token after the blocks and the final norm (B, prefix + N, D)."""
        return self.norm(self.run_blocks(self.blocks, self.embed(pixel_values)))

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels in [0, 1] (B, C, H, W) -> (cls_tokens (B, D), spatial_tokens (B, (H/p)(W/p), D))."""
        x = self.forward_features(pixel_values)
        return x[:, 0], x[:, self.config.num_prefix_tokens:]

    def forward_intermediates(
        self, pixel_values: Tensor, indices: int | Sequence[int] | None = None, intermediates_only: bool = False
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The spatial tokens after the blocks in `indices` (None: all; n: the last n), each (B, D, H/p, W/p).

        Returns them alone with `intermediates_only` (stopping after the last one asked for), otherwise
        `(forward_features output, maps)`.
        """
        rows, cols = self._check_input(pixel_values)
        wanted = take_indices(len(self.blocks), indices)
        last = wanted[-1] if intermediates_only else len(self.blocks) - 1
        x, maps = self.embed(pixel_values), []
        for index, block in enumerate(self.blocks[: last + 1]):
            x = self.run_block(block, x)
            if index in wanted:
                spatial = x[:, self.config.num_prefix_tokens:]
                maps.append(rearrange(spatial, "b (h w) d -> b d h w", h=rows, w=cols))
        return maps if intermediates_only else (self.norm(x), maps)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------
# The official checkpoint layout

# timm architectures an official `args.model` names: (embed_dim, depth, num_heads, patch_size). The 1B one is
# registered by the official code itself.
TIMM_ARCHITECTURES = {
    "vit_base_patch16_224": (768, 12, 12, 16),
    "vit_large_patch16_224": (1024, 24, 16, 16),
    "vit_huge_patch14_224": (1280, 32, 16, 14),
    "vit_huge_patch16_224": (1280, 32, 16, 16),
    "vit_huge_patch14_224_1B": (1280, 50, 16, 14),
}
# timm `model_kwargs` with a field here, by their timm name; the other accepted ones change nothing UNIT runs.
_MODEL_KWARGS = {
    "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
    "patch_size": "patch_size", "img_size": "image_size", "qkv_bias": "qkv_bias", "init_values": "init_values",
}
_IGNORED_KWARGS = {"weight_init", "drop_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate"}


def config_from_official(values: dict[str, Any]) -> UnitConfig:
    """An official `config.json` (`UNITModel`, RADIO-style `args`) as a UnitConfig.

    timm's `create_model` drops None arguments, so `gp: null` is timm's default 'token', `num_classes: null` its
    1000 classes and `in_chans: null` 3 channels.
    """
    args = values.get("args") or {}
    architecture = args.get("model")
    if architecture not in TIMM_ARCHITECTURES:
        raise ConfigError(
            f"UNIT config names timm architecture {architecture!r}; zoo reads {', '.join(TIMM_ARCHITECTURES)}."
        )
    dim, depth, heads, patch = TIMM_ARCHITECTURES[architecture]
    fields: dict[str, Any] = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch)
    for name, value in (args.get("model_kwargs") or {}).items():
        if value is None or name in _IGNORED_KWARGS:
            continue
        if name not in _MODEL_KWARGS:
            raise ConfigError(f"UNIT config's model_kwargs {name}={value!r} has no zoo equivalent.")
        fields[_MODEL_KWARGS[name]] = value
    chosen = {"in_chans": args.get("in_chans"), "num_classes": args.get("num_classes"), "global_pool": args.get("gp"),
              "drop_path_rate": args.get("drop_path"), "num_cls_tokens": args.get("num_cls_tokens"),
              "register_multiple": args.get("register_multiple"), "cpe_max_size": args.get("cpe_max_size")}
    defaults = {"in_chans": 3, "num_classes": 1000, "global_pool": "token", "drop_path_rate": 0.0, "cpe_max_size": 1024,
                "num_cls_tokens": 1, "register_multiple": 0}
    fields.update({name: defaults[name] if value is None else value for name, value in chosen.items()})
    return UnitConfig(**fields)


def _from_official(state_dict: dict[str, Tensor], config: UnitConfig) -> dict[str, Tensor]:
    return rename_keys(state_dict, [(r"^unit_model\.", ""), (r"^model\.", "")])


OFFICIAL = Converter(
    "official",
    convert_state_dict=_from_official,
    convert_config=config_from_official,
    matches_config=lambda values: "UNITModel" in (values.get("architectures") or []),
    matches_keys=lambda keys: any(k.startswith("unit_model.model.patch_generator.") for k in keys),
)

register_family("unit", UnitEncoder, [OFFICIAL], runner="zoo.backbones.unit:run")

# The published configs could not be read here: the dims below are the architectures the official code names
# (`vit_huge_patch14_224` for 600M, its own `vit_huge_patch14_224_1B`), global pooling 'avg' for 1B (EMOVA reads its
# `fc_norm`), a 448 position grid (the paper's image resolution) and one class token without registers.
# `zoo.from_pretrained` builds the model from the repo's own config.json instead.
UNIT_600M = UnitConfig(depth=32, cpe_max_size=448, global_pool="token")
UNIT_1B = UnitConfig(depth=50, cpe_max_size=448, global_pool="avg")
PREPROCESS = {"input_size": (3, 448, 448), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
              "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
PIXELS_448 = InputSpec({"pixel_values": TensorSpec((3, 448, 448))})

for _name, _config, _hub_id, _description in (
    ("unit-600m", UNIT_600M, "yeeaa/UNIT_600M", "UNIT-600M: ViT-H/14 (32 blocks) that reads text and images."),
    ("unit-1b", UNIT_1B, "yeeaa/UNIT_1B", "UNIT-1B: ViT-H/14 with 50 blocks; tokens un-normalised (no final norm)."),
):
    register_model(ModelEntry(
        name=_name,
        family="unit",
        task="backbone",
        config=_config,
        sources=(PretrainedSource(_hub_id, tag="release", format="official", license="apache-2.0",
                                  preprocess=PREPROCESS),),
        paper="2409.04095",
        description=_description,
        default_input=PIXELS_448,
    ))

register_model(ModelEntry(
    name="unit-tiny",
    family="unit",
    task="backbone",
    config=UnitConfig(embed_dim=64, depth=2, num_heads=4, patch_size=8, image_size=32, cpe_max_size=64,
                      num_cls_tokens=1, register_multiple=4),
    description="A small random UNIT encoder (CPE on, three registers) for tests and demos.",
    default_input=InputSpec({"pixel_values": TensorSpec((3, 48, 32))}),
))


# ---------------------------------------------------------------------------------------------------
# `zoo run`


def run(name: str, args: Any) -> None:
    """`zoo run NAME --image PATH [...] [--checkpoint DIR]`: each image's token shapes and class-token norm."""
    from .classify import image_model, load_image

    model = image_model(name, args, "encodes images")
    transform = processor_transform(model.pretrained_cfg)
    parameter = next(model.parameters())
    for path in args.image:
        pixels = load_image(path, transform)[None].to(parameter.device, parameter.dtype)
        with torch.no_grad():
            cls_tokens, spatial_tokens = model(pixels)
        print(f"{path}: pixels {tuple(pixels.shape)} -> cls_tokens {tuple(cls_tokens.shape)}, spatial_tokens "
              f"{tuple(spatial_tokens.shape)}; cls norm {cls_tokens.float().norm(dim=-1).item():.4f}")


def processor_transform(pretrained_cfg: dict[str, Any]) -> Any:
    """The published processor's preprocessing as a PIL -> (C, H, W) transform in [0, 1] for the `input_size`
    (C, H, W): transformers' CLIPImageProcessor (shortest side to max(H, W), bicubic; centre crop H x W; rescale by
    1/255) without its normalisation, which the model does itself."""
    from transformers import CLIPImageProcessor

    height, width = pretrained_cfg["input_size"][-2:]
    processor = CLIPImageProcessor(size={"shortest_edge": max(height, width)},
                                   crop_size={"height": height, "width": width}, do_normalize=False)
    return lambda image: torch.from_numpy(processor(image, return_tensors="np")["pixel_values"][0])
