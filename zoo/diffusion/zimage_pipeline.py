"""Z-Image text-to-image: Qwen3 text encoder -> S3-DiT with flow-matching Euler steps -> FLUX VAE -> PIL images.

    from zoo.diffusion.zimage_pipeline import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained("z-image-turbo")  # or a Hub repo id, or a local folder
    image = pipe("a red fox in the snow", generator=torch.Generator().manual_seed(0)).images[0]

Only the denoiser is zoo's (`zoo.diffusion.zimage`); the text encoder and tokenizer come from transformers, the VAE
and the scheduler from diffusers, loaded from the diffusers repo layout (model_index.json, one folder each).
Sampling follows the published pipeline: prompts in Qwen3's chat template with thinking enabled, the features of
the penultimate hidden layer for the prompt's tokens (at most 512), sigmas linspace(1, 1/N, N) shifted by the
scheduler, the model's velocity negated for the Euler step (its time runs the other way), and guidance
pos + s * (pos - neg) when s > 0.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from zoo.dtypes import parse_dtype
from zoo.errors import CheckpointError, ConfigError, ZooError

if TYPE_CHECKING:
    from PIL import Image

    from zoo.diffusion.zimage import ZImageTransformer

TEXT_HIDDEN_LAYER = -2
MAX_SEQUENCE_LENGTH = 512
PIPELINE_FILES = (
    "model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/*.json", "text_encoder/*.safetensors",
    "transformer/*.json", "transformer/*.safetensors", "vae/*.json", "vae/*.safetensors",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ZImageSampling:
    """A published sampling recipe: denoising steps and guidance scale (0 turns guidance off)."""

    num_inference_steps: int
    guidance_scale: float


TURBO_SAMPLING = ZImageSampling(num_inference_steps=8, guidance_scale=0.0)
BASE_SAMPLING = ZImageSampling(num_inference_steps=50, guidance_scale=4.0)
PUBLISHED_SAMPLING = {"Tongyi-MAI/Z-Image-Turbo": TURBO_SAMPLING, "Tongyi-MAI/Z-Image": BASE_SAMPLING}


@dataclasses.dataclass
class ZImagePipelineOutput:
    """PIL images, a (B, 3, H, W) tensor in [0, 1] (output_type "pt") or the final latents ("latent")."""

    images: list[Image.Image] | torch.Tensor


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on accelerators (float16 on GPUs without it: V100, T4). float32 on CPUs, where bfloat16 matrix
    products are emulated unless the CPU has AVX512-BF16 or AMX (pass dtype="bfloat16" on those)."""
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The resolution-dependent shift mu, linear in the number of image tokens (used by schedulers with dynamic
    shifting; the published schedulers shift statically)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


