"""Wan 2.1 / 2.2 text-to-video and image-to-video: the sampling loop around zoo's Wan DiT.

The other components come from diffusers and transformers: the VAE (`AutoencoderKLWan`), the umT5
text encoder and its tokenizer, the CLIP image encoder of Wan2.1 I2V, and the flow-matching scheduler
(`UniPCMultistepScheduler` with flow sigmas, or `FlowMatchEulerDiscreteScheduler`).

    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", dtype=torch.bfloat16).to("cuda")
    out = pipe("A cat walks on the grass, realistic", generator=0)
    export_video(out.frames[0], "cat.mp4", fps=out.fps)

Image-to-video takes `image=` (a PIL image): Wan2.1 I2V and Wan2.2 I2V-A14B concatenate the VAE latent
of the first frame (and a mask) to the noise; Wan2.2 TI2V-5B replaces the first latent frame and gives its
tokens t = 0. Wan2.2 A14B runs the high-noise expert (`transformer`) until t < boundary_ratio * 1000 and
the low-noise expert (`transformer_2`) after, each with its own guidance scale.

Memory: `from_pretrained(..., dtype=torch.bfloat16)` puts the DiT and the text encoder in bf16 (the VAE
and CLIP stay float32); `pipe.to("cuda", text_encoder_device="cpu")` keeps the 5.7B umT5 on the CPU
(Wan's --t5_cpu); `pipe.vae.enable_tiling()` and `pipe.vae.enable_slicing()` bound the VAE's memory.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from pathlib import Path
from typing import Any

import torch
from einops import repeat
from tqdm.auto import tqdm

from zoo import hub
from zoo.dtypes import parse_dtype
from zoo.errors import ConfigError, InputError, ZooError
from zoo.factory import create, from_pretrained
from zoo.registry import ModelEntry, get_entry, list_models, split_name

from .export import export_video
from .wan import WanTransformer

# The original release's default negative prompt (sample_neg_prompt), used when none is given.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline")
TEXT_ENCODERS = ("UMT5EncoderModel", "T5EncoderModel")


@dataclasses.dataclass(frozen=True)
class WanSampling:
    """Sampling settings a pipeline call falls back on. The defaults are diffusers' `WanPipeline`'s.

    guidance_low_noise: the low-noise expert's guidance scale (Wan2.2 A14B); None: `guidance`.
    shift: the flow-matching shift set on the scheduler; None: the scheduler's own.
    boundary: Wan2.2 A14B's switch to the low-noise expert, as a fraction of the 1000 training steps.
    """

    steps: int = 50
    guidance: float = 5.0
    guidance_low_noise: float | None = None
    shift: float | None = None
    height: int = 480
    width: int = 832
    frames: int = 81
    fps: int = 16
    negative_prompt: str = ""
    boundary: float | None = None


_PUBLISHED = dict(negative_prompt=DEFAULT_NEGATIVE_PROMPT)
# The original release's settings (its configs and generate.py) for each registered model.
PUBLISHED_SAMPLING = {
    "wan2.1-t2v-1.3b": WanSampling(steps=50, guidance=5.0, shift=5.0, **_PUBLISHED),
    "wan2.1-t2v-14b": WanSampling(steps=50, guidance=5.0, shift=5.0, height=720, width=1280, **_PUBLISHED),
    "wan2.1-i2v-14b-480p": WanSampling(steps=40, guidance=5.0, shift=3.0, **_PUBLISHED),
    "wan2.1-i2v-14b-720p": WanSampling(steps=40, guidance=5.0, shift=5.0, height=720, width=1280, **_PUBLISHED),
    "wan2.2-ti2v-5b": WanSampling(
        steps=50, guidance=5.0, shift=5.0, height=704, width=1280, frames=121, fps=24, **_PUBLISHED
    ),
    "wan2.2-t2v-a14b": WanSampling(
        steps=40, guidance=4.0, guidance_low_noise=3.0, shift=12.0, height=720, width=1280, boundary=0.875,
        **_PUBLISHED,
    ),
    "wan2.2-i2v-a14b": WanSampling(
        steps=40, guidance=3.5, guidance_low_noise=3.5, shift=5.0, height=720, width=1280, boundary=0.9,
        **_PUBLISHED,
    ),
}  # fmt: skip


@dataclasses.dataclass
class WanVideoOutput:
    """frames: (B, F, H, W, 3) in [0, 1] for output_type "np", (B, F, 3, H, W) for "pt", lists of PIL images
    for "pil", or the latents (B, C, F', H', W') for "latent". fps: the model's frame rate, for export."""

    frames: Any
    fps: int


def clean_prompt(text: str) -> str:
    """HTML entities unescaped (twice, as Wan does) and runs of whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class WanPipeline:
    """Text- and image-to-video sampling with a zoo `WanTransformer` (or a Wan2.2 A14B pair of experts).

    transformer: the denoiser (the high-noise expert when `transformer_2` is given).
    transformer_2, boundary_ratio: Wan2.2 A14B's low-noise expert and the switch point (t / 1000).
    image_encoder, image_processor: CLIP (transformers), for transformers with an image branch (Wan2.1 I2V).
    expand_timesteps: Wan2.2 TI2V: an image replaces the first latent frame, whose tokens get t = 0.
    defaults: the sampling settings used for arguments left as None.
    """

    def __init__(
        self,
        transformer: WanTransformer,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        *,
        transformer_2: WanTransformer | None = None,
        boundary_ratio: float | None = None,
        image_encoder: Any = None,
        image_processor: Any = None,
        expand_timesteps: bool = False,
        defaults: WanSampling = WanSampling(),
    ):
        from diffusers.video_processor import VideoProcessor

        if (transformer_2 is None) != (boundary_ratio is None):
            raise ConfigError("A Wan2.2 A14B pipeline needs transformer_2 (the low-noise expert) and boundary_ratio.")
        if transformer.config.image_dim is not None and (image_encoder is None or image_processor is None):
            raise ConfigError("This Wan transformer has a CLIP image branch: pass image_encoder and image_processor.")
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary_ratio = boundary_ratio
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.expand_timesteps = expand_timesteps
        self.defaults = defaults
        self.video_processor = VideoProcessor(vae_scale_factor=vae.config.scale_factor_spatial)

    # ------------------------------------------------------------------------------------------------
    # Loading and placement

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_dir: str | Path,
        *,
        revision: str | None = None,
        dtype: torch.dtype | None = None,
        transformer: WanTransformer | None = None,
        transformer_2: WanTransformer | None = None,
        defaults: WanSampling | None = None,
    ) -> WanPipeline:
        """Load a diffusers-layout Wan pipeline (model_index.json and component folders) from the Hub or a folder.

        The denoiser(s) load into zoo's `WanTransformer`; pass `transformer` / `transformer_2` to use models
        loaded otherwise (e.g. from the original release) and skip those folders. `dtype` applies to the
        denoisers and the text encoder. `defaults`: the sampling settings; for a registered model's repo,
        its published ones.
        """
        import diffusers
        import transformers
        from diffusers import AutoencoderKLWan

        local = Path(repo_id_or_dir).expanduser()
        folder = local if local.is_dir() else hub.download(str(repo_id_or_dir), revision=revision,
                                                          allow_patterns=["model_index.json"])
        index = hub.folder_config(folder, ("model_index.json",))[0]
        if index.get("_class_name") not in PIPELINE_CLASSES:
            raise ConfigError(
                f"{repo_id_or_dir} holds a {index.get('_class_name')}, not a {' or '.join(PIPELINE_CLASSES)}."
            )
        sampling = defaults or published_sampling(str(repo_id_or_dir))
        given = {"transformer": transformer, "transformer_2": transformer_2}
        components = [name for name in _listed_components(index) if given.get(name) is None]
        if not local.is_dir():
            patterns = [f"{name}/*.{ext}" for name in components for ext in ("json", "safetensors", "model", "txt")]
            folder = hub.download(str(repo_id_or_dir), revision=revision, allow_patterns=patterns)
        if "transformer" in components:
            transformer = from_pretrained(folder / "transformer", family="wan")
        if "transformer_2" in components:
            transformer_2 = from_pretrained(folder / "transformer_2", family="wan")

        text_encoder_class = index["text_encoder"][1]
        if text_encoder_class not in TEXT_ENCODERS:
            raise ConfigError(f"Wan text encoder {text_encoder_class} is not one of {', '.join(TEXT_ENCODERS)}.")
        image_encoder = image_processor = None
        if "image_encoder" in components:
            image_encoder = transformers.CLIPVisionModel.from_pretrained(folder / "image_encoder").float()
            image_processor = transformers.CLIPImageProcessor.from_pretrained(folder / "image_processor")
        pipe = cls(
            transformer,
            AutoencoderKLWan.from_pretrained(folder / "vae").float(),  # float32, as Wan recommends
            getattr(transformers, text_encoder_class).from_pretrained(folder / "text_encoder"),
            transformers.AutoTokenizer.from_pretrained(folder / "tokenizer"),
            _load_scheduler(diffusers, folder / "scheduler"),
            transformer_2=transformer_2,
            boundary_ratio=index.get("boundary_ratio", sampling.boundary) if transformer_2 is not None else None,
            image_encoder=image_encoder,
            image_processor=image_processor,
            expand_timesteps=index.get("expand_timesteps", False),
            defaults=sampling,
        )
        return pipe.to(dtype=dtype)

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        text_encoder_device: torch.device | str | None = None,
    ) -> WanPipeline:
        """Move the models to `device`; `dtype` casts the denoisers and the text encoder (the VAE and CLIP
        keep theirs). `text_encoder_device` keeps the text encoder elsewhere (e.g. "cpu" to save GPU memory)."""
        for model in (self.transformer, self.transformer_2):
            if model is not None:
                model.to(device=device, dtype=dtype)
        self.text_encoder.to(device=text_encoder_device or device, dtype=dtype)
        for model in (self.vae, self.image_encoder):
            if model is not None:
                model.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # ------------------------------------------------------------------------------------------------
    # Conditioning

    def encode_prompt(self, prompts: list[str], max_sequence_length: int = 512) -> torch.Tensor:
        """umT5 features (B, max_sequence_length, text_dim), zeroed after each prompt's last token (no mask:
        Wan attends to the zero rows too)."""
        inputs = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", max_length=max_sequence_length,
            truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        device = next(self.text_encoder.parameters()).device
        mask = inputs.attention_mask.to(device)
        features = self.text_encoder(inputs.input_ids.to(device), mask).last_hidden_state
        features = features.masked_fill(~mask.bool()[..., None], 0.0)
        return features.to(self.device, self.dtype)

    def encode_image(self, image: Any) -> torch.Tensor:
        """CLIP features (1, 257, image_dim) of the image: the penultimate layer's hidden states."""
        pixels = self.image_processor(images=image, return_tensors="pt").pixel_values
        pixels = pixels.to(self.image_encoder.device, self.image_encoder.dtype)
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2].to(self.device, self.dtype)

    def _latent_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1).to(self.device)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1).to(self.device)
        return mean, std

    def _encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised latent (the VAE posterior's mode) of a video (B, 3, F, H, W) in [-1, 1]."""
        vae_device = next(self.vae.parameters()).device
        latent = self.vae.encode(video.to(vae_device, self.vae.dtype)).latent_dist.mode().to(self.device, torch.float32)
        mean, std = self._latent_statistics()
        return (latent - mean) / std

    def _first_frame_condition(self, image: Any, num_frames: int, height: int, width: int) -> torch.Tensor:
        """Wan2.1 I2V / Wan2.2 I2V-A14B: (1, 4 + z, F', H', W'): a mask marking the given first frame (one
        channel per frame of a VAE step) and the latent of [image, black frames]."""
        frame = self.video_processor.preprocess(image, height=height, width=width).to(self.device, torch.float32)
        video = torch.cat([frame[:, :, None], frame.new_zeros(1, 3, num_frames - 1, height, width)], dim=2)
        latent = self._encode_video(video)
        stride = self.vae.config.scale_factor_temporal
        given = torch.zeros(num_frames + stride - 1, device=self.device)
        given[:stride] = 1  # the first frame fills a whole latent frame, as if repeated `stride` times
        mask = repeat(given, "(f t) -> 1 t f h w", t=stride, h=latent.shape[-2], w=latent.shape[-1])
        return torch.cat([mask, latent], dim=1)

    # ------------------------------------------------------------------------------------------------
    # Sampling

    def _check_inputs(self, image: Any, height: int, width: int, num_frames: int) -> None:
        temporal, spatial = self.vae.config.scale_factor_temporal, self.vae.config.scale_factor_spatial
        multiple = spatial * self.transformer.config.patch_size[1]
        if height % multiple or width % multiple:
            raise InputError(
                f"height and width must be multiples of {multiple} (the VAE's {spatial}x times the patch), "
                f"got {height} x {width}."
            )
        if num_frames < 1 or (num_frames - 1) % temporal:
            raise InputError(
                f"num_frames must be {temporal}k + 1 (e.g. 81 or 121) for the VAE's {temporal}x temporal "
                f"compression, got {num_frames}."
            )
        if self._concat_condition and image is None:
            raise InputError("This is an image-to-video Wan model: pass the first frame as image= (zoo run: --image).")
        if image is not None and not (self._concat_condition or self.expand_timesteps):
            raise InputError("This is a text-to-video Wan model; it takes no image (use an I2V or TI2V model).")

    @property
    def _concat_condition(self) -> bool:
        """Whether the denoiser takes the first-frame condition (mask + latent) concatenated to the noise."""
        return self.transformer.config.in_channels == 2 * self.vae.config.z_dim + 4

    def _scheduler(self, shift: float | None) -> Any:
        """A fresh scheduler (they keep per-run state), with `shift` set if given."""
        config = dict(self.scheduler.config)
        if shift is not None:
            config["flow_shift" if "flow_shift" in config else "shift"] = shift
        return type(self.scheduler).from_config(config)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        image: Any = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        shift: float | None = None,
        generator: torch.Generator | int | None = None,
        latents: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        output_type: str = "np",
        show_progress: bool = True,
    ) -> WanVideoOutput:
        """Generate videos for `prompt` (one per prompt), from `image` as first frame for image-to-video.

        None arguments take `self.defaults`. guidance_scale > 1 turns classifier-free guidance on
        (guidance_scale_2: the low-noise expert's). generator: a torch.Generator or an int seed; the noise
        is drawn on the generator's device (the CPU for a seed), so a seed gives the same video anywhere.
        output_type: "np", "pt", "pil" or "latent" (see `WanVideoOutput`).
        """
        d = self.defaults
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative_prompt = d.negative_prompt if negative_prompt is None else negative_prompt
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise InputError(f"Got {len(prompts)} prompts but {len(negatives)} negative prompts.")
        height, width, num_frames = height or d.height, width or d.width, num_frames or d.frames
        steps = num_inference_steps or d.steps
        guidance = d.guidance if guidance_scale is None else guidance_scale
        guidance_2 = guidance_scale_2 if guidance_scale_2 is not None else d.guidance_low_noise or guidance
        if output_type not in ("np", "pt", "pil", "latent"):
            raise InputError(f"output_type must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}.")
        self._check_inputs(image, height, width, num_frames)
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)

        context = self.encode_prompt(prompts, max_sequence_length)
        negative_context = self.encode_prompt(negatives, max_sequence_length) if max(guidance, guidance_2) > 1 else None
        context_image = None
        if self.transformer.config.image_dim is not None:
            context_image = self.encode_image(image).expand(len(prompts), -1, -1)

        temporal, spatial = self.vae.config.scale_factor_temporal, self.vae.config.scale_factor_spatial
        latent_frames = (num_frames - 1) // temporal + 1
        shape = (len(prompts), self.vae.config.z_dim, latent_frames, height // spatial, width // spatial)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device=generator.device if generator else self.device)
        latents = latents.to(self.device, torch.float32)
        condition = noise_mask = None  # noise_mask: Wan2.2 TI2V's 1 where latents are generated, 0 on the given frame
        if image is not None and self._concat_condition:
            condition = self._first_frame_condition(image, num_frames, height, width)
            condition = condition.expand(len(prompts), -1, -1, -1, -1)
        elif image is not None:
            frame = self.video_processor.preprocess(image, height=height, width=width)
            condition = self._encode_video(frame[:, :, None])
            noise_mask = torch.ones_like(latents[:1, :1])
            noise_mask[:, :, 0] = 0

        scheduler = self._scheduler(shift if shift is not None else d.shift)
        scheduler.set_timesteps(steps, device=self.device)
        boundary = None if self.boundary_ratio is None else self.boundary_ratio * scheduler.config.num_train_timesteps
        for t in tqdm(scheduler.timesteps, desc="Denoising", disable=not show_progress):
            high_noise = boundary is None or t >= boundary
            model, scale = (self.transformer, guidance) if high_noise else (self.transformer_2, guidance_2)
            if noise_mask is not None:
                model_input = noise_mask * latents + (1 - noise_mask) * condition
                pt, ph, pw = model.config.patch_size
                timestep = (noise_mask[0, 0, ::pt, ::ph, ::pw] * t).flatten().expand(len(prompts), -1)
            else:
                model_input = latents if condition is None else torch.cat([latents, condition], dim=1)
                timestep = t.expand(len(prompts))
            model_input = model_input.to(self.dtype)
            prediction = model(model_input, timestep, context, context_image).float()
            if scale > 1:
                unconditional = model(model_input, timestep, negative_context, context_image).float()
                prediction = unconditional + scale * (prediction - unconditional)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        if noise_mask is not None:
            latents = noise_mask * latents + (1 - noise_mask) * condition

        if output_type == "latent":
            return WanVideoOutput(latents, d.fps)
        return WanVideoOutput(self.decode(latents, output_type), d.fps)

    def decode(self, latents: torch.Tensor, output_type: str = "np") -> Any:
        """Normalised latents (B, z, F', H', W') -> frames (see `WanVideoOutput`)."""
        mean, std = self._latent_statistics()
        latents = latents * std + mean
        vae_device = next(self.vae.parameters()).device
        video = self.vae.decode(latents.to(vae_device, self.vae.dtype), return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type=output_type)


def _listed_components(index: dict[str, Any]) -> list[str]:
    """The components a model_index.json lists ({name: [library, class]}) and does not leave empty."""
    return [name for name, value in index.items() if isinstance(value, list) and len(value) == 2 and value[0]]


def _load_scheduler(diffusers: Any, folder: Path) -> Any:
    config = hub.folder_config(folder, ("scheduler_config.json",))[0]
    scheduler_class = getattr(diffusers, str(config.get("_class_name")), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise ConfigError(f"{folder} names no diffusers scheduler (_class_name: {config.get('_class_name')}).")
    return scheduler_class.from_config(config)


def published_sampling(repo_id: str) -> WanSampling:
    """The published sampling settings of the registered model whose diffusers repo is `repo_id`, or the defaults."""
    for name in list_models("wan*"):
        entry = get_entry(name)
        if name in PUBLISHED_SAMPLING and any(s.hub_id == repo_id for s in entry.sources):
            return PUBLISHED_SAMPLING[name]
    return WanSampling()


# ----------------------------------------------------------------------------------------------------
# `zoo run`


def run(name: str, args: Any) -> None:
    """`zoo run NAME --prompt TEXT [--image FIRST_FRAME] --out video.mp4`, with the model's published defaults.

    The pipeline comes from the model's diffusers repo (the denoiser from the tagged source when the tag is
    an original release), or from --checkpoint: a pipeline folder, or a denoiser folder whose other
    components come from the model's repo.
    """
    entry, tag = split_name(name)
    if not args.prompt:
        raise InputError(f"`zoo run {name}` needs --prompt TEXT.")
    if args.video or len(args.image) > 1:
        raise InputError(f"`zoo run {name}` takes at most one --image (the first frame) and no --video.")
    image = _read_image(args.image[0]) if args.image else None
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _run_dtype(args.dtype, device)
    defaults = PUBLISHED_SAMPLING.get(entry.name, WanSampling())
    pipe = _pipeline_for_run(entry, tag, args.checkpoint, dtype, defaults).to(device)

    height, width = args.height, args.width
    if image is not None and height is None and width is None:
        height, width = _size_for_image(image, defaults.height * defaults.width, pipe)
    out = pipe(
        args.prompt, args.negative_prompt, image, height=height, width=width, num_frames=args.frames,
        num_inference_steps=args.steps, guidance_scale=args.guidance, generator=args.seed,
    )  # fmt: skip
    print(export_video(out.frames[0], args.out or "video.mp4", fps=out.fps))


def _pipeline_for_run(
    entry: ModelEntry, tag: str | None, checkpoint: str | None, dtype: torch.dtype, defaults: WanSampling
) -> WanPipeline:
    repos = [s.hub_id for s in entry.sources if s.format == "diffusers"]
    if checkpoint is not None and (Path(checkpoint) / "model_index.json").is_file():
        return WanPipeline.from_pretrained(checkpoint, dtype=dtype, defaults=defaults)
    if not repos:
        raise ZooError(
            f"'{entry.name}' has no published pipeline: pass --checkpoint with a diffusers-layout Wan pipeline "
            f"folder (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/)."
        )
    experts = {"transformer": None, "transformer_2": None}
    if checkpoint is not None:
        experts["transformer"] = from_pretrained(checkpoint, family="wan")
    elif tag is not None and entry.source(tag).format != "diffusers":
        fmt = entry.source(tag).format
        experts["transformer"] = create(f"{entry.name}.{fmt}", pretrained=True)
        if f"{fmt}-low" in entry.tags:
            experts["transformer_2"] = create(f"{entry.name}.{fmt}-low", pretrained=True)
    return WanPipeline.from_pretrained(repos[0], dtype=dtype, defaults=defaults, **experts)


def _read_image(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(f"Cannot read the image {path}: {error}") from error


def _run_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """--dtype, or bfloat16 on CUDA and float32 elsewhere."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(name, "--dtype")


def _size_for_image(image: Any, area: int, pipe: WanPipeline) -> tuple[int, int]:
    """The image's aspect ratio in at most `area` pixels, rounded down to allowed sizes (as Wan's I2V does)."""
    multiple = pipe.vae.config.scale_factor_spatial * pipe.transformer.config.patch_size[1]
    aspect = image.height / image.width
    height = max(multiple, int(math.sqrt(area * aspect) // multiple) * multiple)
    width = max(multiple, int(math.sqrt(area / aspect) // multiple) * multiple)
    return height, width
