"""SmolVLM / SmolVLM2 processor: image tiling, video frame sampling, prompt expansion and the chat template.

It reproduces transformers' `SmolVLMProcessor` / `Idefics3Processor` (pixel values within 1e-5, identical input ids)
with its default torchvision backend, and its PIL backend with `backend="pil"`.

Images. The longest edge is resized to `longest_edge` (2048 for the 256M/500M models, 1536 for the 2.2B), upsampling
too, then up to the next multiple of `max_image_size` M (512 or 384) on each side, and cut into row-major M x M tiles
followed by the whole image squashed to M x M (the global view). A square image gives 4 x 4 + 1 = 17 tiles, i.e.
17 * `image_seq_len` image tokens (1088 for the 256M). For speed, lower the cost per image with

    SmolVLMProcessor.from_pretrained(repo, longest_edge=1024)          # at most 2 x 2 + 1 = 5 tiles (512-px tiles)
    SmolVLMProcessor.from_pretrained(repo, do_image_splitting=False)  # 1 tile: the image squashed to M x M

Videos (SmolVLM2). `round(fps * duration)` frames (at most `video_max_frames`) are taken uniformly, skipping the
first and last second of long videos; each frame becomes one M x M tile, introduced by its "MM:SS" timestamp.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from num2words import num2words
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as tvF
from transformers import BatchFeature

from zoo.errors import InputError

MAX_IMAGE_SIDE = 4096
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
_PLACEHOLDER = re.compile(f"{re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)}")

# SmolVLM2's conversation format. transformers renders every conversation holding a video with it, because the
# templates shipped with the checkpoints know no `video` blocks; it renders image/text conversations like them.
DEFAULT_CHAT_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}"
    "{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    "{% for block in message['content'] %}"
    "{% if block['type'] == 'text' %}{{ block['text'] }}"
    "{% elif block['type'] in ('image', 'video') %}<{{ block['type'] }}>"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# The chat template shipped with the SmolVLM checkpoints (their chat_template.json).
CHECKPOINT_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == "
    "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

ImageInput = Image.Image | str | Path | np.ndarray | Tensor
VideoInput = str | Path | np.ndarray | Tensor | Sequence[Image.Image]


def build_byte_tokenizer(add_bos: bool = False) -> Any:
    """A SmolVLM tokenizer built procedurally, with nothing to download: one token per byte, no merges.

    Ids 0-2 are `<|endoftext|>` (unk), `<|im_start|>` (bos) and `<|im_end|>` (pad), 3-258 the 256 byte-level
    symbols, then SmolVLM's special tokens: `<end_of_utterance>` (259, eos), `<global-img>` (260), the 36
    `<row_r_col_c>` tile tokens (261-296), `<fake_token_around_image>` (297), `<image>` (298) and `<video>` (299):
    300 tokens, which fit `smolvlm-tiny`'s vocabulary of 320 (its image_token_id is 298). The chat template is the
    checkpoints' (`CHECKPOINT_CHAT_TEMPLATE`). With `add_bos=True` every encoded text starts with `<|im_start|>`.
    It is a transformers `PreTrainedTokenizerFast`: it saves and reloads with `save_pretrained` /
    `AutoTokenizer.from_pretrained`. Tests and `zoo quickstart` use it; real checkpoints ship their own tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    for character in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[character] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if add_bos:
        bos = [("<|im_start|>", vocab["<|im_start|>"])]
        backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=bos)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    grid = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    specials = [GLOBAL_IMAGE_TOKEN, *grid, FAKE_IMAGE_TOKEN, IMAGE_TOKEN, "<end_of_utterance>", VIDEO_TOKEN]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = CHECKPOINT_CHAT_TEMPLATE
    return tokenizer


def _fit_longest_edge(height: int, width: int, longest_edge: int, even: bool = False) -> tuple[int, int]:
    """(height, width) with the longest side set to `longest_edge`, keeping the aspect ratio (optionally even)."""
    aspect_ratio = width / height
    if width >= height:
        width, height = longest_edge, int(longest_edge / aspect_ratio)
        height += even and height % 2
    else:
        height, width = longest_edge, int(longest_edge * aspect_ratio)
        width += even and width % 2
    return max(height, 1), max(width, 1)


