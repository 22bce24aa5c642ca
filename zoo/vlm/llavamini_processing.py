"""LLaVA-Mini processor: CLIP preprocessing, high-resolution crops, video frames at 1 fps, the llava_llama_3_1 prompt.

Images follow the release: with `image_aspect_ratio="pad"` an image is first padded to a square filled with the
mean colour (the image centred), then CLIP's preprocessing (shortest side to the crop size, bicubic, centre crop,
rescale, normalise: transformers' PIL `CLIPImageProcessor`). With `resolution_ratio` N > 1 the image is cut into
N x N equal crops (row-major) followed by the whole image, each preprocessed alone. Videos: `total_frames // fps`
frames (at least one) at the centres of equal segments, each resized to the crop size (nearest), then CLIP's
preprocessing without padding. Prompts: the system prompt and one user turn `"<image>\\n" + question` through the
tokenizer's chat template; `<image>` becomes the placeholder -200 (each text chunk tokenized with the tokenizer's
special tokens, the BOS of later chunks dropped, as the release's `tokenizer_image_token`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from zoo.errors import InputError
from zoo.vlm.llavamini import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from zoo.vlm.smolvlm_processing import build_byte_tokenizer, decode_video, load_image, processor_folder

IMAGE_TOKEN = "<image>"
SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
                 "the user provides, and assist the user with a variety of tasks using natural language.")
STOP_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")  # 128009, 128008, 128001 in Llama 3.1
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Llama 3's header format, for the procedural byte tokenizer (real checkpoints ship their tokenizer's template).
BYTE_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build_llama_byte_tokenizer() -> Any:
    """zoo's procedural byte tokenizer (no download) with Llama 3's header and stop tokens and a Llama 3-style chat
    template: 304 tokens, within `llava-mini-tiny`'s vocabulary of 320. For tests, demos and `zoo train`."""
    tokenizer = build_byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.eos_token = "<|eot_id|>"
    tokenizer.chat_template = BYTE_CHAT_TEMPLATE
    return tokenizer


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """The image centred on a square canvas of its longer side, filled with `fill` (the release's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def split_image(image: Image.Image, n: int) -> list[Image.Image]:
    """N x N equal crops in raster order (the remainder pixels of each side dropped), then the whole image."""
    if n == 1:
        return [image]
    width, height = image.size
    w, h = width // n, height // n
    if w == 0 or h == 0:
        raise InputError(f"an image of {width}x{height} pixels is too small for {n} x {n} crops")
    crops = [image.crop((j * w, i * h, (j + 1) * w, (i + 1) * h)) for i in range(n) for j in range(n)]
    return [*crops, image]


def video_frame_indices(total_frames: int, video_fps: float, fps: float = 1.0) -> list[int]:
    """The release's sampling: T = total_frames // (video_fps / fps) frames (at least 1), the middle frame of each of T
    equal segments of [0, total_frames - 1], with numpy's round-half-to-even."""
    if total_frames < 1:
        raise InputError("the video has no frames")
    count = max(1, min(total_frames, int(total_frames // (video_fps / fps))))
    segment = (total_frames - 1) / count
    return [(int(np.round(segment * i)) + int(np.round(segment * (i + 1)))) // 2 for i in range(count)]


def load_video_frames(path: str | Path, fps: float = 1.0) -> Tensor:
    """The frames (T, 3, H, W) uint8 of a video file that `video_frame_indices` picks (decoded with PyAV)."""
    return decode_video(path, lambda total, rate: video_frame_indices(total, rate, fps))[0]


class LlavaMiniProcessor:
    """Prompts with an image or a video -> `input_ids`, `attention_mask` and `images` for `LlavaMini`.

    Args:
        tokenizer: the checkpoint's tokenizer (Llama 3.1's, with its chat template).
        crop_size / shortest_edge: CLIP's output size and the side the shorter edge is resized to.
        image_aspect_ratio: "pad" (pad to a square with the mean colour first) or "square" (no padding).
        resolution_ratio: N, the model's high-resolution split (N x N crops + the whole image).
    """

    def __init__(
        self,
        tokenizer: Any,
        crop_size: int = 336,
        shortest_edge: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        rescale_factor: float = 1 / 255,
        image_aspect_ratio: str = "square",
        resolution_ratio: int = 1,
        video_fps: float = 1.0,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        if image_aspect_ratio not in ("pad", "square"):
            raise InputError(f"image_aspect_ratio must be 'pad' or 'square', got {image_aspect_ratio!r}")
        self.tokenizer = tokenizer
        self.crop_size = crop_size
        self.shortest_edge = shortest_edge or crop_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.rescale_factor = rescale_factor
        self.image_aspect_ratio = image_aspect_ratio
        self.resolution_ratio = resolution_ratio
        self.video_fps = video_fps
        self.system_prompt = system_prompt

    @classmethod
    def for_model(cls, config: Any, folder_or_repo: str | Path | None = None, **overrides: Any) -> LlavaMiniProcessor:
        """The processor of a LlavaMiniConfig: the tokenizer of `folder_or_repo` (zoo's byte tokenizer when None),
        CLIP's settings from the tower's `preprocessor_config.json` (`config.vision_tower`, or the checkpoint folder),
        or CLIP's defaults at the tower's image size."""
        from transformers import AutoTokenizer

        folder = processor_folder(folder_or_repo) if folder_or_repo is not None else None
        tokenizer = AutoTokenizer.from_pretrained(folder) if folder is not None else build_llama_byte_tokenizer()
        image = _read_preprocessor(folder, config.vision_tower)
        size = image.get("crop_size", config.vision.image_size)
        settings = {
            "crop_size": size["height"] if isinstance(size, dict) else size,
            "shortest_edge": (image.get("size") or {}).get("shortest_edge"),
            "image_mean": image.get("image_mean", CLIP_MEAN),
            "image_std": image.get("image_std", CLIP_STD),
            "rescale_factor": image.get("rescale_factor", 1 / 255),
            "image_aspect_ratio": config.image_aspect_ratio,
            "resolution_ratio": config.resolution_ratio,
        }
        return cls(tokenizer, **{**settings, **overrides})

    @property
    def stop_token_ids(self) -> list[int]:
        """The Llama 3.1 end tokens the tokenizer knows (128009, 128008, 128001), else its EOS."""
        vocab = self.tokenizer.get_vocab()
        ids = [vocab[token] for token in STOP_TOKENS if token in vocab]
        return ids or [self.tokenizer.eos_token_id]

    # --- images and videos ----------------------------------------------------------------------------------------

    def _clip(self, image: Image.Image) -> Tensor:
        """CLIP preprocessing of one RGB image -> (3, crop, crop) float32."""
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != (width, height):
            image = image.resize(size, Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.uint8)
        top, left = (pixels.shape[0] - self.crop_size) // 2, (pixels.shape[1] - self.crop_size) // 2
        pixels = pixels[top:top + self.crop_size, left:left + self.crop_size]
        mean, std = np.array(self.image_mean, np.float32), np.array(self.image_std, np.float32)
        pixels = (pixels.astype(np.float32) * np.float32(self.rescale_factor) - mean) / std
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def _to_pil(self, image: Any) -> Image.Image:
        return Image.fromarray(load_image(image).permute(1, 2, 0).numpy())

    def preprocess_image(self, image: Any) -> Tensor:
        """One image (PIL, path, uint8 array) -> (P, 3, S, S): the N x N crops, then the whole image (P = 1 at N = 1)."""
        image = self._to_pil(image)
        if self.image_aspect_ratio == "pad":
            fill = tuple(int(x * 255) for x in self.image_mean)
            return torch.stack([self._clip(expand_to_square(part, fill))
                                for part in split_image(image, self.resolution_ratio)])
        return torch.stack([self._clip(part) for part in split_image(image, self.resolution_ratio)])

    def preprocess_video(self, video: str | Path | Tensor | Sequence[Any]) -> Tensor:
        """A video file, or its frames ((T, 3, H, W) uint8 or a list of images, taken as already sampled)
        -> (T, P, 3, S, S)."""
        frames = load_video_frames(video, self.video_fps) if isinstance(video, (str, Path)) else video
        if isinstance(frames, Tensor):
            if frames.ndim != 4 or frames.dtype != torch.uint8:
                raise InputError(f"video frames must be (T, 3, H, W) uint8, got {frames.dtype} {tuple(frames.shape)}")
        else:
            frames = [load_image(frame) for frame in frames]
        if len(frames) == 0:
            raise InputError("the video has no frames; pass at least one frame")
        resized = []
        for frame in frames:
            if tuple(frame.shape[-2:]) != (self.crop_size, self.crop_size):
                frame = F.interpolate(frame[None].float(), size=(self.crop_size,) * 2)[0].to(torch.uint8)
            image = Image.fromarray(frame.permute(1, 2, 0).numpy())
            resized.append(torch.stack([self._clip(part) for part in split_image(image, self.resolution_ratio)]))
        return torch.stack(resized)

    # --- prompts --------------------------------------------------------------------------------------------------

    def apply_chat_template(self, question: str, add_generation_prompt: bool = True, answer: str | None = None,
                            image: bool = True) -> str:
        """The llava_llama_3_1 conversation: the system prompt, then the user's `"<image>\\n" + question` (no
        placeholder when `image` is False), then the assistant's `answer` if given. The release's evaluation scripts
        render it with add_generation_prompt=False (no assistant header); its training puts the header before every
        answer, which is what the default gives."""
        messages = [{"role": "system", "content": self.system_prompt},
                    {"role": "user", "content": (IMAGE_TOKEN + "\n" if image else "") + question}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt and answer is None)

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of a prompt, `<image>` -> -200: each chunk tokenized with special tokens, and a BOS that starts a
        later chunk dropped (the release's tokenizer_image_token)."""
        bos = self.tokenizer.bos_token_id
        ids: list[int] = []
        for index, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
            tokens = self.tokenizer(chunk).input_ids
            if index:
                ids.append(IMAGE_TOKEN_INDEX)
                if tokens and bos is not None and tokens[0] == bos:
                    tokens = tokens[1:]
            ids.extend(tokens)
        return ids

    def __call__(self, text: str | Sequence[str], images: Any = None, videos: Any = None) -> dict[str, Tensor]:
        """Prompts (chat-templated, with one `<image>` each) and one image or one video per prompt -> input_ids and
        attention_mask (B, L), left-padded for generation, and images (B, P, 3, S, S) or (B, T, P, 3, S, S)."""
        texts = [text] if isinstance(text, str) else list(text)
        if images is not None and videos is not None:
            raise InputError("pass images or videos, not both: LLaVA-Mini takes one image or one video per prompt")
        media = images if images is not None else videos
        if media is not None and (not isinstance(media, (list, tuple)) or len(texts) == 1 and len(media) != 1):
            media = [media]
        ids = [self.tokenize(prompt) for prompt in texts]
        counts = [row.count(IMAGE_TOKEN_INDEX) for row in ids]
        expected = 0 if media is None else 1
        if media is not None and len(media) != len(texts):
            raise InputError(f"got {len(media)} images/videos for {len(texts)} prompts; pass one per prompt")
        wrong = [i for i, count in enumerate(counts) if count != expected]
        if wrong:
            raise InputError(f"prompt {wrong[0]} holds {counts[wrong[0]]} <image> placeholders but LLaVA-Mini needs "
                             f"{expected} ({'one image or video per prompt' if expected else 'no image was given'}); "
                             "build prompts with apply_chat_template")
        length = max(len(row) for row in ids)
        input_ids = torch.zeros(len(ids), length, dtype=torch.long)  # id 0: pre-fusion masks ids <= 0
        attention_mask = torch.zeros(len(ids), length, dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, length - len(tokens):] = torch.tensor(tokens)
            attention_mask[row, length - len(tokens):] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if images is not None:
            out["images"] = torch.stack([self.preprocess_image(image) for image in media])
        elif videos is not None:
            out["images"] = torch.stack([self.preprocess_video(video) for video in media])
        return out

    def decode(self, token_ids: Tensor | Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)


class LlavaMiniSFT:
    """How the `vlm-sft` training task drives LLaVA-Mini: samples (image, question, answer) -> the llava_llama_3_1
    conversation with the loss on the answer and its end token, images through CLIP's preprocessing, and the loss
    taken on the LLM's sequence (where the placeholder became c^2 tokens), as the release trains."""

    def __init__(self, model: Any, processor_source: str | Path | None = None):
        from zoo.errors import ConfigError

        self.processor = LlavaMiniProcessor.for_model(model.config, processor_source)
        vocab = model.config.text.vocab_size
        if len(self.processor.tokenizer) > vocab:
            size = len(self.processor.tokenizer)
            raise ConfigError(f"The tokenizer has {size} tokens but the model has a vocabulary of {vocab}; build the "
                              f"model with text={{'vocab_size': {size}}} or more.")
        self.stop_ids = self.processor.stop_token_ids
        # Every vlm-sft prompt holds an image, and the release detaches the embeddings it pre-fuses: nothing trains
        # them here (and DDP would stop at a parameter without a gradient).
        model.language_model.embed_tokens.weight.requires_grad_(False)

    def encode(self, sample: dict[str, Any]) -> dict[str, Tensor]:
        question, answer = str(sample["question"]), str(sample["answer"])
        if IMAGE_TOKEN in question:
            raise InputError(f"a question cannot hold the <image> placeholder: {question!r}")
        prompt = self.processor.apply_chat_template(question)
        full = self.processor.apply_chat_template(question, answer=answer)
        completion = full[len(prompt):] if full.startswith(prompt) else answer + STOP_TOKENS[0]
        prompt_ids = torch.tensor(self.processor.tokenize(prompt))
        bos = self.processor.tokenizer.bos_token_id
        if len(prompt_ids) > 1 and prompt_ids[0] == prompt_ids[1] == bos:
            prompt_ids = prompt_ids[1:]  # the template's BOS and the tokenizer's: the release trains with one
        answer_ids = torch.tensor(self.processor.tokenizer(completion, add_special_tokens=False).input_ids)
        return {"input_ids": torch.cat([prompt_ids, answer_ids]),
                "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer_ids]),
                "images": self.processor.preprocess_image(sample["image"])}

    def collate(self, samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Right-padded with id 0 (masked by the attention mask in the LLM and by pre-fusion's ids <= 0)."""
        length = max(len(sample["input_ids"]) for sample in samples)
        input_ids = torch.zeros(len(samples), length, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n], attention_mask[row, :n], labels[row, :n] = sample["input_ids"], 1, sample["labels"]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "images": torch.stack([sample["images"] for sample in samples])}

    def forward(self, model: Any, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The logits over the LLM's sequence and the labels moved with it (pre-fusion never sees the answer)."""
        images = batch["images"].to(next(model.parameters()).dtype)
        prepared = model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"], images, batch["labels"])
        logits = model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask,
                       position_ids=prepared.position_ids)
        return {"logits": logits, "labels": prepared.labels}

    @staticmethod
    def item_outputs(outputs: dict[str, Tensor]) -> Tensor:
        """The logits that predict answer tokens (N, vocab)."""
        return outputs["logits"][:, :-1][outputs["labels"][:, 1:] != IGNORE_INDEX]

    @staticmethod
    def targets(outputs: dict[str, Tensor]) -> Tensor:
        labels = outputs["labels"][:, 1:]
        return labels[labels != IGNORE_INDEX]

    def answer(self, model: Any, images: list[Any], questions: list[str], max_new_tokens: int,
               **generate_options: Any) -> list[str]:
        device = next(model.parameters()).device
        prompts = [self.processor.apply_chat_template(question) for question in questions]
        inputs = {key: value.to(device) for key, value in self.processor(prompts, images=images).items()}
        inputs["images"] = inputs["images"].to(next(model.parameters()).dtype)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids,
                                **generate_options)
        new = output[:, inputs["input_ids"].shape[1]:]
        return [self.processor.decode(row).strip() for row in new]

    def save_pretrained(self, folder: str | Path) -> None:
        """The tokenizer and CLIP's settings, so that the trained folder runs with `zoo run --checkpoint`."""
        folder = Path(folder)
        self.processor.tokenizer.save_pretrained(folder)
        processor = self.processor
        settings = {"crop_size": {"height": processor.crop_size, "width": processor.crop_size},
                    "size": {"shortest_edge": processor.shortest_edge}, "image_mean": list(processor.image_mean),
                    "image_std": list(processor.image_std), "rescale_factor": processor.rescale_factor,
                    "image_processor_type": "CLIPImageProcessor"}
        (folder / "preprocessor_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def _read_preprocessor(folder: Path | None, tower: str) -> dict:
    """CLIP's image-processor settings: the checkpoint folder's preprocessor_config.json, else the tower's."""
    candidates = [folder] if folder is not None else []
    if tower:
        local = Path(tower).expanduser()
        if local.is_dir():
            candidates.append(local)
        elif tower.count("/") == 1:
            from zoo.errors import HubError
            from zoo.hub import download

            try:
                candidates.append(download(tower, allow_patterns=["preprocessor_config.json"]))
            except HubError:
                pass  # CLIP's defaults at the tower's size: what every LLaVA tower uses
    for candidate in candidates:
        path = candidate / "preprocessor_config.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return {}


def run(name: str, args: Any) -> None:
    """`zoo run llava-mini-* --prompt TEXT (--image PATH | --video PATH)`: print the model's answer."""
    from zoo.factory import create, from_pretrained
    from zoo.registry import split_name

    if not args.prompt:
        raise InputError("zoo run needs --prompt for a vision-language model")
    if len(args.image) > 1 or (args.image and args.video):
        raise InputError("LLaVA-Mini answers about one image or one video: pass one --image or one --video")
    if not args.image and not args.video:
        raise InputError("pass --image PATH or --video PATH")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint:
        source = args.checkpoint
        model = from_pretrained(source, family="llavamini", dtype=args.dtype or "auto", device=device)
    else:
        entry, tag = split_name(name)
        source = entry.source(tag).hub_id
        model = create(name, pretrained=True, dtype=args.dtype, device=device)
    processor = LlavaMiniProcessor.for_model(model.config, source)
    prompt = processor.apply_chat_template(args.prompt)
    if args.video:
        inputs = processor(prompt, videos=args.video)
    else:
        inputs = processor(prompt, images=args.image[0])
    inputs = {key: value.to(device) for key, value in inputs.items()}
    inputs["images"] = inputs["images"].to(model.lm_head.weight.dtype)
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, eos_token_id=processor.stop_token_ids,
                            cache="static")
    print(processor.decode(output[0, inputs["input_ids"].shape[1]:]).strip())
