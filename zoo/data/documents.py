"""Rendered documents: text images paired with their text, generated on the fly from a seed. Nothing is downloaded.

Every item is a pure function of `(seed, split, index)`, as in `zoo.data.shapes`. A document is one to `max_words`
words of a seeded vocabulary, laid out in lines in a DejaVu font shipped with matplotlib (sans, serif or mono,
regular or bold), dark ink on a light page, placed with a little jitter and pixel noise.

    RenderedDocuments   {"image": uint8 (3, S, S), "caption": its text}
    UnitMix             UNIT's training mixture: documents (even items, at `document_size`) and natural-image
                        stand-ins (odd items: captioned shapes at `image_size`), each with a "source" field
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from zoo.errors import ConfigError

from .shapes import ShapesCaptions, item_rng

FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansMono-Bold.ttf")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def vocabulary(size: int, seed: int = 0) -> list[str]:
    """`size` distinct pseudo-words of 3 to 6 lowercase letters, the same for every split of a seed."""
    rng = np.random.default_rng([seed, 7919])
    words: list[str] = []
    while len(words) < size:
        word = "".join(rng.choice(list(LETTERS), size=int(rng.integers(3, 7))))
        if word not in words:
            words.append(word)
    return words


@lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def render_text(text: str, size: int, rng: np.random.Generator, noise: float = 6.0) -> torch.Tensor:
    """`text` (words separated by spaces) laid out on a `size` square page: the largest font of a random DejaVu face
    that fits (at most `size` / 3 px), greedy line breaks, a random left and top margin. uint8 (3, size, size)."""
    face = FONTS[int(rng.integers(len(FONTS)))]
    paper = int(rng.integers(215, 256))
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    words = text.split()
    margin = max(1, size // 16)
    for font_size in range(max(size // 3, 6), 5, -1):
        font = _font(face, font_size)
        lines, line = [], ""
        for word in words:
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > size - 2 * margin:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
        ascent, descent = font.getmetrics()
        height = len(lines) * (ascent + descent)
        width = max(font.getlength(item) for item in lines)
        if width <= size - 2 * margin and height <= size - 2 * margin:
            break
    image = Image.new("RGB", (size, size), (paper,) * 3)
    draw = ImageDraw.Draw(image)
    left = margin + int(rng.integers(0, int(size - 2 * margin - width) + 1))
    top = margin + int(rng.integers(0, int(size - 2 * margin - height) + 1))
    for row, item in enumerate(lines):
        draw.text((left, top + row * (ascent + descent)), item, font=font, fill=ink)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, size=(size, size, 3))
    return torch.from_numpy(np.clip(pixels, 0, 255).round().astype(np.uint8)).permute(2, 0, 1).contiguous()


class RenderedDocuments(Dataset):
    """`num_samples` documents of one split: 1 to `max_words` words of a `vocabulary_size` vocabulary, rendered on a
    `image_size` square page; `caption` is the text."""

    def __init__(self, num_samples: int = 1000, image_size: int = 64, seed: int = 0, split: str = "train",
                 vocabulary_size: int = 200, max_words: int = 1):
        if num_samples < 1 or image_size < 16 or vocabulary_size < 1 or max_words < 1:
            raise ConfigError(f"RenderedDocuments needs num_samples >= 1, image_size >= 16, vocabulary_size >= 1 and "
                              f"max_words >= 1; got {num_samples}, {image_size}, {vocabulary_size}, {max_words}.")
        item_rng(seed, split, 0)  # validates the split
        self.num_samples, self.image_size, self.seed, self.split = num_samples, image_size, seed, split
        self.words = vocabulary(vocabulary_size, seed)
        self.max_words = max_words

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} samples")
        rng = item_rng(self.seed, self.split, index)
        count = int(rng.integers(1, self.max_words + 1))
        text = " ".join(self.words[int(i)] for i in rng.integers(len(self.words), size=count))
        return {"image": render_text(text, self.image_size, rng), "caption": text}


class UnitMix(Dataset):
    """UNIT's data: documents (item 2k: document k, rendered at `document_size`, "source": "document") and natural
    images (item 2k + 1: captioned shapes at `image_size`, "source": "image")."""

    def __init__(self, num_samples: int = 1000, image_size: int = 32, document_size: int = 64, seed: int = 0,
                 split: str = "train", vocabulary_size: int = 200, max_words: int = 1):
        documents = (num_samples + 1) // 2
        self.documents = RenderedDocuments(documents, document_size, seed, split, vocabulary_size, max_words)
        self.images = ShapesCaptions(max(num_samples - documents, 1), image_size, seed, split)
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} samples")
        if index % 2 == 0:
            return {**self.documents[index // 2], "source": "document"}
        return {**self.images[index // 2], "source": "image"}
