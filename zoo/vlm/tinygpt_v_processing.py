"""TinyGPT-V's processor and `zoo run` entry: BLIP-2's eval transform, the stage's prompt template, `<ImageHere>`
expansion and Phi-2's tokenizer.

Images are resized to the stage's square size with PIL's bicubic filter (224 px for stages 1-3, 448 px for stage 4),
scaled to [0, 1] and normalised with CLIP's mean and std, as LAVIS's `blip2_image_eval`. A prompt holds one
`<ImageHere>` per image (the templates put it inside `<Img>...</Img>`); the text around it is tokenized piece by
piece, without special tokens, and each `<ImageHere>` becomes `num_query_tokens` copies of the model's
`image_token_id`, whose embeddings the model replaces with the image's projected query outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zoo.errors import InputError
from zoo.vlm.smolvlm_processing import ImageInput, load_image

IMAGE_PLACEHOLDER = "<ImageHere>"
IMAGE_SLOT = f"<Img>{IMAGE_PLACEHOLDER}</Img>"
PROMPT_TEMPLATES = {"minigpt4": "###Human: {} ###Assistant: ", "minigpt_v2": "[INST] {} [/INST]"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("*.json", "*.txt", "*.model")


class TinyGPTVProcessor:
    """Prompts with images -> TinyGPT-V inputs (input_ids, attention_mask, pixel_values).

    Args:
        tokenizer: Phi-2's transformers tokenizer (`AutoTokenizer.from_pretrained("microsoft/phi-2")`).
        image_size: the stage's square input size. num_query_tokens, image_token_id: the model's.
        arch: "minigpt4" (stages 1-3) or "minigpt_v2" (stage 4); picks the prompt template unless one is given.
    """

    def __init__(self, tokenizer: Any, image_size: int = 448, num_query_tokens: int = 32,
                 image_token_id: int = 51199, arch: str = "minigpt_v2", prompt_template: str | None = None):
        if arch not in PROMPT_TEMPLATES:
            raise InputError(f"arch must be one of {', '.join(PROMPT_TEMPLATES)}, got {arch!r}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_query_tokens = num_query_tokens
        self.image_token_id = image_token_id
        self.prompt_template = prompt_template or PROMPT_TEMPLATES[arch]

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, **overrides: Any) -> TinyGPTVProcessor:
        """The processor of a TinyGPT-V model (its image size, query count, image token and arch)."""
        config = model.config
        settings = dict(image_size=config.vision.image_size, num_query_tokens=config.num_query_tokens,
                        image_token_id=config.image_token_id, arch=config.arch)
        return cls(tokenizer, **{**settings, **overrides})

    def prompt(self, question: str) -> str:
        """The stage's single-turn prompt for one image and a question."""
        return self.prompt_template.format(f"{IMAGE_SLOT} {question}")

    def preprocess_image(self, image: ImageInput) -> torch.Tensor:
        """An image -> (3, S, S) float32: bicubic resize (PIL), [0, 1], CLIP mean/std."""
        pixels = Image.fromarray(load_image(image).permute(1, 2, 0).numpy())
        resized = pixels.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)
        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
        return (tensor - mean) / std

    def token_ids(self, prompt: str) -> list[int]:
        """A prompt's ids, each `<ImageHere>` expanded to the image's query tokens."""
        ids: list[int] = []
        for index, piece in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
            if index:
                ids += [self.image_token_id] * self.num_query_tokens
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids

    def __call__(self, text: str | Sequence[str], images: Sequence[ImageInput] | None = None,
                 padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Prompts (each with one `<ImageHere>` per image, images in prompt order) -> input_ids and attention_mask
        (B, L), padded on `padding_side` with the tokenizer's pad (or EOS) token, and pixel_values (N, 3, S, S).

        Pad on the right for a forward pass (the model numbers positions 0..L-1 like the official code); generate
        takes either side.
        """
        prompts = [text] if isinstance(text, str) else list(text)
        images = list(images or [])
        placeholders = sum(prompt.count(IMAGE_PLACEHOLDER) for prompt in prompts)
        if placeholders != len(images):
            raise InputError(f"the prompts hold {placeholders} {IMAGE_PLACEHOLDER} but {len(images)} image(s) were "
                             f"given; put one {IMAGE_PLACEHOLDER} (e.g. processor.prompt(question)) per image")
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = [self.token_ids(prompt) for prompt in prompts]
        if not all(rows):
            raise InputError("a prompt is empty: it needs at least one token or image")
        length = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.full((len(rows), length), pad or 0, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        for row, ids in enumerate(rows):
            span = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
            input_ids[row, span], attention_mask[row, span] = torch.tensor(ids), 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if images:
            inputs["pixel_values"] = torch.stack([self.preprocess_image(image) for image in images])
        return inputs

    def decode(self, token_ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True) -> str:
        """The answer's text: decoded, cut at the next turn's `###` as the official chat does, stripped."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        return text.split("###")[0].strip()


def load_tokenizer(source: str | Path) -> Any:
    """Phi-2's tokenizer from a folder, or from a Hub repo (only its tokenizer files are downloaded)."""
    from transformers import AutoTokenizer

    from zoo import hub

    folder = Path(source).expanduser()
    if not folder.is_dir():
        folder = hub.download(str(source), allow_patterns=list(TOKENIZER_FILES))
    return AutoTokenizer.from_pretrained(folder)


def run(name: str, args: Any) -> None:
    """`zoo run tinygpt-v[.stageN] --image PATH --prompt TEXT`: print the model's answer about the image."""
    from zoo.factory import create, from_pretrained
    from zoo.registry import split_name
    from zoo.vlm.tinygpt_v import PHI_REPO

    if not args.prompt:
        raise InputError("zoo run needs --prompt for a vision-language model")
    if len(args.image) != 1:
        raise InputError(f"zoo run tinygpt-v takes one --image, got {len(args.image)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint:
        model = from_pretrained(args.checkpoint, family="tinygpt_v", dtype=args.dtype or "auto", device=device)
        has_tokenizer = any((Path(args.checkpoint) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer_source = args.checkpoint if has_tokenizer else PHI_REPO
    else:
        entry, tag = split_name(name)
        model = create(name, pretrained=True, dtype=args.dtype, device=device)
        tokenizer_source = entry.source(tag).parts.get("llm", PHI_REPO)
    context = model.config.text.max_position_embeddings
    processor = TinyGPTVProcessor.for_model(model, load_tokenizer(tokenizer_source))
    inputs = processor(processor.prompt(args.prompt), images=args.image)
    if inputs["input_ids"].shape[1] + args.max_new_tokens > context:
        raise InputError(f"--max-new-tokens {args.max_new_tokens} and the {inputs['input_ids'].shape[1]}-token prompt "
                         f"exceed the model's {context}-token context; ask for fewer")
    inputs = {key: value.to(device) for key, value in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.llama_proj.weight.dtype)
    eos = processor.tokenizer.eos_token_id
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, cache="static",
                            eos_token_id=eos if eos is not None else None)
    print(processor.decode(output[0, inputs["input_ids"].shape[1]:]))