def resized_image_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """Size of an image after the first resize: longest edge at `longest_edge` (up or down), the short side even,
    then scaled down to fit in 4096 x 4096."""
    height, width = _fit_longest_edge(height, width, longest_edge, even=True)
    if max(height, width) > MAX_IMAGE_SIDE:
        height, width = _fit_longest_edge(height, width, MAX_IMAGE_SIDE)
    return height, width


def tiled_image_size(height: int, width: int, tile_size: int) -> tuple[int, int]:
    """Size of a resized image once stretched to whole tiles: the long side rounds up to a multiple of
    `tile_size`, the short side follows the aspect ratio and rounds up too."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile_size) * tile_size
        height = math.ceil(int(width / aspect_ratio) / tile_size) * tile_size
    else:
        height = math.ceil(height / tile_size) * tile_size
        width = math.ceil(int(height * aspect_ratio) / tile_size) * tile_size
    return height, width


def resize(images: Tensor, size: tuple[int, int], backend: str = "torchvision") -> Tensor:
    """LANCZOS resize of uint8 images (..., 3, H, W) to `size` = (height, width), antialiased, still uint8.

    "torchvision" uses its native uint8 kernel on CPU (transformers' default backend); "pil" uses PIL (transformers'
    `*ImageProcessorPil`). The two differ by at most 2 grey levels on about 1% of pixels.
    """
    height, width = size
    if images.shape[-2:] == (height, width):
        return images
    if backend == "torchvision":
        return tvF.resize(images.cpu(), [height, width], interpolation=tvF.InterpolationMode.LANCZOS, antialias=True)
    if backend == "pil":
        flat = images.reshape(-1, *images.shape[-3:]).permute(0, 2, 3, 1).cpu().numpy()
        resized = [np.asarray(Image.fromarray(hwc).resize((width, height), Image.Resampling.LANCZOS)) for hwc in flat]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).reshape(*images.shape[:-2], height, width)
    raise InputError(f"backend must be 'torchvision' or 'pil', got {backend!r}")


def split_into_tiles(image: Tensor, tile_size: int, backend: str = "torchvision") -> tuple[Tensor, int, int]:
    """(3, H, W) uint8 with H, W multiples of `tile_size` -> (tiles, rows, cols).

    tiles is (rows * cols + 1, 3, tile_size, tile_size): the row-major crops, then the whole image resized to one
    tile. An image that already fits in one tile is returned as the only tile, with rows = cols = 0.
    """
    _, height, width = image.shape
    if height <= tile_size and width <= tile_size:
        return image[None], 0, 0
    rows, cols = height // tile_size, width // tile_size
    crops = image.reshape(3, rows, tile_size, cols, tile_size).permute(1, 3, 0, 2, 4)
    crops = crops.reshape(rows * cols, 3, tile_size, tile_size)
    global_view = resize(image, (tile_size, tile_size), backend)
    return torch.cat([crops, global_view[None]]), rows, cols


def image_prompt(rows: int, cols: int, image_seq_len: int) -> str:
    """The text that stands for one image: per tile `<fake_token_around_image><row_r_col_c>` and `image_seq_len`
    `<image>` tokens, a newline after each row, then the global view; an untiled image or a video frame
    (rows = cols = 0) is the global view alone."""
    image_tokens = IMAGE_TOKEN * image_seq_len
    global_view = f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{image_tokens}{FAKE_IMAGE_TOKEN}"
    if rows == 0 and cols == 0:
        return global_view
    grid = "".join(
        "".join(f"{FAKE_IMAGE_TOKEN}<row_{row}_col_{col}>{image_tokens}" for col in range(1, cols + 1)) + "\n"
        for row in range(1, rows + 1)
    )
    return f"{grid}\n{global_view}"


def video_prompt(timestamps: Sequence[float], duration: float, image_seq_len: int) -> str:
    """The text that stands for a video: an introduction giving the frame count and the duration (H:MM:SS), then
    each frame's "MM:SS" timestamp followed by its single-tile image prompt."""
    text = (
        f"You are provided the following series of {num2words(len(timestamps))} frames "
        f"from a {timedelta(seconds=int(duration))} [H:MM:SS] video.\n"
    )
    frame = image_prompt(0, 0, image_seq_len)
    for second in timestamps:
        text += f"\nFrame from {int(second // 60):02d}:{int(second % 60):02d}:{frame}"
    return text + "\n\n"