class ZImagePipeline:
    """Text-to-image with a Z-Image denoiser, its Qwen3 text encoder and tokenizer, the FLUX VAE and a
    `FlowMatchEulerDiscreteScheduler`.

    `sampling` gives the steps and guidance used when a call does not say (the published recipe of the model).
    The VAE stays in float32, as in the official code; `to(dtype=...)` casts the denoiser and the text encoder.
    """

    def __init__(
        self,
        transformer: ZImageTransformer,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        sampling: ZImageSampling = BASE_SAMPLING,
    ):
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.sampling = sampling
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.progress_bar_config: dict[str, Any] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        sampling: ZImageSampling | None = None,
    ) -> ZImagePipeline:
        """Load a pipeline from a registered name ("z-image-turbo"), a Hub repo id or a local folder in the
        diffusers layout (model_index.json with transformer/, text_encoder/, tokenizer/, vae/, scheduler/).

        Hub repos download through huggingface_hub (cache, HF_HUB_OFFLINE, HF_ENDPOINT). `device` defaults to CUDA
        when available, `dtype` to `default_dtype(device)`. `sampling` defaults to the published recipe of a
        registered name or Hub repo, and to the base model's (50 steps, guidance 4) for other folders.
        """
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
        from transformers import AutoModel, AutoTokenizer

        from zoo import hub
        from zoo.factory import from_pretrained
        from zoo.registry import split_name

        folder, hub_id = Path(name_or_path).expanduser(), None
        if not folder.is_dir():
            hub_id = str(name_or_path)
            if "/" not in hub_id:
                entry, tag = split_name(hub_id)
                source = entry.source(tag)
                hub_id, revision = source.hub_id, revision or source.revision
            folder = hub.download(hub_id, revision=revision, allow_patterns=PIPELINE_FILES)
        _check_layout(folder)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = default_dtype(device) if dtype is None else parse_dtype(dtype)

        pipeline = cls(
            transformer=from_pretrained(folder / "transformer", family="zimage", dtype=dtype),
            vae=AutoencoderKL.from_pretrained(folder / "vae"),
            text_encoder=AutoModel.from_pretrained(folder / "text_encoder", dtype=dtype),
            tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
            sampling=sampling or PUBLISHED_SAMPLING.get(hub_id, BASE_SAMPLING),
        )
        return pipeline.to(device, dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> ZImagePipeline:
        """Move every model to `device`; cast the denoiser and the text encoder to `dtype` (not the VAE)."""
        dtype = None if dtype is None else parse_dtype(dtype)
        self.transformer.to(device=device, dtype=dtype)
        self.text_encoder.to(device=device, dtype=dtype)
        self.vae.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the tqdm bar of the denoising steps, e.g. disable=True."""
        self.progress_bar_config = kwargs

    def encode_prompt(
        self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
    ) -> list[torch.Tensor]:
        """The text features (L_i, caption_dim) of each prompt's tokens, L_i <= max_sequence_length.

        Prompts are padded on the right only to the longest one: the encoder is causal, so the features of a
        prompt's tokens are those of the published max_length padding, for less text-encoder work.
        """
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
            for prompt in prompts
        ]
        tokens = self.tokenizer(
            texts, padding="longest", padding_side="right", max_length=max_sequence_length, truncation=True,
            return_tensors="pt",
        ).to(self.text_encoder.device)  # fmt: skip
        mask = tokens.attention_mask.bool()
        hidden = self.text_encoder(input_ids=tokens.input_ids, attention_mask=mask, output_hidden_states=True)
        features = hidden.hidden_states[TEXT_HIDDEN_LAYER].to(self.dtype)
        return [item[valid] for item, valid in zip(features, mask, strict=True)]

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Float32 Gaussian noise (B, C, H / 8, W / 8), drawn on the generator's device then moved (as diffusers)."""
        shape = self._latent_shape(batch_size, height, width)
        if isinstance(generator, list):
            if len(generator) != batch_size:
                raise ConfigError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
            noise = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
            return torch.cat(noise).to(self.device)
        noise_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=noise_device).to(self.device)

    def _latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, int, int, int]:
        channels, factor = self.transformer.config.in_channels, self.vae_scale_factor
        return batch_size, channels, height // factor, width // factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, 8h, 8w) in [0, 1], through the VAE in float32."""
        config = self.vae.config
        latents = latents.to(self.vae.dtype) / config.scaling_factor + config.shift_factor
        images = self.vae.decode(latents, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        cfg_normalization: float = 0.0,
        cfg_truncation: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        output_type: str = "pil",
    ) -> ZImagePipelineOutput:
        """Generate num_images_per_prompt images for each prompt.

        num_inference_steps, guidance_scale: default to `self.sampling` (Turbo: 8 steps, no guidance; base: 50
            steps, guidance 4). With guidance_scale > 0 each step also runs the negative prompts ("" by default).
        cfg_normalization: when > 0, the guided prediction's norm is capped at this multiple of the positive one's
            (the base model's "realism" option; True counts as 1).
        cfg_truncation: guidance is turned off for the steps whose t = 1 - sigma exceeds it.
        height, width: multiples of 16 (the VAE's 8x times the 2x2 patches); any aspect ratio.
        generator: one torch.Generator, or one per image, for the initial noise. latents: that noise, given.
        output_type: "pil", "pt" (B, 3, H, W) in [0, 1], or "latent".
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        steps = self.sampling.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = self.sampling.guidance_scale if guidance_scale is None else guidance_scale
        negatives = self._check_call(prompts, negative_prompt, height, width, steps, guidance, output_type)
        batch_size = len(prompts) * num_images_per_prompt

        repeats = range(num_images_per_prompt)
        positive = [f for f in self.encode_prompt(prompts, max_sequence_length) for _ in repeats]
        negative = []
        if guidance > 0:
            negative = [f for f in self.encode_prompt(negatives, max_sequence_length) for _ in repeats]
        if latents is None:
            latents = self.prepare_latents(batch_size, height, width, generator)
        elif latents.shape != self._latent_shape(batch_size, height, width):
            expected = self._latent_shape(batch_size, height, width)
            raise ConfigError(f"latents must have shape {expected} for these images, got {tuple(latents.shape)}")
        latents = latents.to(self.device, torch.float32)

        timesteps = self._timesteps(steps, latents)
        step_times = ((1000 - timesteps.float()) / 1000).tolist()  # the model's time t = 1 - sigma
        for timestep, t in zip(tqdm(timesteps, **self.progress_bar_config), step_times, strict=True):
            step_guidance = guidance if t <= cfg_truncation else 0.0
            t_batch = (1000 - timestep.expand(batch_size)) / 1000
            velocity = self._velocity(latents, t_batch, positive, negative, step_guidance, cfg_normalization)
            latents = self.scheduler.step(-velocity, timestep, latents, return_dict=False)[0]

        if output_type == "latent":
            return ZImagePipelineOutput(images=latents)
        images = self.decode(latents)
        return ZImagePipelineOutput(images=images if output_type == "pt" else _to_pil(images))

    def _timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        """Set the scheduler to sigmas linspace(1, 1/steps, steps), shifted by it, and return its timesteps."""
        config, patch = self.scheduler.config, self.transformer.config.patch_size
        mu = calculate_shift(
            (latents.shape[2] // patch) * (latents.shape[3] // patch),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = torch.linspace(1.0, 1 / steps, steps).tolist()
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        self.scheduler.set_begin_index(0)
        return self.scheduler.timesteps

    def _velocity(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        positive: list[torch.Tensor],
        negative: list[torch.Tensor],
        guidance: float,
        cfg_normalization: float,
    ) -> torch.Tensor:
        """The denoiser's float32 prediction (B, C, h, w), guided when guidance > 0 (one batch for both prompts)."""
        x = latents.to(self.dtype).unsqueeze(2)  # frames axis
        if guidance > 0:
            x, t, captions = torch.cat((x, x)), torch.cat((t, t)), positive + negative
        else:
            captions = positive
        prediction = torch.stack(self.transformer(list(x), t, captions)).float().squeeze(2)
        if guidance <= 0:
            return prediction
        pos, neg = prediction.chunk(2)
        guided = pos + guidance * (pos - neg)
        if cfg_normalization > 0:
            dims = tuple(range(1, guided.ndim))
            max_norm = torch.linalg.vector_norm(pos, dim=dims, keepdim=True) * float(cfg_normalization)
            norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
            guided = torch.where(norm > max_norm, guided * (max_norm / norm), guided)
        return guided

    def _check_call(
        self,
        prompts: list[str],
        negative_prompt: str | Sequence[str] | None,
        height: int,
        width: int,
        steps: int,
        guidance: float,
        output_type: str,
    ) -> list[str]:
        """Validate a call's arguments; returns one negative prompt per prompt."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"prompt must be a string or a non-empty list of strings, got {prompts!r}")
        multiple = self.vae_scale_factor * self.transformer.config.patch_size
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ConfigError(
                f"height and width must be positive multiples of {multiple} (the VAE's {self.vae_scale_factor}x "
                f"downsampling times the {self.transformer.config.patch_size}x{self.transformer.config.patch_size} "
                f"patches), got {height}x{width}"
            )
        if steps < 1:
            raise ConfigError(f"num_inference_steps must be at least 1, got {steps}")
        if guidance < 0:
            raise ConfigError(f"guidance_scale must be >= 0 (0 turns guidance off), got {guidance}")
        if output_type not in ("pil", "pt", "latent"):
            raise ConfigError(f"output_type must be 'pil', 'pt' or 'latent', got {output_type!r}")
        if negative_prompt is None or isinstance(negative_prompt, str):
            return [negative_prompt or ""] * len(prompts)
        if len(negative_prompt) != len(prompts):
            raise ConfigError(f"got {len(negative_prompt)} negative prompts for {len(prompts)} prompts")
        return list(negative_prompt)


def _check_layout(folder: Path) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        raise CheckpointError(f"{folder} has no model_index.json; a Z-Image pipeline folder has the diffusers layout.")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name != "ZImagePipeline":
        raise CheckpointError(f"{folder} holds a {class_name}, not a ZImagePipeline.")


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    from PIL import Image

    pixels = (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(image) for image in pixels]


def run(name: str, args: Any) -> None:
    """`zoo run z-image-turbo --prompt TEXT --out image.png`, with the model's published steps and guidance
    unless --steps / --guidance say otherwise; --checkpoint loads a local pipeline folder instead of the Hub repo."""
    from zoo.registry import split_name

    if args.image or args.video or args.frames:
        raise ZooError(f"{name} generates images from text; --image, --video and --frames do not apply.")
    if not args.prompt:
        raise ZooError(f"{name} needs a prompt: zoo run {name} --prompt TEXT --out image.png")
    entry, tag = split_name(name)
    source = entry.source(tag) if entry.sources or args.checkpoint is None else None
    pipeline = ZImagePipeline.from_pretrained(
        args.checkpoint or source.hub_id,
        revision=None if args.checkpoint else source.revision,
        dtype=args.dtype,
        device=args.device,
        sampling=PUBLISHED_SAMPLING.get(source.hub_id) if source else None,
    )
    generator = torch.Generator().manual_seed(args.seed)
    image = pipeline(
        args.prompt,
        negative_prompt=args.negative_prompt,
        height=args.height or 1024,
        width=args.width or 1024,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=generator,
    ).images[0]
    out = Path(args.out or "image.png")
    image.save(out)
    print(f"Wrote {image.width}x{image.height} image to {out}")
