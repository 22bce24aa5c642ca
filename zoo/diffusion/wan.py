"""Wan 2.1 / 2.2: the video diffusion transformer (arXiv:2503.20314).

A video latent (B, C, F, H, W) is cut into (1, 2, 2) patches; each block runs self-attention with 3D
rotary positions, cross-attention to the umT5 text (Wan2.1 I2V adds a second attention over CLIP image
tokens) and a GELU MLP. One time embedding conditions every block through adaLN: a projection shared by
all blocks plus each block's learned table gives shift/scale/gate for attention and MLP, in float32.
Wan2.2 TI2V-5B takes one timestep per token (the clean first frame of image-to-video gets t = 0).

The Wan2.2 A14B models are two experts of the same architecture: a high-noise expert for the first
denoising steps and a low-noise expert after the switch point. A registered name builds one expert; its
tags pick which one is loaded, and `WanPipeline` (`wan_pipeline.py`) pairs the two.

Checkpoints load from diffusers (`WanTransformer3DModel`, alone or in a pipeline repo's `transformer/`)
and from the original release (`WanModel`: its `config.json` and `diffusion_pytorch_model*.safetensors`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import ConfigError
from zoo.layers.attention import Attention, scaled_dot_product
from zoo.layers.embed import PatchEmbed, TimestepEmbedding, timestep_embedding
from zoo.layers.mlp import Mlp
from zoo.layers.modulation import ScaleShiftTable, gated_residual, modulate
from zoo.layers.norm import LayerNorm, RMSNorm
from zoo.layers.rotary import RotaryEmbedding
from zoo.modeling import ZooModel
from zoo.registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)

# ----------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass
class WanConfig(ZooConfig):
    """A Wan DiT; the defaults are Wan2.1 T2V-1.3B.

    in_channels: 16 latent channels for text-to-video, 36 for image-to-video (16 noisy + 4 mask + 16
        image latent), 48 for Wan2.2 TI2V-5B (its VAE has 48 channels).
    image_dim: width of the CLIP image tokens of the Wan2.1 I2V image branch (1280); None: no branch.
    """

    in_channels: PositiveInt = 16
    out_channels: PositiveInt = 16
    dim: PositiveInt = 1536
    ffn_dim: PositiveInt = 8960
    num_heads: PositiveInt = 12
    num_layers: PositiveInt = 30
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 2, 2)
    text_dim: PositiveInt = 4096
    freq_dim: PositiveInt = 256
    image_dim: PositiveInt | None = None
    cross_attn_norm: bool = True
    eps: PositiveFloat = 1e-6

    def validate(self) -> None:
        self.check_divisible("dim", "num_heads")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ConfigError(f"WanConfig's head size dim / num_heads must be even and >= 6 (its rotary embedding "
                              f"splits it over frames, rows and columns), got {self.head_dim}.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rotary_dims(self) -> tuple[int, int, int]:
        """Rotated channels per head for (frame, row, column): 44, 42, 42 for head_dim 128."""
        spatial = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * spatial, spatial, spatial


# ----------------------------------------------------------------------------------------------------
# Modules


class WanCrossAttention(Attention):
    """Cross-attention from the video tokens to the text; with `image_branch`, also to CLIP image tokens.

    The image tokens have their own key/value projections (and key norm); the two attention results
    are summed before the shared output projection (Wan2.1 I2V).
    """

    def __init__(self, dim: int, num_heads: int, eps: float, image_branch: bool):
        super().__init__(dim, num_heads, qkv_bias=True, out_bias=True, qk_norm="rms_across_heads", norm_eps=eps)
        if image_branch:
            self.img_k_proj = nn.Linear(dim, dim)
            self.img_v_proj = nn.Linear(dim, dim)
            self.img_k_norm = RMSNorm(dim, eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b l (h d) -> b h l d", d=self.head_dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, L, dim), context (B, S, dim), context_image (B, S_img, dim) -> (B, L, dim)."""
        q = self._heads(self.q_norm(self.q_proj(x)))
        k = self._heads(self.k_norm(self.k_proj(context)))
        v = self._heads(self.v_proj(context))
        out = scaled_dot_product(q, k, v, backend=self.backend)
        if context_image is not None:
            k_img = self._heads(self.img_k_norm(self.img_k_proj(context_image)))
            v_img = self._heads(self.img_v_proj(context_image))
            out = out + scaled_dot_product(q, k_img, v_img, backend=self.backend)
        return self.o_proj(rearrange(out, "b h l d -> b l (h d)"))