def sample_frame_indices(
    total_num_frames: int,
    video_fps: float,
    duration: float,
    fps: float = 1.0,
    max_frames: int = 64,
    skip_secs: float = 1.0,
) -> np.ndarray:
    """Indices of the frames SmolVLM2 looks at, sorted and unique.

    `round(fps * duration)` frames (between 1 and `max_frames`) spread evenly over the video; when the video is more
    than `2 * skip_secs` longer than `max_frames` frames at `fps` take, its first and last `skip_secs` are left out.
    """
    num_frames = max(min(int(round(fps * duration)), max_frames), 1)
    start, end = 0, total_num_frames - 1
    if skip_secs > 0 and duration - 2 * skip_secs > max_frames * fps:
        start = int(skip_secs * video_fps)
        end = min(int(total_num_frames - skip_secs * video_fps), total_num_frames - 1)
    if start >= end:
        start, end = 0, total_num_frames - 1
    return np.unique(np.linspace(start, end, num_frames, dtype=int))


@dataclass
class SampledVideo:
    """The frames of a video that the model sees: frames (T, 3, H, W) uint8, their times in seconds, and the
    duration of the whole video in seconds."""

    frames: Tensor
    timestamps: list[float]
    duration: float


def decode_video(
    path: str | Path, pick: Callable[[int, float], Sequence[int]]
) -> tuple[Tensor, list[int], float, int]:
    """The frames (T, 3, H, W) uint8 of a video file (any format FFmpeg reads, via PyAV) at the sorted indices
    `pick(total_frames, frame_rate)` chooses; returns them with their indices, the frame rate and the frame count."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"Cannot use video {path}: it has no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 0)
            total = stream.frames
            if not total and rate and container.duration:
                total = round(container.duration / av.time_base * rate)
            if not rate or not total:
                raise InputError(f"Cannot use video {path}: its frame rate or frame count is unknown")
            wanted = sorted(set(pick(total, rate)))
            indices, frames = [], []
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    indices.append(index)
                    frames.append(frame.to_ndarray(format="rgb24"))
                if index >= wanted[-1]:
                    break
    except av.FFmpegError as error:
        raise InputError(f"Cannot decode video {path}: {error}") from error
    if not frames:
        raise InputError(f"Cannot use video {path}: no frame could be decoded")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), indices, rate, total


def load_video(path: str | Path, fps: float = 1.0, max_frames: int = 64) -> SampledVideo:
    """Decodes the frames `sample_frame_indices` picks from a video file (any format FFmpeg reads, via PyAV)."""
    frames, indices, rate, total = decode_video(
        path, lambda total, rate: sample_frame_indices(total, rate, total / rate, fps, max_frames).tolist())
    return SampledVideo(frames, [index / rate for index in indices], total / rate)


def load_image(image: ImageInput) -> Tensor:
    """A PIL image, an image file path, or a uint8 array/tensor ((H, W), (H, W, C) or (C, H, W), C in 1, 3, 4)
    -> (3, H, W) uint8 RGB. Transparency is composited onto white; EXIF orientation is applied to files."""
    if isinstance(image, (str, Path)):
        image = _open_image(image)
    if isinstance(image, Image.Image):
        _check_image_size(*image.size)
        if "A" in image.getbands() or "transparency" in image.info:
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if not isinstance(image, (np.ndarray, Tensor)):
        raise TypeError(f"An image must be a PIL image, a file path or a uint8 array, got {type(image).__name__}")
    array = image.cpu().numpy() if isinstance(image, Tensor) else image
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise InputError(
            f"An image array must be uint8 of shape (H, W), (H, W, C) or (C, H, W), got {array.dtype} {array.shape}; "
            "convert float images in [0, 1] with (x * 255).round().to(torch.uint8)"
        )
    if array.ndim == 3:
        if array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
        elif array.shape[-1] not in (1, 3, 4):
            raise InputError(f"An image array needs 1, 3 or 4 channels first or last, got shape {array.shape}")
    _check_image_size(array.shape[1], array.shape[0])
    if array.ndim == 3:
        if array.shape[-1] == 3:
            return torch.tensor(array).permute(2, 0, 1).contiguous()
        array = array[..., 0] if array.shape[-1] == 1 else array
    return load_image(Image.fromarray(array))


def _check_image_size(width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise InputError(f"Cannot use an image of {width}x{height} pixels: both sides need at least 1 pixel")


def processor_folder(folder_or_repo: str | Path, revision: str | None = None) -> Path:
    """A local folder holding a processor's files: the folder itself, or its configs, chat template and tokenizer
    files downloaded from the Hub repo of that name."""
    folder = Path(folder_or_repo)
    if folder.is_dir():
        return folder
    from zoo.hub import download

    return download(str(folder_or_repo), revision=revision, allow_patterns=["*.json", "*.jinja", "*.txt"])


def read_json(path: Path) -> dict:
    """A JSON config file's content, or {} when there is no such file."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _open_image(path: str | Path) -> Image.Image:
    if str(path).startswith(("http://", "https://")):
        raise InputError(f"Images are read from local files; download {path} first and pass the file path")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Image file not found: {path}")
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"Cannot read image {path}: {error}") from error


