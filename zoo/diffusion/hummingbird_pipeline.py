"""AMD-Hummingbird text-to-video: few-step LCM sampling around zoo's Hummingbird U-Net.

The release file (`07B_merged_all.pt` / `09B_merged_all.pt`, read by `zoo.safe_pickle`) holds all three parts:
the U-Net, the OpenCLIP ViT-H-14 text tower (open_clip's `TextTransformer`, penultimate layer then `ln_final`, 77
tokens of open_clip's tokenizer) and the SD-2.1-style VAE (diffusers' `AutoencoderKL` after diffusers' LDM key
conversion, decoding frame by frame, latents scaled by 0.18215). Sampling is T2V-Turbo's: diffusers'
`LCMScheduler` (epsilon prediction, scaled-linear betas 0.00085-0.012, 50 original steps, boundary-condition
timestep scaling 10) on the original LCM timesteps (4 steps: 999, 759, 519, 279), with the guidance scale given
to the U-Net as an embedding of w * 1000 (no classifier-free batch doubling).

    pipe = HummingbirdPipeline.from_release("path/to/folder_with_07B_merged_all.pt").to("cuda", torch.float16)
    out = pipe("A corgi running on the beach", num_inference_steps=4, generator=0)
    export_video(out.frames[0], "corgi.mp4", fps=out.fps)
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from zoo import hub
from zoo.dtypes import parse_dtype
from zoo.errors import CheckpointError, InputError, ZooError
from zoo.factory import fetch_source
from zoo.registry import split_name

from .export import export_video
from .hummingbird import (
    RELEASE, RELEASE_FILES, HummingbirdUNet, guidance_embedding, read_release, release_config_values, release_file,
)

VAE_SCALE = 0.18215
ORIGINAL_STEPS = 50  # LCM's skipping schedule is cut from 50 of the 1000 training steps
TEXT_PREFIX, VAE_PREFIX = "cond_stage_model.model.", "first_stage_model."


@dataclasses.dataclass(frozen=True)
class HummingbirdVideoOutput:
    """frames: (B, T, H, W, 3) floats in [0, 1] ("np") or latents (B, 4, T, H/8, W/8) ("latent"); fps of the video."""

    frames: Any
    fps: int


def lcm_timesteps(num_steps: int, original_steps: int = ORIGINAL_STEPS, train_steps: int = 1000) -> list[int]:
    """The original LCM schedule T2V-Turbo samples with: every (original_steps // num_steps)-th of the
    `original_steps` evenly skipped training steps, from the last (4 steps: 999, 759, 519, 279)."""
    if not 1 <= num_steps <= original_steps:
        raise InputError(f"num_inference_steps must be between 1 and {original_steps}, got {num_steps}.")
    step = train_steps // original_steps
    origin = list(range(train_steps - 1, -1, -step))  # 999, 979, ..., 19
    return origin[:: original_steps // num_steps][:num_steps]


def lcm_scheduler() -> Any:
    """diffusers' LCMScheduler configured as the release's T2V-Turbo scheduler."""
    from diffusers import LCMScheduler

    return LCMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        original_inference_steps=ORIGINAL_STEPS, timestep_scaling=10.0, prediction_type="epsilon",
        clip_sample=False, set_alpha_to_one=True,
    )  # fmt: skip


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as error:
        raise ZooError("The Hummingbird pipeline needs open_clip (text tower and tokenizer): "
                       "pip install mmzoo[hummingbird]") from error
    return open_clip


class HummingbirdPipeline:
    """Text-to-video with a Hummingbird U-Net, the OpenCLIP text tower, the SD VAE and LCM sampling."""

    def __init__(self, unet: HummingbirdUNet, text_encoder: Any, vae: Any, scheduler: Any = None):
        self.unet, self.text_encoder, self.vae = unet.eval(), text_encoder.eval(), vae.eval()
        self.scheduler = scheduler or lcm_scheduler()

    @classmethod
    def from_release(cls, path: str | Path, dtype: torch.dtype | None = None) -> HummingbirdPipeline:
        """All three parts from a release file or a folder holding one, read once by the restricted unpickler."""
        path = Path(path)
        file = release_file(path) if path.is_dir() else path
        if file is None or not file.is_file():
            raise CheckpointError(f"{path} is not (a folder holding) {' or '.join(RELEASE_FILES)}.")
        state_dict = read_release(file)
        config = RELEASE.convert_config(release_config_values(state_dict))
        with torch.device("meta"):
            unet = HummingbirdUNet(config)
        hub.load_weights(unet, RELEASE.convert_state_dict(state_dict, config), RELEASE)
        pipe = cls(unet, text_encoder_from_state_dict(state_dict), vae_from_state_dict(state_dict))
        return pipe.to(dtype=dtype) if dtype is not None else pipe

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HummingbirdPipeline:
        for module in (self.unet, self.text_encoder, self.vae):
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """(B, 77, width) text features: the penultimate block's output through `ln_final`."""
        tokens = _open_clip().tokenize(prompts, context_length=self.text_encoder.context_length).to(self.device)
        layers = len(self.text_encoder.transformer.resblocks)
        features = self.text_encoder.forward_intermediates(
            tokens, indices=[layers - 2], stop_early=True, normalize_intermediates=True, intermediates_only=True,
            output_fmt="NLC",
        )["text_intermediates"][0]  # fmt: skip
        return features.to(self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 4,
        guidance_scale: float = 7.5,
        height: int = 320,
        width: int = 512,
        num_frames: int = 26,
        fps: int = 8,
        generator: torch.Generator | int | None = None,
        output_type: str = "np",
    ) -> HummingbirdVideoOutput:
        """Generate one video per prompt. height and width must be multiples of 8 x the U-Net's downsampling."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        multiple = 8 * self.unet.config.downsampling
        if not prompts or height % multiple or width % multiple or num_frames < 1:
            raise InputError(f"Need at least one prompt, height and width multiples of {multiple} and num_frames >= 1; "
                             f"got {len(prompts)} prompts, {height} x {width}, {num_frames} frames.")
        if output_type not in ("np", "latent"):
            raise InputError(f"output_type must be 'np' or 'latent', got {output_type!r}.")
        if isinstance(generator, int):
            generator = torch.Generator(self.device).manual_seed(generator)
        batch = len(prompts)
        context = self.encode_prompt(prompts)
        cond_dim = self.unet.config.time_cond_proj_dim
        timestep_cond = None if cond_dim is None else guidance_embedding(guidance_scale, cond_dim, batch)
        timestep_cond = None if timestep_cond is None else timestep_cond.to(self.device, self.dtype)

        shape = (batch, self.unet.config.in_channels, num_frames, height // 8, width // 8)
        latents = torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)
        self.scheduler.set_timesteps(timesteps=lcm_timesteps(num_inference_steps), device=self.device)
        for t in self.scheduler.timesteps:
            noise = self.unet(latents.to(self.dtype), t, context, fps=fps, timestep_cond=timestep_cond)
            latents, denoised = self.scheduler.step(noise.float(), t, latents, generator=generator, return_dict=False)
        if output_type == "latent":
            return HummingbirdVideoOutput(denoised, fps)
        return HummingbirdVideoOutput(self.decode(denoised), fps)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, frames_per_batch: int = 8) -> np.ndarray:
        """(B, 4, T, h, w) latents -> (B, T, 8h, 8w, 3) frames in [0, 1], decoded frame by frame by the 2D VAE."""
        batch = latents.shape[0]
        flat = rearrange(latents, "b c t h w -> (b t) c h w") / VAE_SCALE
        vae_dtype = next(self.vae.parameters()).dtype
        images = torch.cat([self.vae.decode(chunk.to(vae_dtype)).sample.float()
                            for chunk in flat.split(frames_per_batch)])  # fmt: skip
        images = ((images + 1) / 2).clamp(0, 1)
        return rearrange(images, "(b t) c h w -> b t h w c", b=batch).cpu().numpy()


# ----------------------------------------------------------------------------------------------------
# The release's text tower and VAE


def text_encoder_from_state_dict(state_dict: dict[str, torch.Tensor]) -> Any:
    """open_clip's TextTransformer holding the release's `cond_stage_model.model.*` text weights (heads of 64)."""
    open_clip = _open_clip()
    text = {k.removeprefix(TEXT_PREFIX): v for k, v in state_dict.items() if k.startswith(TEXT_PREFIX)}
    if "token_embedding.weight" not in text:
        raise CheckpointError("The checkpoint holds no OpenCLIP text tower (cond_stage_model.model.token_embedding).")
    vocab, width = text["token_embedding.weight"].shape
    layers = len({m[1] for k in text if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
    projection = text.get("text_projection")
    encoder = open_clip.transformer.TextTransformer(
        context_length=text["positional_embedding"].shape[0], vocab_size=vocab, width=width,
        heads=max(1, width // 64), layers=layers, output_dim=None if projection is None else projection.shape[1],
    )  # fmt: skip
    expected = encoder.state_dict().keys()
    encoder.load_state_dict({k: v for k, v in text.items() if k in expected}, strict=True)
    return encoder.eval()


def _vae_config(vae: dict[str, torch.Tensor]) -> dict[str, Any]:
    """diffusers AutoencoderKL config of an LDM VAE state dict (the SD-2.1 VAE: 128, 256, 512, 512 channels)."""
    levels = sorted({int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    return {
        "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_channels": vae["decoder.conv_out.weight"].shape[0],
        "latent_channels": vae["post_quant_conv.weight"].shape[0],
        "block_out_channels": tuple(vae[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in levels),
        "layers_per_block": len(blocks),
        "down_block_types": ("DownEncoderBlock2D",) * len(levels),
        "up_block_types": ("UpDecoderBlock2D",) * len(levels),
        "scaling_factor": VAE_SCALE,
    }


def vae_from_state_dict(state_dict: dict[str, torch.Tensor]) -> Any:
    """diffusers' AutoencoderKL holding the release's `first_stage_model.*` weights (diffusers' LDM conversion)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = {k.removeprefix(VAE_PREFIX): v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    if "post_quant_conv.weight" not in vae:
        raise CheckpointError("The checkpoint holds no LDM VAE (first_stage_model.post_quant_conv).")
    config = _vae_config(vae)
    model = AutoencoderKL(**config)
    model.load_state_dict(convert_ldm_vae_checkpoint(vae, config), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------
# `zoo run`


def run(name: str, args: Any) -> None:
    """`zoo run hummingbird-t2v-0.7b --prompt TEXT --out clip.mp4`: the release file of the registered source (or
    --checkpoint, a folder or file of the release), 4 LCM steps, guidance 7.5, 26 frames of 320 x 512 at 8 fps."""
    entry, tag = split_name(name)
    if not args.prompt:
        raise InputError(f"`zoo run {name}` needs --prompt TEXT.")
    if args.image or args.video:
        raise InputError(f"`zoo run {name}` is text-to-video: it takes no --image or --video.")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(args.dtype, "--dtype") if args.dtype else (torch.float16 if device.type == "cuda"
                                                                   else torch.float32)
    source = args.checkpoint or fetch_source(entry.source(tag))
    pipe = HummingbirdPipeline.from_release(source).to(device, dtype)
    out = pipe(
        args.prompt, num_inference_steps=args.steps or 4,
        guidance_scale=7.5 if args.guidance is None else args.guidance,
        height=args.height or 320, width=args.width or 512, num_frames=args.frames or 26, generator=args.seed,
    )  # fmt: skip
    print(export_video(out.frames[0], args.out or "video.mp4", fps=out.fps))