class WanBlock(nn.Module):
    """Self-attention with 3D rotary positions, cross-attention, MLP; adaLN-modulated and gated in float32."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.self_attn_norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = Attention(
            dim, config.num_heads, qkv_bias=True, out_bias=True, qk_norm="rms_across_heads", norm_eps=eps,
            rotary_interleaved=True,
        )  # fmt: skip
        self.cross_attn_norm = LayerNorm(dim, eps) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, config.num_heads, eps, image_branch=config.image_dim is not None)
        self.ffn_norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = Mlp(dim, config.ffn_dim, act_layer=partial(nn.GELU, approximate="tanh"))
        self.modulation = ScaleShiftTable(6, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        time_modulation: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        context_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, dim); time_modulation (B, 6, dim), or (B, L, 6, dim) for per-token timesteps."""
        shift_sa, scale_sa, gate_sa, shift_ffn, scale_ffn, gate_ffn = self.modulation(time_modulation)
        h = modulate(self.self_attn_norm(x.float()), shift_sa, scale_sa).to(x.dtype)
        x = gated_residual(x, self.self_attn(h, rotary=rotary), gate_sa)
        h = self.cross_attn_norm(x.float()).to(x.dtype)
        x = x + self.cross_attn(h, context, context_image)
        h = modulate(self.ffn_norm(x.float()), shift_ffn, scale_ffn).to(x.dtype)
        return gated_residual(x, self.ffn(h), gate_ffn)


class WanImageEmbedding(nn.Module):
    """CLIP image tokens (B, 257, image_dim) -> (B, 257, dim): LayerNorm, GELU MLP, LayerNorm."""

    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.norm_in = LayerNorm(image_dim)
        self.mlp = Mlp(image_dim, image_dim, dim)
        self.norm_out = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.mlp(self.norm_in(x)))


