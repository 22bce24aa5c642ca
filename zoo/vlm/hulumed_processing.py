"""Hulu-Med processor: images at native resolution, videos (PyAV), 3D volumes (NIfTI via nibabel, DICOM series via
pydicom), the chat template, the "think" suffix, and `zoo run`.

Resolution: every image or frame is resized (bicubic) to multiples of 14 * merge_size, within a budget of
`min_tokens`..`max_tokens` patches shared by all frames of a call (`max_tokens // number of frames` each), then
rescaled by 1/255, normalised with CLIP's mean and std, and cut into 14-px patches in merge-block order. Images use
merge size 1 and videos and volumes 2; a conversation holding a video or a volume processes its images at merge
size 2 too, as the released processor does. More than 5 images in one message become one video (the official
evaluation wrapper's rule).

Volumes: `num_slices` slices taken uniformly (`np.linspace`) along `axis`, each clipped to an optional CT window,
min-max normalised to 0..255 (truncated to uint8; a flat slice is black) and repeated to RGB, then processed as a
video without timestamps. Requires `pip install mmzoo[medical]` (nibabel, pydicom).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import BatchFeature

from zoo.backbones.navit import patchify
from zoo.errors import InputError, ZooError
from zoo.vlm.smolvlm_processing import load_image, processor_folder, read_json

IMAGE_TOKEN = "<image>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
THINK_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
SYSTEM_PROMPT = ("You are Hulu-Med, a helpful medical assistant that understands medical text, 2D images, "
                 "videos and 3D volumes.")
MAX_SEPARATE_IMAGES = 5
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_THINK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)


def build_tokenizer() -> Any:
    """A Hulu-Med-style tokenizer built procedurally (nothing to download) for `hulu-med-tiny`: one token per byte.

    Ids 0-2 are `<|endoftext|>` (pad), `<|im_start|>` and `<|im_end|>` (eos), 3-258 the 256 byte-level symbols, then
    `<think>` (259), `</think>` (260) and `<image>` (261): 262 tokens, within hulu-med-tiny's vocabulary of 320.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    for character in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[character] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.add_tokens(["<think>", "</think>"])  # plain added tokens, as in Qwen3's tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", IMAGE_TOKEN]})
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Sizes


def target_sizes(sizes: Sequence[tuple[int, int, int]], merge_sizes: Sequence[int], patch_size: int = 14,
                 min_tokens: int = 16, max_tokens: int = 16384) -> list[tuple[int, int]]:
    """(height, width) each item of (frames, height, width) is resized to, as the released image processor does.

    One merge size for all: each side rounds to a multiple of patch_size * merge_size; above `max_tokens //
    total frames` patches per frame both sides shrink by the same factor (floor), below `min_tokens` they grow
    (ceil). Mixed merge sizes: sides round to their multiples, or all shrink together when the frames hold more
    than `max_tokens` patches in all."""
    if not sizes:
        return []
    if len(set(merge_sizes)) == 1:
        factor = patch_size * merge_sizes[0]
        min_pixels, max_pixels = min_tokens * factor * factor, max_tokens * factor * factor
        budget = max_pixels // sum(frames for frames, _, _ in sizes)
        result = []
        for _, height, width in sizes:
            h, w = round(height / factor) * factor, round(width / factor) * factor
            if h * w > budget:
                beta = math.sqrt(height * width / budget)
                h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
            if h * w < min_pixels:
                beta = math.sqrt(min_pixels / (height * width))
                h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
            result.append((h, w))
        return result
    factors = [patch_size * m for m in merge_sizes]
    total = sum(frames * math.ceil(h / f) * math.ceil(w / f) for (frames, h, w), f in zip(sizes, factors))
    if total > max_tokens:
        beta = math.sqrt(total / max_tokens)
        return [(math.floor(h / beta / f) * f, math.floor(w / beta / f) * f) for (_, h, w), f in zip(sizes, factors)]
    return [(round(h / f) * f, round(w / f) * f) for (_, h, w), f in zip(sizes, factors)]


# ---------------------------------------------------------------------------------------------------
# Volumes and videos


@dataclass
class Frames:
    """Decoded frames (T, 3, H, W) uint8 of a video or volume (or a list of (3, H, W) frames of different sizes), with
    timestamps in seconds (None for volumes and images)."""

    frames: Tensor | list[Tensor]
    timestamps: list[float] | None = None