class SmolVLMProcessor:
    """Turns prompts with images and videos into SmolVLM / SmolVLM2 inputs.

    Args:
        tokenizer: the model's transformers tokenizer (`AutoTokenizer.from_pretrained(repo)`).
        image_seq_len: `<image>` tokens per tile, (image_size / patch_size)**2 / scale_factor**2: 64 for the 256M and
            500M models, 81 for the 2.2B.
        longest_edge: every image is first resized (up or down) to this longest edge: 2048, or 1536 for the 2.2B.
            Smaller values give fewer tiles.
        max_image_size: side M of a tile, the vision encoder's input size: 512, or 384 for the 2.2B.
        do_image_splitting: cut images into tiles plus the global view; if False every image is one M x M tile.
        image_mean, image_std, rescale_factor: pixels become (x * rescale_factor - mean) / std.
        video_fps, video_max_frames: frames sampled per second of video, and at most this many frames.
        video_longest_edge: frames are resized to this longest edge before being squashed to M x M (defaults to M).
        chat_template: Jinja template for `apply_chat_template` (defaults to the tokenizer's, then SmolVLM2's).
        padding_side: side the batch is padded on; "left" suits generation.
        backend: "torchvision" (transformers' default image processor) or "pil" (its `*ImageProcessorPil`).
    """

    def __init__(
        self,
        tokenizer: Any,
        image_seq_len: int = 64,
        longest_edge: int = 2048,
        max_image_size: int = 512,
        do_image_splitting: bool = True,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        rescale_factor: float = 1 / 255,
        video_fps: float = 1.0,
        video_max_frames: int = 64,
        video_longest_edge: int | None = None,
        chat_template: str | None = None,
        padding_side: str = "left",
        backend: str = "torchvision",
    ) -> None:
        if backend not in ("torchvision", "pil"):
            raise InputError(f"backend must be 'torchvision' or 'pil', got {backend!r}")
        self.tokenizer = tokenizer
        self.image_seq_len = image_seq_len
        self.longest_edge = longest_edge
        self.max_image_size = max_image_size
        self.do_image_splitting = do_image_splitting
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.rescale_factor = rescale_factor
        self.video_fps = video_fps
        self.video_max_frames = video_max_frames
        self.video_longest_edge = video_longest_edge or max_image_size
        self.chat_template = chat_template
        self.padding_side = padding_side
        self.backend = backend

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @classmethod
    def from_pretrained(
        cls, folder_or_repo: str | Path, revision: str | None = None, **overrides: Any
    ) -> SmolVLMProcessor:
        """Reads the processor of a SmolVLM / SmolVLM2 checkpoint folder or Hub repo (through `zoo.hub.download`).

        Settings come from `processor_config.json`, `preprocessor_config.json` and `video_preprocessor_config.json`
        as transformers reads them, the tokenizer from `transformers.AutoTokenizer`; keyword arguments override
        them, e.g. `do_image_splitting=False` or `longest_edge=1024`.
        """
        from transformers import AutoTokenizer

        folder = processor_folder(folder_or_repo, revision)

        def read(name: str) -> dict:
            return read_json(folder / name)

        processor = read("processor_config.json")
        image = processor.get("image_processor") or read("preprocessor_config.json")
        video = processor.get("video_processor") or read("video_preprocessor_config.json") or image
        sampling = video.get("video_sampling", {})
        # As in transformers, `video_sampling` wins over the top-level fps / num_frames, and a top-level `size` (in
        # legacy configs shared with the images, the image size) over `video_sampling`'s.
        video_size = video.get("size") or sampling.get("video_size") or {}
        settings = {
            "image_seq_len": processor.get("image_seq_len") or _image_seq_len_from_model_config(read("config.json")),
            "longest_edge": image.get("size", {}).get("longest_edge"),
            "max_image_size": image.get("max_image_size", {}).get("longest_edge"),
            "do_image_splitting": image.get("do_image_splitting"),
            "image_mean": image.get("image_mean"),
            "image_std": image.get("image_std"),
            "rescale_factor": image.get("rescale_factor"),
            "video_fps": sampling.get("fps", video.get("fps")),
            "video_max_frames": sampling.get("max_frames", video.get("num_frames")),
            "video_longest_edge": video_size.get("longest_edge"),
            "chat_template": _read_chat_template(folder, processor),
        }
        settings = {name: value for name, value in settings.items() if value is not None}
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(tokenizer, **{**settings, **overrides})

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the tokenizer and the processor settings as transformers names them, so that `from_pretrained`
        and transformers' `AutoProcessor` read them back: `processor_config.json` (the image and video processor
        settings and `image_seq_len`), `chat_template.jinja` when there is a template, and the tokenizer files.

        The backend (torchvision or PIL) and the padding side are call-time choices and are not saved.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        common = {
            "do_convert_rgb": True, "do_resize": True, "do_rescale": True, "do_normalize": True, "do_pad": True,
            "resample": 1,  # LANCZOS
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor, "max_image_size": {"longest_edge": self.max_image_size},
        }
        image_processor = {
            **common, "image_processor_type": "SmolVLMImageProcessor",
            "size": {"longest_edge": self.longest_edge}, "do_image_splitting": self.do_image_splitting,
        }
        video_size = {"longest_edge": self.video_longest_edge}
        video_processor = {
            **common, "video_processor_type": "SmolVLMVideoProcessor", "size": video_size,
            "fps": self.video_fps, "num_frames": self.video_max_frames, "do_sample_frames": False,
            "video_sampling": {"fps": self.video_fps, "max_frames": self.video_max_frames, "video_size": video_size},
        }
        config = {"image_processor": image_processor, "image_seq_len": self.image_seq_len,
                  "processor_class": "SmolVLMProcessor", "video_processor": video_processor}
        (folder / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self.tokenizer.save_pretrained(folder)
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if template:
            (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
        return folder

    def preprocess_image(self, image: ImageInput) -> tuple[Tensor, int, int]:
        """One image -> (tiles (N, 3, M, M) float, rows, cols); N = rows * cols + 1, or 1 when rows = cols = 0."""
        pixels = load_image(image)
        pixels = resize(pixels, resized_image_size(*pixels.shape[-2:], self.longest_edge), self.backend)
        tile = self.max_image_size
        if self.do_image_splitting:
            pixels = resize(pixels, tiled_image_size(*pixels.shape[-2:], tile), self.backend)
            tiles, rows, cols = split_into_tiles(pixels, tile, self.backend)
        else:
            tiles, rows, cols = resize(pixels, (tile, tile), self.backend)[None], 0, 0
        return self._normalize(tiles), rows, cols

    def preprocess_video(self, video: VideoInput, metadata: dict | None = None) -> tuple[Tensor, SampledVideo]:
        """One video -> (frames (T, 3, M, M) float, the sampled video).

        `video` is a file path, or decoded frames: a (T, H, W, 3) uint8 array/tensor or a list of images. Decoded
        frames need `metadata`: {"fps": ...} for the whole video at that frame rate (sampled here; "duration" is
        optional), or {"timestamps": [...]} (seconds, one per frame; optional "duration") for frames sampled already.
        """
        if isinstance(video, (str, Path)):
            sampled = load_video(video, self.video_fps, self.video_max_frames)
        else:
            sampled = self._sample_decoded_video(video, metadata)
        size = _fit_longest_edge(*sampled.frames.shape[-2:], min(self.video_longest_edge, MAX_IMAGE_SIDE), even=True)
        frames = resize(sampled.frames, size, self.backend)
        frames = resize(frames, (self.max_image_size, self.max_image_size), self.backend)
        return self._normalize(frames), sampled

    def _sample_decoded_video(self, video: VideoInput, metadata: dict | None) -> SampledVideo:
        if not _is_video(video):
            shape = f" of shape {tuple(video.shape)}" if hasattr(video, "shape") else ""
            raise InputError(
                "A video must be a file path, a (T, H, W, 3) uint8 array/tensor or a list of PIL images, got "
                f"{type(video).__name__}{shape}"
            )
        if len(video) == 0:
            raise InputError("Cannot use a video with no frames")
        metadata = metadata or {}
        if metadata.get("timestamps") is not None:
            timestamps = [float(second) for second in metadata["timestamps"]]
            if len(timestamps) != len(video):
                raise InputError(f"Got {len(video)} video frames but {len(timestamps)} timestamps")
            indices, duration = range(len(video)), metadata.get("duration", timestamps[-1])
        elif metadata.get("fps"):
            video_fps = float(metadata["fps"])
            duration = metadata.get("duration", len(video) / video_fps)
            indices = sample_frame_indices(len(video), video_fps, duration, self.video_fps, self.video_max_frames)
            indices = indices.tolist()
            timestamps = [index / video_fps for index in indices]
        else:
            raise InputError(
                "Decoded video frames need video_metadata: {'fps': frame rate} for a whole video, or "
                "{'timestamps': [seconds per frame]} for frames already sampled"
            )
        return SampledVideo(torch.stack([load_image(video[index]) for index in indices]), timestamps, duration)

    def _normalize(self, pixels: Tensor) -> Tensor:
        # Rescaling folded into the normalisation, (x - mean / scale) / (std / scale), as transformers computes it.
        mean = torch.tensor(self.image_mean).view(3, 1, 1) / self.rescale_factor
        std = torch.tensor(self.image_std).view(3, 1, 1) / self.rescale_factor
        return (pixels.float() - mean) / std

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: ImageInput | Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | None = None,
        videos: VideoInput | Sequence[VideoInput] | None = None,
        video_metadata: dict | Sequence[dict] | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        add_special_tokens: bool | None = None,
        *,
        truncation: bool | str = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool = True,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Prompts with `<image>` / `<video>` placeholders plus their media -> model inputs, with transformers'
        processor arguments (pass `text`, `images` and `videos` by keyword, as its order differs).

        `images`: one image, a flat list (handed to the `<image>` placeholders in order) or one list per prompt.
        `videos`: one video or a list (handed to the `<video>` placeholders in order), see `preprocess_video`;
        `video_metadata`: one dict per decoded video. `max_length` (e.g. the model's context length) turns a
        longer prompt into an error, or with `truncation=True` cuts its text (never its image tokens).
        `padding`, `pad_to_multiple_of`, `padding_side` (default: the processor's) and `add_special_tokens` are the
        tokenizer's; `add_special_tokens` defaults to not adding them to a prompt that already starts with the BOS
        token (as chat-templated prompts do). `return_tensors`: "pt" (also for None) or "np".

        Returns a transformers `BatchFeature` (a mapping with `.to(device)`): input_ids and attention_mask (B, L),
        and when there are images or videos pixel_values (B, N, 3, M, M) and pixel_attention_mask (B, N, M, M):
        each prompt's tiles and frames in the order of its placeholders, zero-padded to the largest N.
        """
        if kwargs:
            raise InputError(
                f"SmolVLMProcessor got an unknown argument {next(iter(kwargs))!r}; it takes text, images, videos, "
                "video_metadata, padding, truncation, max_length, pad_to_multiple_of, padding_side, "
                "add_special_tokens, return_attention_mask and return_tensors. Image settings such as "
                "do_image_splitting or longest_edge are set on the processor: SmolVLMProcessor.from_pretrained(repo, "
                "do_image_splitting=False)"
            )
        if return_tensors not in (None, "pt", "np"):
            raise InputError(f"return_tensors must be 'pt' (PyTorch) or 'np' (NumPy), got {return_tensors!r}")
        if padding_side not in (None, "left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else None if text is None else list(text)
        num_prompts = len(texts) if texts is not None else 1
        images = _group_per_prompt(images, texts, IMAGE_TOKEN, _is_image, "images") or [[]] * num_prompts
        videos = _group_per_prompt(videos, texts, VIDEO_TOKEN, _is_video, "videos") or [[]] * num_prompts
        metadata = iter(_video_metadata_list(video_metadata, sum(len(group) for group in videos)))
        videos = [[(video, next(metadata)) for video in group] for group in videos]

        prompts, tiles = [], []
        for index in range(num_prompts):
            media = {IMAGE_TOKEN: iter(images[index]), VIDEO_TOKEN: iter(videos[index])}
            if texts is None:
                placeholders = [IMAGE_TOKEN] * len(images[index]) + [VIDEO_TOKEN] * len(videos[index])
            else:
                placeholders = _PLACEHOLDER.findall(texts[index])
            expansions, prompt_tiles = [], []
            for placeholder in placeholders:
                pixels, expansion = self._process_media(placeholder, next(media[placeholder]))
                expansions.append(expansion)
                prompt_tiles.append(pixels)
            if texts is not None:
                prompts.append(_PLACEHOLDER.sub(lambda _, queue=iter(expansions): next(queue), texts[index]))
            tiles.append(torch.cat(prompt_tiles) if prompt_tiles else None)

        inputs = {}
        if texts is not None:
            inputs = self._tokenize(prompts, padding, truncation, max_length, pad_to_multiple_of,
                                    padding_side or self.padding_side, add_special_tokens)
            if not return_attention_mask:
                del inputs["attention_mask"]
        if any(group is not None for group in tiles):
            inputs.update(_pad_tiles(tiles))
        return BatchFeature(inputs, tensor_type="np" if return_tensors == "np" else None)

    def _process_media(self, placeholder: str, item: Any) -> tuple[Tensor, str]:
        """An image, or a (video, metadata) pair -> (its tiles or frames, the text replacing its placeholder)."""
        if placeholder == IMAGE_TOKEN:
            tiles, rows, cols = self.preprocess_image(item)
            return tiles, image_prompt(rows, cols, self.image_seq_len)
        frames, sampled = self.preprocess_video(*item)
        return frames, video_prompt(sampled.timestamps, sampled.duration, self.image_seq_len)

    def _tokenize(
        self,
        prompts: list[str],
        padding: bool | str,
        truncation: bool | str,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        padding_side: str,
        add_special_tokens: bool | None,
    ) -> dict[str, Tensor]:
        bos = self.tokenizer.bos_token
        if add_special_tokens is None:
            add_special_tokens = not (bos and all(prompt.startswith(bos) for prompt in prompts))
        options = {"add_special_tokens": add_special_tokens, "padding_side": padding_side}
        encoded = self.tokenizer(
            prompts, padding=padding, truncation=truncation, pad_to_multiple_of=pad_to_multiple_of,
            max_length=max_length if truncation or padding == "max_length" else None, **options,
        )
        for index, (prompt, ids, mask) in enumerate(zip(prompts, encoded["input_ids"], encoded["attention_mask"])):
            image_tokens = prompt.count(IMAGE_TOKEN)
            if max_length is not None and (sum(mask) > max_length or ids.count(self.image_token_id) < image_tokens):
                length = len(self.tokenizer(prompt, **options)["input_ids"])  # before truncation
                raise InputError(self._too_long_message(index, length, max_length, image_tokens))
        lengths = [len(ids) for ids in encoded["input_ids"]]
        if len(set(lengths)) > 1:
            raise InputError(f"Prompts of {lengths} tokens cannot form one batch without padding; pass padding=True")
        return {name: torch.tensor(encoded[name], dtype=torch.long) for name in ("input_ids", "attention_mask")}

    def _too_long_message(self, index: int, length: int, max_length: int, image_tokens: int) -> str:
        fewer_tiles = f"longest_edge={2 * self.max_image_size} for at most 5 tiles per image"
        return (
            f"Prompt {index} is {length} tokens long, more than max_length={max_length}; its images and videos take "
            f"{image_tokens} of them ({image_tokens // self.image_seq_len} tiles or frames of {self.image_seq_len} "
            f"tokens), which truncation does not cut. Use fewer images or frames (video_max_frames), "
            f"do_image_splitting=False for one tile per image, or a smaller longest_edge (e.g. {fewer_tiles})"
        )

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[str]:
        """Renders a conversation (or a batch of them) into prompt text, e.g.

            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
            -> "<|im_start|>User:<image>What is this?<end_of_utterance>\\nAssistant:"  (add_generation_prompt=True)

        Conversations holding a video use SmolVLM2's template unless `chat_template` is given, as transformers does;
        others use this processor's template, else the tokenizer's, else SmolVLM2's.
        """
        conversations = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
        has_video = any(
            isinstance(block, dict) and block.get("type") == "video"
            for messages in conversations
            for message in messages
            if not isinstance(message.get("content"), str)
            for block in message.get("content") or []
        )
        if chat_template is None:
            own = self.chat_template or self.tokenizer.chat_template
            chat_template = DEFAULT_CHAT_TEMPLATE if has_video or own is None else own
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **kwargs,
        )

    def batch_decode(
        self, sequences: Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True, **kwargs: Any
    ) -> list[str]:
        """Token ids (B, L) -> B strings."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, token_ids: Tensor | Sequence[int], skip_special_tokens: bool = True, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)


def _is_image(item: Any) -> bool:
    return isinstance(item, (Image.Image, str, Path)) or isinstance(item, (np.ndarray, Tensor)) and item.ndim in (2, 3)


def _is_video(item: Any) -> bool:
    if isinstance(item, (list, tuple)):
        return bool(item) and all(isinstance(frame, Image.Image) for frame in item)
    return isinstance(item, (str, Path)) or (isinstance(item, (np.ndarray, Tensor)) and item.ndim == 4)


def _group_per_prompt(items: Any, texts: list[str] | None, token: str, is_item, name: str) -> list[list] | None:
    """Images or videos as one list per prompt, checked against the prompts' placeholders."""
    if items is None:
        if texts and any(token in prompt for prompt in texts):
            counts = [prompt.count(token) for prompt in texts]
            raise InputError(f"The prompts hold {sum(counts)} {token} placeholders but no {name} were given")
        return None
    items = [items] if is_item(items) else list(items)
    nested = bool(items) and all(isinstance(group, (list, tuple)) and not is_item(group) for group in items)
    if not nested and not all(is_item(item) for item in items):
        raise TypeError(f"Cannot use {name}: expected one, a list, or one list per prompt ({_describe(items)})")
    counts = [prompt.count(token) for prompt in texts] if texts is not None else None
    if nested:
        groups = [list(group) for group in items]
        if counts is not None and [len(group) for group in groups] != counts:
            raise InputError(
                f"The prompts hold {counts} {token} placeholders but {[len(group) for group in groups]} {name} "
                "were given per prompt; each placeholder needs exactly one"
            )
        return groups
    if counts is None:
        return [items]
    if sum(counts) != len(items):
        raise InputError(
            f"The prompts hold {sum(counts)} {token} placeholders ({counts} per prompt) but {len(items)} {name} "
            "were given; each placeholder needs exactly one"
        )
    starts = np.cumsum([0, *counts]).tolist()
    return [items[start:end] for start, end in zip(starts, starts[1:])]


def _describe(items: list) -> str:
    return "got " + ", ".join(type(item).__name__ for item in items[:4]) + (", ..." if len(items) > 4 else "")


def _video_metadata_list(video_metadata: dict | Sequence[dict] | None, num_videos: int) -> list[dict | None]:
    if video_metadata is None:
        return [None] * num_videos
    metadata = [video_metadata] if isinstance(video_metadata, dict) else list(video_metadata)
    if len(metadata) != num_videos:
        raise InputError(f"Got {num_videos} videos but {len(metadata)} video_metadata entries; pass one per video")
    return metadata


def _pad_tiles(tiles: list[Tensor | None]) -> dict[str, Tensor]:
    """Per prompt (n_i, 3, M, M) tiles or None -> pixel_values (B, N, 3, M, M), pixel_attention_mask (B, N, M, M)."""
    shape = next(group.shape[1:] for group in tiles if group is not None)
    max_tiles = max(len(group) for group in tiles if group is not None)
    pixel_values = torch.zeros(len(tiles), max_tiles, *shape)
    pixel_attention_mask = torch.zeros(len(tiles), max_tiles, *shape[1:], dtype=torch.long)
    for index, group in enumerate(tiles):
        if group is not None:
            pixel_values[index, : len(group)] = group
            pixel_attention_mask[index, : len(group)] = 1
    return {"pixel_values": pixel_values, "pixel_attention_mask": pixel_attention_mask}


def _image_seq_len_from_model_config(config: dict) -> int | None:
    """(image_size / patch_size)**2 / scale_factor**2 from a checkpoint's config.json, when it has one."""
    vision = config.get("vision_config", {})
    if "scale_factor" not in config or "image_size" not in vision or "patch_size" not in vision:
        return None
    return int((vision["image_size"] // vision["patch_size"]) ** 2 / config["scale_factor"] ** 2)


def _read_chat_template(folder: Path, processor_config: dict) -> str | None:
    """The processor's chat template: chat_template.jinja, else processor_config.json's, else chat_template.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if processor_config.get("chat_template"):
        return processor_config["chat_template"]
    legacy = folder / "chat_template.json"
    return json.loads(legacy.read_text(encoding="utf-8")).get("chat_template") if legacy.is_file() else None
