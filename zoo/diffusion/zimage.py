"""Z-Image (Tongyi-MAI): the 6B scalable single-stream diffusion transformer (S3-DiT), Turbo and base.

Paper: "Z-Image: An Efficient Image Generation Foundation Model with Single-Stream Diffusion Transformer"
(arXiv:2511.22699). Turbo is the 8-step distilled model (Decoupled-DMD + DMDR); base is the undistilled one.

The denoiser takes variable-size lists, as the published code does: latents (C, F, H, W) and un-padded caption
features (L, caption_dim) of any length per item. Image patches and caption tokens are each padded to a
multiple of 32 with learned pad tokens, which take part in attention (only the padding that batches items of
different lengths is masked). Image tokens go through modulated `noise_refiner` blocks, caption tokens through
unmodulated `context_refiner` blocks, then both, concatenated per item as [image, caption], through the main
single-stream blocks. Blocks use sandwich RMSNorms around attention and the SwiGLU, scale-only adaLN from a 256-d
time embedding and tanh gates. Time runs the other way from the flow-matching sigma: t = 1 - sigma, t = 1 clean.

Weights load from the diffusers repos (`transformer/` of `Tongyi-MAI/Z-Image-Turbo` and `Tongyi-MAI/Z-Image`).
The pipeline (text encoder, VAE, scheduler) is in `zoo.diffusion.zimage_pipeline`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from zoo.config import NonNegativeInt, PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import ConfigError
from zoo.layers.attention import Attention, padding_mask
from zoo.layers.embed import TimestepEmbedding, timestep_embedding
from zoo.layers.mlp import SwiGLU
from zoo.layers.modulation import AdaLNModulation, gated_residual, modulate
from zoo.layers.norm import LayerNorm, RMSNorm
from zoo.layers.rotary import RotaryEmbedding
from zoo.modeling import ZooModel
from zoo.registry import (
    Converter,
    InputSpec,
    ModelEntry,
    PretrainedSource,
    TensorSpec,
    register_family,
    register_model,
    rename_keys,
)

SEQ_MULTIPLE = 32  # image and caption sequences are each padded to a multiple of this
FREQUENCY_DIM = 256  # sinusoidal timestep embedding
TIME_HIDDEN_DIM = 1024
MAX_ADALN_DIM = 256
FP16_MAX = 65504.0
# Latents (C, F, H, W) to patch tokens, in the published order: tokens row-major, values channels-last.
_PATCHES = "c (f pf) (h ph) (w pw) -> (f h w) (pf ph pw c)"
_UNPATCHES = "(f h w) (pf ph pw c) -> c (f pf) (h ph) (w pw)"


@dataclasses.dataclass
class ZImageConfig(ZooConfig):
    """S3-DiT hyper-parameters; the defaults are the published 6B model (Turbo and base share them).

    axes_dims split each head's rotary channels over (sequence, row, column) positions; axes_lens bound those
    positions, as the published rotary tables do. fp16_clamp brings float16 activations that overflow (the
    SwiGLU hidden state, the attention and feed-forward outputs) back to the finite range; it changes nothing in
    other dtypes, nor in float16 where nothing overflows.
    """

    in_channels: PositiveInt = 16
    patch_size: PositiveInt = 2
    frame_patch_size: PositiveInt = 1
    dim: PositiveInt = 3840
    num_layers: PositiveInt = 30
    num_refiner_layers: NonNegativeInt = 2
    num_heads: PositiveInt = 30
    caption_dim: PositiveInt = 2560
    norm_eps: PositiveFloat = 1e-5
    qk_norm: bool = True
    rope_theta: PositiveFloat = 256.0
    t_scale: PositiveFloat = 1000.0
    axes_dims: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 48, 48)
    axes_lens: tuple[PositiveInt, PositiveInt, PositiveInt] = (1536, 512, 512)
    fp16_clamp: bool = True

    def validate(self) -> None:
        if self.dim % self.num_heads or self.dim // self.num_heads != sum(self.axes_dims):
            raise ConfigError(
                f"ZImageConfig.dim ({self.dim}) must split into num_heads ({self.num_heads}) heads whose size is "
                f"sum(axes_dims) = {sum(self.axes_dims)}."
            )
        if any(d % 2 for d in self.axes_dims):
            raise ConfigError(f"ZImageConfig.axes_dims must be even (rotary channels pair up), got {self.axes_dims}.")


def clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """float16 infinities to +-65504 and NaNs (inf - inf, inf * 0) to 0; other dtypes pass through."""
    if x.dtype != torch.float16:
        return x
    return torch.nan_to_num(x, nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)


class ZImageRotaryEmbedding(RotaryEmbedding):
    """Z-Image's 3D rotary tables, rounded as the published ones are.

    The published code computes the angles position * theta^(-2i/d) in float64, rounds them to float32, and takes
    cos/sin of the rounded angles with torch.polar in float32. `RotaryEmbedding` with float64 angles rounds after
    cos/sin instead, which differs by up to 3.5e-5 at position 1535; this reproduces the published tables exactly.
    """

    def __init__(self, axes_dims: Sequence[int], theta: float):
        super().__init__(tuple(axes_dims), theta, angle_dtype=torch.float64)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3) integer positions -> float32 cos and sin of shape (..., sum(axes_dims) // 2)."""
        inv_freq_per_axis = self.inv_freq(position_ids.device).split([d // 2 for d in self.axes_dims])
        positions = position_ids.to(torch.float64)
        angles = torch.cat(
            [positions[..., axis, None] * inv_freq for axis, inv_freq in enumerate(inv_freq_per_axis)], dim=-1
        ).float()
        rotation = torch.polar(torch.ones_like(angles), angles)
        return rotation.real, rotation.imag


class FeedForward(SwiGLU):
    """SwiGLU w2(silu(w1 x) * w3 x), hidden width int(dim / 3 * 8), bias-free; clamps its float16 hidden state."""

    def __init__(self, dim: int, fp16_clamp: bool):
        super().__init__(dim, int(dim / 3 * 8))
        self.fp16_clamp = fp16_clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(clamp_fp16(hidden) if self.fp16_clamp else hidden)


class ZImageBlock(nn.Module):
    """Self-attention and SwiGLU, each between a pre- and a post-RMSNorm (sandwich norm), added residually.

    With `modulated`, the time embedding scales each branch's input by (1 + scale) and gates its output by
    tanh(gate) (no shift); without it (the caption refiner) the branches are added as they are.
    """

    def __init__(self, config: ZImageConfig, modulated: bool):
        super().__init__()
        dim, eps = config.dim, config.norm_eps
        self.fp16_clamp = config.fp16_clamp
        qk_norm = "rms" if config.qk_norm else None  # with eps 1e-5 whatever norm_eps is, as published
        self.attention = Attention(dim, config.num_heads, qk_norm=qk_norm, norm_eps=1e-5, rotary_interleaved=True)
        self.feed_forward = FeedForward(dim, config.fp16_clamp)
        self.attention_norm1 = RMSNorm(dim, eps)
        self.attention_norm2 = RMSNorm(dim, eps)
        self.ffn_norm1 = RMSNorm(dim, eps)
        self.ffn_norm2 = RMSNorm(dim, eps)
        adaln_dim = min(dim, MAX_ADALN_DIM)
        self.modulation = AdaLNModulation(adaln_dim, dim, 4, act_layer=None) if modulated else None

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, dim), rotary cos/sin (B, L, head_dim // 2), attn_mask (B, 1, 1, L), cond (B, adaln_dim)."""
        if self.modulation is None:
            attn_out = self.attention(self.attention_norm1(x), attn_mask=attn_mask, rotary=rotary)
            x = x + self.attention_norm2(self._clamp(attn_out))
            return x + self.ffn_norm2(self._clamp(self.feed_forward(self.ffn_norm1(x))))

        scale_msa, gate_msa, scale_mlp, gate_mlp = self.modulation(cond)
        attn_in = modulate(self.attention_norm1(x), None, scale_msa)
        attn_out = self.attention(attn_in, attn_mask=attn_mask, rotary=rotary)
        x = gated_residual(x, self.attention_norm2(self._clamp(attn_out)), gate_msa.tanh())
        ffn_out = self.feed_forward(modulate(self.ffn_norm1(x), None, scale_mlp))
        return gated_residual(x, self.ffn_norm2(self._clamp(ffn_out)), gate_mlp.tanh())

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        return clamp_fp16(x) if self.fp16_clamp else x


class CaptionEmbedder(nn.Module):
    """RMSNorm then Linear: text-encoder features (..., caption_dim) to tokens (..., dim)."""

    def __init__(self, caption_dim: int, dim: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(caption_dim, eps)
        self.proj = nn.Linear(caption_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class FinalLayer(nn.Module):
    """LayerNorm (no affine) scaled by 1 + Linear(SiLU(cond)), then Linear to patch values."""

    def __init__(self, dim: int, adaln_dim: int, out_dim: int):
        super().__init__()
        self.norm = LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.modulation = AdaLNModulation(adaln_dim, dim, 1)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim), cond (B, adaln_dim) -> (B, L, out_dim)."""
        (scale,) = self.modulation(cond)
        return self.linear(modulate(self.norm(x), None, scale))


class ZImageTransformer(ZooModel):
    """The Z-Image S3-DiT denoiser; forward mirrors diffusers' `ZImageTransformer2DModel`."""

    config_class = ZImageConfig

    def __init__(self, config: ZImageConfig):
        super().__init__(config)
        dim, adaln_dim = config.dim, min(config.dim, MAX_ADALN_DIM)
        patch_dim = config.frame_patch_size * config.patch_size**2 * config.in_channels

        self.x_embedder = nn.Linear(patch_dim, dim)
        self.t_embedder = TimestepEmbedding(FREQUENCY_DIM, TIME_HIDDEN_DIM, out_dim=adaln_dim)
        self.cap_embedder = CaptionEmbedder(config.caption_dim, dim, config.norm_eps)
        self.x_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.rotary = ZImageRotaryEmbedding(config.axes_dims, config.rope_theta)
        refiners = range(config.num_refiner_layers)
        self.noise_refiner = nn.ModuleList(ZImageBlock(config, modulated=True) for _ in refiners)
        self.context_refiner = nn.ModuleList(ZImageBlock(config, modulated=False) for _ in refiners)
        self.layers = nn.ModuleList(ZImageBlock(config, modulated=True) for _ in range(config.num_layers))
        self.final_layer = FinalLayer(dim, adaln_dim, patch_dim)

    def fsdp_units(self) -> list[nn.Module]:
        return [*self.noise_refiner, *self.context_refiner, *self.layers]

    def forward(
        self, x: Sequence[torch.Tensor], t: torch.Tensor, cap_feats: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Velocity, in the model's own time direction (noise to data), of each latent.

        x: B latents (C, F, H, W); sizes may differ between items. t: (B,) or one time in [0, 1], 1 = clean
        (the flow-matching sigma is 1 - t). cap_feats: B caption features (L_i, caption_dim), without padding.
        Returns B tensors shaped like the latents.
        """
        self._check_inputs(x, t, cap_feats)
        if not len(x):
            return []
        p, pf, device = self.config.patch_size, self.config.frame_patch_size, x[0].device
        frequencies = timestep_embedding(
            t.expand(len(x)) * self.config.t_scale, FREQUENCY_DIM, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        cond = self.t_embedder(frequencies.to(self.t_embedder.linear_1.weight.dtype)).to(x[0].dtype)

        grids = [(f // pf, h // p, w // p) for f, h, w in (latent.shape[1:] for latent in x)]
        patches = [rearrange(latent, _PATCHES, pf=pf, ph=p, pw=p) for latent in x]
        image = self._embed(self.x_embedder, patches, self.x_pad_token)
        caption = self._embed(self.cap_embedder, cap_feats, self.cap_pad_token)
        image_lens, caption_lens = [len(tokens) for tokens in image], [len(tokens) for tokens in caption]
        self._check_positions(grids, caption_lens)
        caption_ids = [_caption_positions(m, device) for m in caption_lens]
        image_ids = [_image_positions(grid, n, m, device) for grid, n, m in zip(grids, image_lens, caption_lens)]

        image, image_mask = _batch(image)
        image_rotary = self.rotary(pad_sequence(image_ids, batch_first=True))
        for block in self.noise_refiner:
            image = block(image, image_rotary, image_mask, cond)
        caption, caption_mask = _batch(caption)
        caption_rotary = self.rotary(pad_sequence(caption_ids, batch_first=True))
        for block in self.context_refiner:
            caption = block(caption, caption_rotary, caption_mask)

        # One stream per item: its image tokens, then its caption tokens.
        unified, mask = _batch(
            [torch.cat((image[i, :n], caption[i, :m])) for i, (n, m) in enumerate(zip(image_lens, caption_lens))]
        )
        unified_ids = [torch.cat(ids) for ids in zip(image_ids, caption_ids)]
        rotary = self.rotary(pad_sequence(unified_ids, batch_first=True))
        for block in self.layers:
            unified = block(unified, rotary, mask, cond)

        out = self.final_layer(unified[:, : max(image_lens)], cond)
        return [
            rearrange(out[i, : f * h * w], _UNPATCHES, f=f, h=h, w=w, pf=pf, ph=p, pw=p)
            for i, (f, h, w) in enumerate(grids)
        ]

    @staticmethod
    def _embed(embedder: nn.Module, sequences: Sequence[torch.Tensor], pad_token: torch.Tensor) -> list[torch.Tensor]:
        """Embed the (L_i, ...) sequences in one call; append copies of pad_token up to a multiple of 32 to each."""
        tokens = embedder(torch.cat(list(sequences))).split([len(s) for s in sequences])
        return [torch.cat((item, pad_token.expand(-len(item) % SEQ_MULTIPLE, -1))) for item in tokens]

    def _check_inputs(self, x: Sequence[torch.Tensor], t: torch.Tensor, cap_feats: Sequence[torch.Tensor]) -> None:
        config = self.config
        p, pf, channels = config.patch_size, config.frame_patch_size, config.in_channels
        if len(x) != len(cap_feats) or t.shape not in ((len(x),), ()):
            raise ValueError(
                f"expected B latents, B caption features and t of shape (B,), got {len(x)} latents, "
                f"{len(cap_feats)} caption features and t of shape {tuple(t.shape)}"
            )
        for latent in x:
            has_layout = latent.ndim == 4 and latent.shape[0] == channels
            if not has_layout or latent.shape[1] % pf or latent.shape[2] % p or latent.shape[3] % p:
                raise ValueError(
                    f"expected latents (C={channels}, F, H, W) with F divisible by {pf} and H, W by {p}, "
                    f"got {tuple(latent.shape)}"
                )
        for feats in cap_feats:
            if feats.ndim != 2 or feats.shape[1] != config.caption_dim or not len(feats):
                raise ValueError(f"expected caption features (L >= 1, {config.caption_dim}), got {tuple(feats.shape)}")

    def _check_positions(self, grids: list[tuple[int, int, int]], caption_lens: list[int]) -> None:
        """Captions sit at sequence positions 1..L, images after them: every position must be in axes_lens."""
        largest = (max(m + f for (f, _, _), m in zip(grids, caption_lens, strict=True)),
                   max(h for _, h, _ in grids) - 1, max(w for _, _, w in grids) - 1)  # fmt: skip
        limits = self.config.axes_lens
        if any(position >= limit for position, limit in zip(largest, limits, strict=True)):
            raise ValueError(
                f"rotary positions reach (sequence, row, column) = {largest}, beyond the model's axes_lens "
                f"{limits}: use a shorter caption or a smaller image (at most {limits[1] * self.config.patch_size} "
                f"latent rows and {limits[2] * self.config.patch_size} columns)"
            )


def _caption_positions(length: int, device: torch.device) -> torch.Tensor:
    """(length, 3) positions of a padded caption: (1 + i, 0, 0), pad tokens included."""
    ids = torch.zeros(length, 3, dtype=torch.long, device=device)
    ids[:, 0] = torch.arange(1, length + 1, device=device)
    return ids


def _image_positions(
    grid: tuple[int, int, int], length: int, caption_length: int, device: torch.device
) -> torch.Tensor:
    """(length, 3) positions of padded image tokens: (caption_length + 1 + f, h, w), then (0, 0, 0) for pads."""
    frames, rows, columns = grid
    axes = (torch.arange(frames, device=device) + caption_length + 1,
            torch.arange(rows, device=device), torch.arange(columns, device=device))  # fmt: skip
    ids = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flatten(0, 2)
    return torch.cat((ids, ids.new_zeros(length - len(ids), 3)))


def _batch(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequences (L_i, ...) zero-padded to (B, max L_i, ...) and the (B, 1, 1, max L_i) key mask of their
    tokens, or None when all have the same length."""
    lengths = [len(s) for s in sequences]
    batch = pad_sequence(sequences, batch_first=True)
    if len(set(lengths)) == 1:
        return batch, None
    positions = torch.arange(batch.shape[1], device=batch.device)
    return batch, padding_mask(positions < torch.tensor(lengths, device=batch.device)[:, None])


# ----------------------------------------------------------------------------------------------------
# Converters


_DIFFUSERS_RENAMES = [
    (r"^all_x_embedder\.\d+-\d+\.", "x_embedder."),
    (r"^all_final_layer\.\d+-\d+\.adaLN_modulation\.1\.", "final_layer.modulation.linear."),
    (r"^all_final_layer\.\d+-\d+\.", "final_layer."),
    (r"^t_embedder\.mlp\.0\.", "t_embedder.linear_1."),
    (r"^t_embedder\.mlp\.2\.", "t_embedder.linear_2."),
    (r"^cap_embedder\.0\.", "cap_embedder.norm."),
    (r"^cap_embedder\.1\.", "cap_embedder.proj."),
    (r"\.attention\.to_q\.", ".attention.q_proj."),
    (r"\.attention\.to_k\.", ".attention.k_proj."),
    (r"\.attention\.to_v\.", ".attention.v_proj."),
    (r"\.attention\.to_out\.0\.", ".attention.o_proj."),
    (r"\.attention\.norm_q\.", ".attention.q_norm."),
    (r"\.attention\.norm_k\.", ".attention.k_norm."),
    (r"\.feed_forward\.w1\.", ".feed_forward.gate_proj."),
    (r"\.feed_forward\.w2\.", ".feed_forward.down_proj."),
    (r"\.feed_forward\.w3\.", ".feed_forward.up_proj."),
    (r"\.adaLN_modulation\.0\.", ".modulation.linear."),
]


def _diffusers_to_zoo(state_dict: dict[str, torch.Tensor], config: ZImageConfig) -> dict[str, torch.Tensor]:
    """diffusers' (and the official release's) `ZImageTransformer2DModel` keys to ours; no tensor changes."""
    return rename_keys(state_dict, _DIFFUSERS_RENAMES)


def _diffusers_config(values: dict[str, Any]) -> ZImageConfig:
    """A `ZImageTransformer2DModel` config.json to ours; missing fields take diffusers' defaults.

    n_kv_heads is read by neither diffusers nor the official code (attention has n_heads key/value heads).
    """
    patch_sizes, frame_patch_sizes = values.get("all_patch_size", [2]), values.get("all_f_patch_size", [1])
    if len(patch_sizes) != 1 or len(frame_patch_sizes) != 1:
        raise ConfigError(
            f"zoo's Z-Image has one patch size, as the published models; this config has all_patch_size "
            f"{patch_sizes} and all_f_patch_size {frame_patch_sizes}"
        )
    if values.get("siglip_feat_dim") is not None:
        raise ConfigError("this is a Z-Image-Omni/Edit config (siglip_feat_dim is set); zoo reads text-to-image only")
    return ZImageConfig(
        in_channels=values.get("in_channels", 16),
        patch_size=patch_sizes[0],
        frame_patch_size=frame_patch_sizes[0],
        dim=values.get("dim", 3840),
        num_layers=values.get("n_layers", 30),
        num_refiner_layers=values.get("n_refiner_layers", 2),
        num_heads=values.get("n_heads", 30),
        caption_dim=values.get("cap_feat_dim", 2560),
        norm_eps=values.get("norm_eps", 1e-5),
        qk_norm=values.get("qk_norm", True),
        rope_theta=values.get("rope_theta", 256.0),
        t_scale=values.get("t_scale", 1000.0),
        axes_dims=tuple(values.get("axes_dims", (32, 48, 48))),
        axes_lens=tuple(values.get("axes_lens", (1024, 512, 512))),
    )


def _has_diffusers_keys(keys: Collection[str]) -> bool:
    return any(key.startswith("all_x_embedder.") for key in keys)


DIFFUSERS = Converter(
    "diffusers",
    convert_state_dict=_diffusers_to_zoo,
    convert_config=_diffusers_config,
    matches_config=lambda values: values.get("_class_name") == "ZImageTransformer2DModel",
    matches_keys=_has_diffusers_keys,
)
# A whole diffusers pipeline repo (model_index.json at its root): the denoiser is in transformer/.
DIFFUSERS_PIPELINE = dataclasses.replace(
    DIFFUSERS,
    name="diffusers-pipeline",
    matches_config=lambda values: values.get("_class_name") == "ZImagePipeline",
    matches_keys=None,
    subfolder="transformer",
)


# ----------------------------------------------------------------------------------------------------
# Registry


def _default_input(config: ZImageConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, Any]:
    """Latents of different sizes and captions of different lengths, so that both need padding to 32 and
    the batch needs masking; t in [0, 1]."""
    p = config.patch_size
    sizes = [(3 + 2 * i, 5 + i) for i in range(batch_size)]  # latent patches per side
    x = [torch.randn(config.in_channels, config.frame_patch_size, p * h, p * w, generator=generator) for h, w in sizes]
    cap_feats = [torch.randn(7 + 30 * i, config.caption_dim, generator=generator) for i in range(batch_size)]
    return {"x": x, "t": torch.rand(batch_size, generator=generator), "cap_feats": cap_feats}


DEFAULT_INPUT = InputSpec(
    {"x": TensorSpec((16, 1, 6, 10)), "t": TensorSpec(()), "cap_feats": TensorSpec((7, 2560))},
    factory=_default_input,
)

PAPER = "2511.22699"
PUBLISHED_PARAMS = 6_154_908_736


def run_zimage(name: str, args: Any) -> None:
    """`zoo run z-image*`: generate an image from --prompt and write it to --out."""
    from .zimage_pipeline import run

    run(name, args)


register_family("zimage", ZImageTransformer, [DIFFUSERS, DIFFUSERS_PIPELINE], runner=run_zimage)
register_model(ModelEntry(
    "z-image-turbo", "zimage", "diffusion", ZImageConfig(),
    sources=(PretrainedSource("Tongyi-MAI/Z-Image-Turbo", subfolder="transformer", format="diffusers",
                              license="apache-2.0"),),
    paper=PAPER,
    description="Z-Image-Turbo: the 6B S3-DiT distilled to 8 steps without guidance (Decoupled-DMD + DMDR).",
    default_input=DEFAULT_INPUT,
    expected_params=PUBLISHED_PARAMS,
))  # fmt: skip
register_model(ModelEntry(
    "z-image", "zimage", "diffusion", ZImageConfig(),
    sources=(PretrainedSource("Tongyi-MAI/Z-Image", subfolder="transformer", format="diffusers",
                              license="apache-2.0"),),
    paper=PAPER,
    description="Z-Image: the undistilled 6B S3-DiT, sampled in 50 steps with classifier-free guidance.",
    default_input=DEFAULT_INPUT,
    expected_params=PUBLISHED_PARAMS,
))  # fmt: skip
register_model(ModelEntry(
    "z-image-tiny", "zimage", "diffusion",
    ZImageConfig(dim=64, num_layers=2, num_refiner_layers=1, num_heads=2, caption_dim=32, axes_dims=(8, 12, 12)),
    description="A tiny random Z-Image S3-DiT for tests and demos.",
    default_input=DEFAULT_INPUT,
))  # fmt: skip