def _medical_import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as error:
        raise ZooError(f"reading 3D volumes needs {name}: pip install mmzoo[medical]") from error


def read_volume(path: str | Path | Sequence[str | Path]) -> np.ndarray:
    """A 3D volume as float64 (X, Y, Z): a NIfTI file (.nii, .nii.gz) or a DICOM series (a folder of .dcm files, or
    their paths), whose slices are stacked along the last axis by InstanceNumber (rescale slope and intercept
    applied)."""
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if len(paths) == 1 and paths[0].name.lower().endswith(NIFTI_SUFFIXES):
        if not paths[0].is_file():
            raise InputError(f"NIfTI file not found: {paths[0]}")
        nibabel = _medical_import("nibabel")
        try:
            volume = np.asarray(nibabel.load(str(paths[0])).get_fdata())
        except Exception as error:  # nibabel raises several kinds for damaged files
            raise InputError(f"cannot read NIfTI volume {paths[0]}: {error}") from error
        if volume.ndim == 4 and volume.shape[-1] == 1:
            volume = volume[..., 0]
        if volume.ndim != 3:
            raise InputError(f"NIfTI volume {paths[0]} has shape {volume.shape}; a 3D volume is needed")
        return volume
    if len(paths) == 1 and paths[0].is_dir():
        paths = sorted(p for p in paths[0].iterdir() if p.is_file() and not p.name.startswith("."))
    if not paths or not all(p.is_file() for p in paths):
        raise InputError(f"volume not found: {path}; pass a .nii/.nii.gz file or a DICOM series (folder or files)")
    return _read_dicom_series(paths)


def _read_dicom_series(paths: list[Path]) -> np.ndarray:
    pydicom = _medical_import("pydicom")
    slices = []
    for p in paths:
        try:
            dataset = pydicom.dcmread(str(p))
            pixels = dataset.pixel_array.astype(np.float64)
        except Exception as error:  # pydicom raises InvalidDicomError, AttributeError (no pixels), ...
            raise InputError(f"{p} is neither a NIfTI file (.nii, .nii.gz) nor a readable DICOM slice ({error}); "
                             "pass a NIfTI volume or a DICOM series") from error
        slope, intercept = float(getattr(dataset, "RescaleSlope", 1)), float(getattr(dataset, "RescaleIntercept", 0))
        slices.append((int(getattr(dataset, "InstanceNumber", len(slices))), pixels * slope + intercept, p))
    shapes = {pixels.shape for _, pixels, _ in slices}
    if len(shapes) > 1:
        described = ", ".join(f"{p.name}: {pixels.shape}" for _, pixels, p in slices[:4])
        raise InputError(f"the DICOM series mixes slice sizes ({described}, ...); pass one series of equal-size "
                         "slices")
    slices.sort(key=lambda item: item[0])
    return np.stack([pixels for _, pixels, _ in slices], axis=-1)


SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def volume_slices(volume: np.ndarray, num_slices: int | None = None, axis: int | str = 2,
                  window: tuple[float, float] | None = None) -> Frames:
    """Slices of a volume as RGB frames (T, 3, H, W) uint8, as the released processor's `load_nii` makes them:
    `num_slices` uniformly spaced (all if None or more), along `axis` (0, 1, 2 or 'sagittal', 'coronal', 'axial'),
    each clipped to `window` = (center, width) if given, min-max normalised to 0..255 and truncated to uint8 (flat
    slices are black)."""
    axis = SLICE_AXES.get(axis, axis) if isinstance(axis, str) else axis
    if axis not in (0, 1, 2):
        raise InputError(f"slice axis must be 0, 1, 2 or one of {', '.join(SLICE_AXES)}, got {axis!r}")
    count = volume.shape[axis]
    indices = np.arange(count)
    if num_slices is not None and num_slices < count:
        indices = np.linspace(0, count - 1, num_slices, dtype=int)
    frames = []
    for index in indices:
        plane = np.take(volume, index, axis=axis)
        if window is not None:
            center, width = window
            plane = np.clip(plane, center - width / 2, center + width / 2)
        low, high = plane.min(), plane.max()
        plane = (plane - low) / (high - low) * 255.0 if high > low else np.zeros_like(plane)
        frames.append(np.repeat(plane.astype(np.uint8)[None], 3, axis=0))
    return Frames(torch.from_numpy(np.stack(frames)))