class WanHead(nn.Module):
    """Final LayerNorm modulated by the time embedding itself (not its projection), then patch pixels."""

    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.modulation = ScaleShiftTable(2, dim)
        self.proj = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim); time_embedding (B, dim), or (B, L, dim) per token."""
        shift, scale = self.modulation(time_embedding.unsqueeze(-2))
        return self.proj(modulate(self.norm(x.float()), shift, scale).to(x.dtype))


class WanTransformer(ZooModel):
    """The Wan video DiT. Forward mirrors diffusers' `WanTransformer3DModel` (returns the tensor)."""

    config_class = WanConfig

    def __init__(self, config: WanConfig):
        super().__init__(config)
        dim = config.dim
        self.patch_embedding = PatchEmbed(config.in_channels, dim, config.patch_size)
        self.rope = RotaryEmbedding(config.rotary_dims, theta=10000.0, angle_dtype=torch.float64)
        self.time_embedding = TimestepEmbedding(config.freq_dim, dim)
        self.time_projection = nn.Linear(dim, 6 * dim)
        self.text_embedding = Mlp(config.text_dim, dim, dim, act_layer=partial(nn.GELU, approximate="tanh"))
        if config.image_dim is not None:
            self.image_embedding = WanImageEmbedding(config.image_dim, dim)
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))
        self.head = WanHead(dim, config.out_channels * math.prod(config.patch_size), config.eps)

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow (noise - clean) of a noisy video latent.

        hidden_states: (B, in_channels, F, H, W) latents (for image-to-video, concatenated with the
            mask and image latent along channels); F, H, W divisible by the patch size.
        timestep: (B,) in [0, 1000], or (B, L) one per token (Wan2.2 TI2V), L = (F/pt)(H/ph)(W/pw).
        encoder_hidden_states: (B, S, text_dim) umT5 features, zero-padded (to 512 in the pipelines).
        encoder_hidden_states_image: (B, 257, image_dim) CLIP features, for models with an image branch.
        Returns (B, out_channels, F, H, W).
        """
        x, grid = self.patch_embedding(hidden_states)
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"encoder_hidden_states must be (B, S, {self.config.text_dim}) text features, "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        image_branch = self.config.image_dim is not None
        if image_branch and encoder_hidden_states_image is None:
            raise ValueError("This Wan model has a CLIP image branch: pass encoder_hidden_states_image (B, 257, C).")
        if not image_branch and encoder_hidden_states_image is not None:
            raise ValueError("This Wan model has no CLIP image branch: encoder_hidden_states_image must be None.")
        time_embedding, time_modulation = self._embed_time(timestep, x.shape[0], x.shape[1])
        context = self.text_embedding(encoder_hidden_states)
        context_image = self.image_embedding(encoder_hidden_states_image) if image_branch else None
        rotary = self.rope(_grid_positions(grid, x.device))
        for block in self.blocks:
            x = block(x, context, time_modulation, rotary, context_image)
        x = self.head(x, time_embedding)
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        return rearrange(x, "b (f h w) (pt ph pw c) -> b c (f pt) (h ph) (w pw)", f=f, h=h, w=w, pt=pt, ph=ph, pw=pw)

    def _embed_time(self, timestep: torch.Tensor, batch_size: int, num_tokens: int) -> tuple[torch.Tensor, ...]:
        """The time embedding (B, dim) and the blocks' shared modulation (B, 6, dim); (B, L, dim) and
        (B, L, 6, dim) for per-token timesteps (B, L)."""
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        if timestep.shape not in ((batch_size,), (batch_size, num_tokens)):
            raise ValueError(
                f"timestep must have shape ({batch_size},) or ({batch_size}, {num_tokens}) (one per token), "
                f"got {tuple(timestep.shape)}"
            )
        if timestep.ndim == 1:
            return self._time_mlp(timestep)
        # Per-token timesteps take few values (t, and 0 on a given first frame): embed each value once.
        values, index = timestep.unique(return_inverse=True)
        time_embedding, time_modulation = self._time_mlp(values)
        return time_embedding[index], time_modulation[index]

    def _time_mlp(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) timesteps -> embeddings (N, dim) and modulations (N, 6, dim), computed in float32 whatever the
        weights' dtype, as the original release does (the scales and gates are sensitive to rounding)."""
        frequencies = timestep_embedding(timestep, self.config.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        mlp = self.time_embedding
        time_embedding = _float32_linear(mlp.linear_2, mlp.act(_float32_linear(mlp.linear_1, frequencies)))
        time_modulation = _float32_linear(self.time_projection, F.silu(time_embedding))
        return time_embedding, time_modulation.unflatten(-1, (6, self.config.dim))


def _float32_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) in float32, from weights of any dtype."""
    return F.linear(x.float(), layer.weight.float(), layer.bias.float())


def _grid_positions(grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(1, F*H*W, 3) (frame, row, column) ids of the patch grid in row-major order."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3)


# ----------------------------------------------------------------------------------------------------
# Converters


# Shared by both formats: patch embedding and per-block modulation.
_COMMON_RULES = [
    (r"^patch_embedding\.", "patch_embedding.proj."),
    (r"^blocks\.(\d+)\.(scale_shift_table|modulation)$", r"blocks.\1.modulation.table"),
]

_DIFFUSERS_RULES = _COMMON_RULES + [
    (r"^condition_embedder\.time_embedder\.", "time_embedding."),
    (r"^condition_embedder\.time_proj\.", "time_projection."),
    (r"^condition_embedder\.text_embedder\.linear_(\d)\.", r"text_embedding.fc\1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "image_embedding.norm_in."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "image_embedding.mlp.fc1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "image_embedding.mlp.fc2."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "image_embedding.norm_out."),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_(q|k|v)\.", r".\1_proj."),
    (r"\.to_out\.0\.", ".o_proj."),
    (r"\.norm_(q|k)\.", r".\1_norm."),
    (r"\.add_(k|v)_proj\.", r".img_\1_proj."),
    (r"\.norm_added_k\.", ".img_k_norm."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.cross_attn_norm."),  # diffusers' norm2 is the cross-attention norm
    (r"\.ffn\.net\.0\.proj\.", ".ffn.fc1."),
    (r"\.ffn\.net\.2\.", ".ffn.fc2."),
    (r"^scale_shift_table$", "head.modulation.table"),
    (r"^proj_out\.", "head.proj."),
]

_ORIGINAL_RULES = [(r"^model\.diffusion_model\.", "")] + _COMMON_RULES + [  # single-file copies add a prefix
    (r"^time_embedding\.0\.", "time_embedding.linear_1."),
    (r"^time_embedding\.2\.", "time_embedding.linear_2."),
    (r"^text_embedding\.0\.", "text_embedding.fc1."),
    (r"^text_embedding\.2\.", "text_embedding.fc2."),
    (r"^time_projection\.1\.", "time_projection."),
    (r"^img_emb\.proj\.0\.", "image_embedding.norm_in."),
    (r"^img_emb\.proj\.1\.", "image_embedding.mlp.fc1."),
    (r"^img_emb\.proj\.3\.", "image_embedding.mlp.fc2."),
    (r"^img_emb\.proj\.4\.", "image_embedding.norm_out."),
    (r"\.(q|k|v|o)\.", r".\1_proj."),
    (r"\.norm_(q|k)\.", r".\1_norm."),
    (r"\.(k|v)_img\.", r".img_\1_proj."),
    (r"\.norm_k_img\.", ".img_k_norm."),
    (r"^blocks\.(\d+)\.norm3\.", r"blocks.\1.cross_attn_norm."),  # the original's norm3 is the cross-attention norm
    (r"\.ffn\.0\.", ".ffn.fc1."),
    (r"\.ffn\.2\.", ".ffn.fc2."),
    (r"^head\.modulation$", "head.modulation.table"),
    (r"^head\.head\.", "head.proj."),
]


def _diffusers_to_zoo(state_dict: dict[str, torch.Tensor], config: WanConfig) -> dict[str, torch.Tensor]:
    # Some I2V checkpoints carry an unused `norm_added_q`; diffusers skips it too.
    kept = {k: v for k, v in state_dict.items() if ".norm_added_q." not in k}
    return rename_keys(kept, _DIFFUSERS_RULES)


def _original_to_zoo(state_dict: dict[str, torch.Tensor], config: WanConfig) -> dict[str, torch.Tensor]:
    return rename_keys(state_dict, _ORIGINAL_RULES)


def _diffusers_config(values: dict[str, Any]) -> WanConfig:
    """`WanTransformer3DModel` config.json -> WanConfig."""
    if values.get("pos_embed_seq_len") is not None:
        raise ConfigError("Wan FLF2V (first-last-frame) checkpoints are not supported; zoo reads T2V, I2V and TI2V.")
    if values.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
        raise ConfigError(f"Wan qk_norm '{values['qk_norm']}' is not supported; Wan uses 'rms_norm_across_heads'.")
    image_dim = values.get("image_dim")
    heads, head_dim = values.get("num_attention_heads", 40), values.get("attention_head_dim", 128)
    if image_dim is not None and values.get("added_kv_proj_dim") != heads * head_dim:
        raise ConfigError(
            f"A Wan image branch needs added_kv_proj_dim = num_attention_heads * attention_head_dim "
            f"({heads * head_dim}), got {values.get('added_kv_proj_dim')}."
        )
    in_channels = values.get("in_channels", 16)
    return WanConfig(
        in_channels=in_channels,
        out_channels=values.get("out_channels") or in_channels,
        dim=heads * head_dim,
        ffn_dim=values.get("ffn_dim", 13824),
        num_heads=heads,
        num_layers=values.get("num_layers", 40),
        patch_size=tuple(values.get("patch_size", (1, 2, 2))),
        text_dim=values.get("text_dim", 4096),
        freq_dim=values.get("freq_dim", 256),
        image_dim=image_dim,
        cross_attn_norm=values.get("cross_attn_norm", True),
        eps=values.get("eps", 1e-6),
    )


ORIGINAL_MODEL_TYPES = ("t2v", "i2v", "ti2v")


def _original_config(values: dict[str, Any]) -> WanConfig:
    """The original release's `WanModel` config.json -> WanConfig.

    model_type 'i2v' means the Wan2.1 image-to-video model with its CLIP branch (width 1280). The
    Wan2.2 I2V-A14B experts say 'i2v' too but have no branch, which their config cannot tell: load
    them by name (`zoo.create("wan2.2-i2v-a14b.original", pretrained=True)`).
    """
    model_type = values.get("model_type", "t2v")
    if model_type not in ORIGINAL_MODEL_TYPES:
        raise ConfigError(
            f"Wan model_type '{model_type}' is not supported; zoo reads {', '.join(ORIGINAL_MODEL_TYPES)}."
        )
    in_channels = values.get("in_dim", 16)
    return WanConfig(
        in_channels=in_channels,
        out_channels=values.get("out_dim", in_channels),
        dim=values["dim"],
        ffn_dim=values["ffn_dim"],
        num_heads=values["num_heads"],
        num_layers=values["num_layers"],
        patch_size=tuple(values.get("patch_size", (1, 2, 2))),
        text_dim=values.get("text_dim", 4096),
        freq_dim=values.get("freq_dim", 256),
        image_dim=1280 if model_type == "i2v" else None,
        cross_attn_norm=values.get("cross_attn_norm", True),
        eps=values.get("eps", 1e-6),
    )


def _has_diffusers_keys(keys: Collection[str]) -> bool:
    return "condition_embedder.time_proj.weight" in keys


def _has_original_keys(keys: Collection[str]) -> bool:
    return any(key.removeprefix("model.diffusion_model.") == "head.modulation" for key in keys)


DIFFUSERS = Converter(
    "diffusers",
    convert_state_dict=_diffusers_to_zoo,
    convert_config=_diffusers_config,
    matches_config=lambda values: values.get("_class_name") == "WanTransformer3DModel",
    matches_keys=_has_diffusers_keys,
)
# A whole diffusers pipeline repo (model_index.json at its root): the denoiser is in transformer/
# (for Wan2.2 A14B the high-noise expert; the low-noise one is in transformer_2/).
DIFFUSERS_PIPELINE = dataclasses.replace(
    DIFFUSERS,
    name="diffusers-pipeline",
    matches_config=lambda values: values.get("_class_name") in ("WanPipeline", "WanImageToVideoPipeline"),
    matches_keys=None,
    subfolder="transformer",
)
ORIGINAL = Converter(
    "original",
    convert_state_dict=_original_to_zoo,
    convert_config=_original_config,
    matches_config=lambda values: values.get("_class_name") == "WanModel",
    matches_keys=_has_original_keys,
)


# ----------------------------------------------------------------------------------------------------
# Registry


def _input_spec(in_channels: int, latent: tuple[int, int, int], text: tuple[int, int] = (512, 4096),
                image: tuple[int, int] | None = None) -> InputSpec:
    """One denoising step's input: a latent (frames, height, width), t in [0, 1000), umT5 and CLIP tokens."""
    tensors = {
        "hidden_states": TensorSpec((in_channels, *latent)),
        "timestep": TensorSpec(()),
        "encoder_hidden_states": TensorSpec(text),
    }
    if image is not None:
        tensors["encoder_hidden_states_image"] = TensorSpec(image)

    def make(config: WanConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        inputs = {name: spec.make(batch_size, generator) for name, spec in tensors.items()}
        inputs["timestep"] = torch.rand(batch_size, generator=generator) * 1000
        return inputs

    return InputSpec(tensors, factory=make)


def _sources(repo: str, high_noise: bool | None = None) -> tuple[PretrainedSource, ...]:
    """The denoiser in the diffusers-format repo and in the original release, tagged 'diffusers' and 'original'.

    For a Wan2.2 A14B expert (high_noise True or False) the folders are the expert's, and the low-noise
    expert's tags end in '-low'.
    """
    diffusers_folder, original_folder, suffix = {
        None: ("transformer", "", ""),
        True: ("transformer", "high_noise_model", ""),
        False: ("transformer_2", "low_noise_model", "-low"),
    }[high_noise]
    return (
        PretrainedSource(f"{repo}-Diffusers", tag=f"diffusers{suffix}", subfolder=diffusers_folder,
                         format="diffusers", license="apache-2.0"),
        PretrainedSource(repo, tag=f"original{suffix}", subfolder=original_folder,
                         files=("diffusion_pytorch_model*",), format="original", license="apache-2.0"),
    )


def _expert_sources(repo: str) -> tuple[PretrainedSource, ...]:
    (diffusers_high, original_high), (diffusers_low, original_low) = _sources(repo, True), _sources(repo, False)
    return diffusers_high, diffusers_low, original_high, original_low


def run_wan(name: str, args: Any) -> None:
    """`zoo run wan*`: generate a video from --prompt (and --image for image-to-video) and write --out."""
    from .wan_pipeline import run

    run(name, args)


PAPER = "2503.20314"
WAN_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
# Latents (frames, height, width) of 81 frames at 832 x 480 and 1280 x 720 (Wan2.1 VAE, 4 x 8 x 8), and of
# 121 frames at 1280 x 704 (Wan2.2 VAE, 4 x 16 x 16).
LATENT_480P = (21, 60, 104)
LATENT_720P = (21, 90, 160)
LATENT_TI2V = (31, 44, 80)
CLIP_TOKENS = (257, 1280)

register_family("wan", WanTransformer, [DIFFUSERS, DIFFUSERS_PIPELINE, ORIGINAL], runner=run_wan)
register_model(ModelEntry(
    "wan2.1-t2v-1.3b", "wan", "diffusion", WanConfig(),
    sources=_sources("Wan-AI/Wan2.1-T2V-1.3B"), paper=PAPER,
    description="Wan2.1 text-to-video, 1.3B: 480p (832 x 480), 81 frames at 16 fps.",
    default_input=_input_spec(16, LATENT_480P), expected_params=1_418_996_800,
))  # fmt: skip
register_model(ModelEntry(
    "wan2.1-t2v-14b", "wan", "diffusion", WanConfig(**WAN_14B),
    sources=_sources("Wan-AI/Wan2.1-T2V-14B"), paper=PAPER,
    description="Wan2.1 text-to-video, 14B: 480p and 720p, 81 frames at 16 fps.",
    default_input=_input_spec(16, LATENT_720P), expected_params=14_288_491_584,
))  # fmt: skip
register_model(ModelEntry(
    "wan2.1-i2v-14b-480p", "wan", "diffusion", WanConfig(in_channels=36, image_dim=1280, **WAN_14B),
    sources=_sources("Wan-AI/Wan2.1-I2V-14B-480P"), paper=PAPER,
    description="Wan2.1 image-to-video, 14B, 480p: the first frame's VAE latent is concatenated to the noise "
                "and its CLIP ViT-H/14 tokens are attended to.",
    default_input=_input_spec(36, LATENT_480P, image=CLIP_TOKENS), expected_params=16_394_878_784,
))  # fmt: skip
register_model(ModelEntry(
    "wan2.1-i2v-14b-720p", "wan", "diffusion", WanConfig(in_channels=36, image_dim=1280, **WAN_14B),
    sources=_sources("Wan-AI/Wan2.1-I2V-14B-720P"), paper=PAPER,
    description="Wan2.1 image-to-video, 14B, 720p: the first frame's VAE latent is concatenated to the noise "
                "and its CLIP ViT-H/14 tokens are attended to.",
    default_input=_input_spec(36, LATENT_720P, image=CLIP_TOKENS), expected_params=16_394_878_784,
))  # fmt: skip
register_model(ModelEntry(
    "wan2.2-ti2v-5b", "wan", "diffusion",
    WanConfig(in_channels=48, out_channels=48, dim=3072, ffn_dim=14336, num_heads=24, num_layers=30),
    sources=_sources("Wan-AI/Wan2.2-TI2V-5B"), paper=PAPER,
    description="Wan2.2 text- and image-to-video, 5B, with the 4 x 16 x 16 Wan2.2 VAE: 1280 x 704, 121 frames "
                "at 24 fps; one timestep per token (0 on the given first frame).",
    default_input=_input_spec(48, LATENT_TI2V), expected_params=4_999_787_712,
))  # fmt: skip
register_model(ModelEntry(
    "wan2.2-t2v-a14b", "wan", "diffusion", WanConfig(**WAN_14B),
    sources=_expert_sources("Wan-AI/Wan2.2-T2V-A14B"), paper=PAPER,
    description="Wan2.2 text-to-video A14B, one of its two 14B experts (high-noise until t = 875, then "
                "low-noise): tags 'diffusers' and 'original' load the high-noise expert, 'diffusers-low' and "
                "'original-low' the low-noise one. WanPipeline runs the pair.",
    default_input=_input_spec(16, LATENT_720P), expected_params=14_288_491_584,
))  # fmt: skip
register_model(ModelEntry(
    "wan2.2-i2v-a14b", "wan", "diffusion", WanConfig(in_channels=36, **WAN_14B),
    sources=_expert_sources("Wan-AI/Wan2.2-I2V-A14B"), paper=PAPER,
    description="Wan2.2 image-to-video A14B (no CLIP branch), one of its two 14B experts (high-noise until "
                "t = 900, then low-noise): tags 'diffusers' and 'original' load the high-noise expert, "
                "'diffusers-low' and 'original-low' the low-noise one. WanPipeline runs the pair.",
    default_input=_input_spec(36, LATENT_720P), expected_params=14_288_901_184,
))  # fmt: skip
register_model(ModelEntry(
    "wan-tiny", "wan", "diffusion", WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=32),
    description="A tiny random Wan DiT for tests and demos.",
    default_input=_input_spec(16, (2, 8, 8), text=(8, 32)),
))  # fmt: skip