def load_video(path: str | Path, fps: float | None = 1.0, max_frames: int | None = 128) -> Frames:
    """Frames sampled from a video file through PyAV: one per 1/fps seconds (the last frame shown at each time, as
    FFmpeg's fps filter with round=down), then at most `max_frames` uniformly; timestamps from the stream start."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"cannot use video {path}: it has no video stream")
            decoded = [(float(frame.time or 0.0), frame.to_ndarray(format="rgb24"))
                       for frame in container.decode(container.streams.video[0])]
    except av.FFmpegError as error:
        raise InputError(f"cannot decode video {path}: {error}") from error
    if not decoded:
        raise InputError(f"cannot use video {path}: no frame could be decoded")
    times = np.array([time for time, _ in decoded])
    start = float(times[0])
    if fps:
        targets = np.arange(start, times[-1] + 1e-9, 1 / fps)
        chosen = [int(np.searchsorted(times, target, side="right")) - 1 for target in targets]
        timestamps = targets.tolist()
    else:
        chosen, timestamps = list(range(len(decoded))), times.tolist()
    if max_frames is not None and len(chosen) > max_frames:
        keep = np.linspace(0, len(chosen) - 1, max_frames, dtype=int)
        chosen, timestamps = [chosen[i] for i in keep], [timestamps[i] for i in keep]
    frames = torch.from_numpy(np.stack([decoded[i][1] for i in chosen])).permute(0, 3, 1, 2)
    return Frames(frames, timestamps)


# ---------------------------------------------------------------------------------------------------
# The processor


class HuluMedProcessor:
    """Turns Hulu-Med conversations with images, videos and volumes into model inputs.

    Content blocks: {"type": "text", "text": ...}; {"type": "image", "image": path | PIL | array} (also the official
    {"image": {"image_path": ...}}); {"type": "video", "video": path | frames (T, H, W, 3) uint8} (or {"video_path":
    ..., "fps": ..., "max_frames": ...}); {"type": "3d", "3d": path of a .nii/.nii.gz file or a DICOM folder} (or
    {"image_path": ..., "nii_num_slices": ..., "nii_axis": ..., "window_center": ..., "window_width": ...}).
    """

    def __init__(self, tokenizer: Any, patch_size: int = 14, min_tokens: int = 16, max_tokens: int = 16384,
                 image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD,
                 image_merge_size: int = 1, video_merge_size: int = 2, fps: float | None = 1.0,
                 max_frames: int | None = 128, num_slices: int | None = None, slice_axis: int = 2,
                 chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.patch_size, self.min_tokens, self.max_tokens = patch_size, min_tokens, max_tokens
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.image_merge_size, self.video_merge_size = image_merge_size, video_merge_size
        self.fps, self.max_frames = fps, max_frames
        self.num_slices, self.slice_axis = num_slices, slice_axis
        self.chat_template = chat_template

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @classmethod
    def from_pretrained(cls, folder_or_repo: str | Path, revision: str | None = None, **overrides: Any
                        ) -> HuluMedProcessor:
        """The processor of a Hulu-Med checkpoint folder or Hub repo: `preprocessor_config.json` (token budget,
        patch size, mean/std), `processor_config.json` (merge sizes, fps, max_frames), the chat template and the
        tokenizer; keyword arguments override them."""
        from transformers import AutoTokenizer

        folder = processor_folder(folder_or_repo, revision)

        def read(name: str) -> dict:
            return read_json(folder / name)

        image, processor = read("preprocessor_config.json"), read("processor_config.json")
        template = folder / "chat_template.jinja"
        settings = {
            "patch_size": image.get("patch_size"), "min_tokens": image.get("min_tokens"),
            "max_tokens": image.get("max_tokens"), "image_mean": image.get("image_mean"),
            "image_std": image.get("image_std"), "image_merge_size": processor.get("image_merge_size"),
            "video_merge_size": processor.get("video_merge_size"), "fps": processor.get("fps"),
            "max_frames": processor.get("max_frames"),
            "chat_template": template.read_text(encoding="utf-8") if template.is_file()
            else processor.get("chat_template") or read("chat_template.json").get("chat_template"),
        }
        settings = {name: value for name, value in settings.items() if value is not None}
        return cls(AutoTokenizer.from_pretrained(folder), **{**settings, **overrides})

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """The tokenizer, `preprocessor_config.json` and `processor_config.json` (and `chat_template.jinja` when
        set), as `from_pretrained` reads them back."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        image = {"image_processor_type": "HulumedImageProcessor", "patch_size": self.patch_size,
                 "min_tokens": self.min_tokens, "max_tokens": self.max_tokens, "image_mean": list(self.image_mean),
                 "image_std": list(self.image_std), "do_resize": True, "do_rescale": True, "do_normalize": True,
                 "rescale_factor": 1 / 255, "resample": 3}
        processor = {"processor_class": "HulumedProcessor", "image_merge_size": self.image_merge_size,
                     "video_merge_size": self.video_merge_size, "fps": self.fps, "max_frames": self.max_frames}
        (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
        (folder / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
        if self.chat_template:
            (folder / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        self.tokenizer.save_pretrained(folder)
        return folder

    # -- visuals ---------------------------------------------------------------------------------------------------

    def load(self, block: dict) -> tuple[str, Frames]:
        """One content block -> its modality ('image' or 'video'; volumes are videos) and its frames."""
        kind = block["type"]
        value = block.get(kind)
        options = value if isinstance(value, dict) else {}
        if kind == "image":
            source = options.get("image_path", value) if options else value
            return "image", Frames(load_image(source)[None])
        if kind == "video":
            source = options.get("video_path", value) if options else value
            if isinstance(source, (str, Path)):
                return "video", load_video(source, options.get("fps", self.fps),
                                           options.get("max_frames", self.max_frames))
            if isinstance(source, (np.ndarray, Tensor)) and source.ndim == 4:
                source = list(source)
            frames = [load_image(frame) for frame in source]
            if not frames:
                raise InputError("a video needs at least one frame")
            return "video", Frames(frames, block.get("timestamps"))
        if kind == "3d":
            source = options.get("image_path", value) if options else value
            window = None
            if options.get("window_center") is not None and options.get("window_width") is not None:
                window = (float(options["window_center"]), float(options["window_width"]))
            volume = read_volume(source)
            return "video", volume_slices(volume, options.get("nii_num_slices", self.num_slices),
                                          options.get("nii_axis", self.slice_axis), window)
        raise InputError(f"unknown content type {kind!r}; Hulu-Med takes text, image, video and 3d blocks")

    def preprocess(self, items: Sequence[tuple[str, Frames]], merge_sizes: Sequence[int]) -> dict[str, Any]:
        """(modal, frames) items -> pixel_values (patches, 3*p*p), grid_sizes (n, 3), merge_sizes (n,), modals."""
        sizes = [(len(f.frames), *f.frames[0].shape[-2:]) for _, f in items]
        targets = target_sizes(sizes, merge_sizes, self.patch_size, self.min_tokens, self.max_tokens)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        patches, grids = [], []
        for (_, item), (height, width), merge in zip(items, targets, merge_sizes):
            frames = _resize_bicubic(item.frames, height, width)
            pixels, grid = patchify((frames / 255.0 - mean) / std, self.patch_size, merge)
            patches.append(pixels)
            grids.append(grid)
        return {"pixel_values": torch.cat(patches), "grid_sizes": torch.tensor(grids, dtype=torch.long),
                "merge_sizes": torch.tensor(list(merge_sizes), dtype=torch.long),
                "modals": [modal for modal, _ in items]}

    # -- conversations ---------------------------------------------------------------------------------------------

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = False,
                            add_system_prompt: bool = False) -> str:
        """The prompt text: `<|im_start|>role\\n...<|im_end|>\\n` per message; an image is `<image>\\n` (after
        "Time t.ts: " when it has a `timestamp`), a video or volume one `<image>` per frame, comma-separated, each
        after "Time t.ts:" when the block has `timestamps`, then a newline. A checkpoint's own template wins."""
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if template:
            return self.tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      add_system_prompt=add_system_prompt, image_token=IMAGE_TOKEN)
        text = ""
        for index, message in enumerate(conversation):
            if add_system_prompt and index == 0 and message["role"] != "system":
                text += f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            text += f"<|im_start|>{message['role']}\n"
            content = message["content"]
            for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                text += _render_block(block)
            text += "<|im_end|>\n"
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def __call__(self, conversation: list[dict] | None = None, text: str | None = None,
                 images: Sequence[tuple[str, Any]] | None = None, add_generation_prompt: bool = True,
                 add_system_prompt: bool = False, think: bool = False, return_labels: bool = False) -> BatchFeature:
        """A conversation (or a prompt `text` with `<image>` placeholders and `images` as (modal, frames) pairs) ->
        input_ids (1, L), attention_mask, and pixel_values, grid_sizes, merge_sizes, modals when there are visuals.

        `think=True` appends the step-by-step suffix to the last user text. `return_labels=True` (a conversation
        ending with the assistant's answer; no generation prompt) adds labels: the assistant tokens, -100 elsewhere.
        """
        if (conversation is None) == (text is None):
            raise InputError("pass either conversation=[...] or text=... (with images=[(modal, frames), ...])")
        if conversation is not None:
            conversation = self._group_images(conversation)
            if think:
                conversation = _with_think_suffix(conversation)
            blocks = [block for message in conversation if not isinstance(message["content"], str)
                      for block in message["content"] if block.get("type") in ("image", "video", "3d")]
            has_video = any(block["type"] in ("video", "3d") for block in blocks)
            items = [self.load(block) for block in blocks]
            for block, (modal, frames) in zip(blocks, items):
                block.update(num_frames=len(frames.frames))
                if modal == "video" and frames.timestamps is not None:
                    block["timestamps"] = frames.timestamps
            merge = self.video_merge_size if has_video else self.image_merge_size
            merge_sizes = [merge] * len(items)
            prompt = self.apply_chat_template(conversation, add_generation_prompt and not return_labels,
                                              add_system_prompt)
        else:
            items = [(modal, frames if isinstance(frames, Frames) else self.load({"type": modal, modal: frames})[1])
                     for modal, frames in images or []]
            merge_sizes = [self.video_merge_size if modal == "video" else self.image_merge_size for modal, _ in items]
            prompt = text + (f"\n{THINK_SUFFIX}" if think else "")
        visuals = self.preprocess(items, merge_sizes) if items else {}
        prompt = self.expand(prompt, visuals)
        input_ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]], dtype=torch.long)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **visuals}
        if return_labels:
            inputs["labels"] = self._labels(input_ids[0])[None]
        return BatchFeature(inputs)

    def expand(self, prompt: str, visuals: dict[str, Any]) -> str:
        """Each `<image>` of the prompt becomes as many `<image>` tokens as its frame has merged tokens; the count of
        `<image>` placeholders must equal the number of frames (an InputError otherwise)."""
        per_frame = []
        if visuals:
            for (t, h, w), m in zip(visuals["grid_sizes"].tolist(), visuals["merge_sizes"].tolist()):
                per_frame += [(h // m) * (w // m)] * t
        pieces = prompt.split(IMAGE_TOKEN)
        if len(pieces) - 1 != len(per_frame):
            raise InputError(f"the prompt holds {len(pieces) - 1} <image> placeholders but the visuals have "
                             f"{len(per_frame)} images and frames; write one <image> per image and per video frame "
                             "(apply_chat_template does) or pass matching visuals")
        return pieces[0] + "".join(IMAGE_TOKEN * n + piece for n, piece in zip(per_frame, pieces[1:]))

    def _labels(self, input_ids: Tensor) -> Tensor:
        """The assistant answers' tokens (after `<|im_start|>assistant\\n`, up to and with `<|im_end|>`)."""
        labels = torch.full_like(input_ids, -100)
        header = self.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        ids, n = input_ids.tolist(), len(header)
        position = 0
        while position < len(ids):
            if ids[position:position + n] == header:
                start = position + n
                stop = start
                while stop < len(ids) and ids[stop] != end:
                    stop += 1
                labels[start:stop + 1] = input_ids[start:stop + 1]
                position = stop
            position += 1
        return labels

    @staticmethod
    def _group_images(conversation: list[dict]) -> list[dict]:
        """More than 5 images in one message become one video of those frames (the official wrapper's rule)."""
        grouped = []
        for message in conversation:
            content = message["content"]
            if isinstance(content, str) or sum(b.get("type") == "image" for b in content) <= MAX_SEPARATE_IMAGES:
                grouped.append(message)
                continue
            frames = [b.get("image") for b in content if b.get("type") == "image"]
            frames = [f.get("image_path") if isinstance(f, dict) else f for f in frames]
            others = [b for b in content if b.get("type") != "image"]
            grouped.append({**message, "content": [{"type": "video", "video": frames}, *others]})
        return grouped

    # -- decoding --------------------------------------------------------------------------------------------------

    def decode(self, token_ids: Tensor | Sequence[int], skip_special_tokens: bool = True, use_think: bool = False
               ) -> str:
        """Text of the new tokens; the reasoning (`<think>...</think>`) is stripped unless use_think=True."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        if not use_think:
            text = re.sub(r"\n\s*\n", "\n\n", _THINK.sub("", text))
        if skip_special_tokens:
            for token in self.tokenizer.all_special_tokens:
                text = text.replace(token, "")
        return text.strip()

    def batch_decode(self, sequences: Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True,
                     use_think: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens, use_think) for ids in sequences]


def _render_block(block: dict) -> str:
    kind = block.get("type")
    if kind == "text":
        return block["text"]
    if kind == "image":
        prefix = f"Time {round(block['timestamp'], 1)}s: " if "timestamp" in block else ""
        return f"{prefix}{IMAGE_TOKEN}\n"
    if kind in ("video", "3d"):
        count = block.get("num_frames", 1)
        times = block.get("timestamps")
        frames = [(f"Time {round(times[i], 1)}s:" if times else "") + IMAGE_TOKEN for i in range(count)]
        return ",".join(frames) + "\n"
    raise InputError(f"unknown content type {kind!r}; Hulu-Med takes text, image, video and 3d blocks")


def _with_think_suffix(conversation: list[dict]) -> list[dict]:
    """The conversation with the step-by-step suffix after the last user message's text."""
    conversation = [dict(message) for message in conversation]
    for message in reversed(conversation):
        if message["role"] != "user":
            continue
        if isinstance(message["content"], str):
            message["content"] = f"{message['content']}\n{THINK_SUFFIX}"
        else:
            message["content"] = [*message["content"], {"type": "text", "text": f"\n{THINK_SUFFIX}"}]
        break
    return conversation


def _resize_bicubic(frames: Tensor | list[Tensor], height: int, width: int) -> Tensor:
    """Bicubic resize of uint8 frames (T, 3, H, W) through PIL (as transformers' resize does for uint8) -> float."""
    resized = [frame.permute(1, 2, 0).numpy() if frame.shape[-2:] == (height, width) else
               np.asarray(Image.fromarray(frame.permute(1, 2, 0).numpy()).resize((width, height),
                                                                                 Image.Resampling.BICUBIC))
               for frame in frames]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------------------------------------------
# zoo run


def run_hulumed(name: str, args: Any) -> None:
    """`zoo run hulu-med-* --prompt TEXT [--image PATH ...] [--video PATH] [--volume PATH] [--think]`."""
    from zoo.factory import from_pretrained
    from zoo.registry import split_name

    if not args.prompt:
        raise InputError("zoo run needs --prompt for a vision-language model")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint:
        source, revision = args.checkpoint, None
    else:
        entry, tag = split_name(name)
        source, revision = entry.source(tag).hub_id, entry.source(tag).revision
    model = from_pretrained(source, family="hulumed", revision=revision, dtype=args.dtype or "auto", device=device)
    processor = HuluMedProcessor.from_pretrained(source, revision=revision)
    content: list[dict] = [{"type": "image", "image": path} for path in args.image]
    if args.video:
        content.append({"type": "video", "video": args.video})
    if getattr(args, "volume", None):
        content.append({"type": "3d", "3d": args.volume})
    content.append({"type": "text", "text": args.prompt})
    think = bool(getattr(args, "think", False))
    inputs = processor(conversation=[{"role": "user", "content": content}], think=think)
    inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.lm_head.weight.dtype)
    stop = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens,
                            eos_token_id=sorted({stop, processor.tokenizer.eos_token_id} - {None}))
    print(processor.decode(output[0], use_think=think))
