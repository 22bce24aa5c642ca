"""Procedural shapes datasets: generated on the fly, deterministically, from a seed. Nothing is downloaded.

Every item is a pure function of `(seed, split, index)`: item `i` is the same whatever was read before it and in
whichever process reads it, so a sampler position fully defines the data stream (resuming a run replays it
exactly). A scene is a `image_size` square split into a 2 x 2 grid of cells; each shape (a circle, square,
triangle or diamond in red, green, blue or yellow) sits inside one cell, on a light background with a little
pixel noise.

    ShapesClassification   one shape per image; the label is its kind (4 classes)
    ShapesVQA              questions about the colour, kind, count and position of shapes, with short answers
    SmallShapesVQA         the same questions about small shapes on a larger image (1-4 to count): needs visual detail
    ShapesRestoration      (degraded, clean) pairs: blur, noise and optionally downsampling (super-resolution)
    ShapesCaptions         1-2 shapes with a caption such as "a red circle at the top left", for text-to-image

Images are uint8 tensors (3, H, W); restoration pairs are float tensors in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from zoo.errors import ConfigError

KINDS = ("circle", "square", "triangle", "diamond")  # distinct initials: the first answer token decides
COLORS = {"red": (220, 45, 45), "green": (40, 165, 70), "blue": (45, 90, 225), "yellow": (235, 200, 35)}
CELLS = ("top left", "top right", "bottom left", "bottom right")
SPLITS = {"train": 0, "eval": 1, "test": 2}
QUESTION_TYPES = ("color", "shape", "count", "position")


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    cell: int  # index into CELLS
    center: tuple[float, float]  # (x, y) in pixels
    size: float  # half-width in pixels


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one item: independent of every other item, of the access order and of the process."""
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}'; use one of {', '.join(SPLITS)}.")
    return np.random.default_rng([seed, SPLITS[split], index])


def sample_shapes(rng: np.random.Generator, image_size: int, count: int, distinct_colors: bool = True,
                  jitter: float = 1.0, size: tuple[float, float] = (0.24, 0.38)) -> list[Shape]:
    """`count` shapes of distinct kinds in distinct cells (and distinct colours unless told otherwise).

    A shape's half-width is a fraction `size` of its cell; its centre is the cell's centre moved by up to `jitter`
    times the room left (1: anywhere in the cell, 0: centred).
    """
    kinds = rng.choice(len(KINDS), count, replace=False)
    colors = rng.choice(len(COLORS), count, replace=not distinct_colors)
    cells = rng.choice(len(CELLS), count, replace=False)
    cell_size = image_size / 2
    shapes = []
    for kind, color, cell in zip(kinds, colors, cells):
        half = cell_size * rng.uniform(*size)
        room = max(cell_size / 2 - half - cell_size * 0.06, 0.0) * jitter
        x = (cell % 2 + 0.5) * cell_size + rng.uniform(-room, room)
        y = (cell // 2 + 0.5) * cell_size + rng.uniform(-room, room)
        shapes.append(Shape(KINDS[kind], list(COLORS)[color], int(cell), (x, y), half))
    return shapes


def render(shapes: Sequence[Shape], image_size: int, rng: np.random.Generator, noise: float = 6.0) -> torch.Tensor:
    """The shapes drawn on a light background with Gaussian pixel noise (std `noise` grey levels): (3, S, S) uint8."""
    background = tuple(int(v) for v in rng.integers(200, 246, 3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        x, y = shape.center
        s = shape.size
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x - s, y - s, x + s, y + s), fill=fill)
        elif shape.kind == "square":
            side = s * 0.9
            draw.rectangle((x - side, y - side, x + side, y + side), fill=fill)
        elif shape.kind == "triangle":
            draw.polygon([(x, y - s), (x - s, y + s * 0.8), (x + s, y + s * 0.8)], fill=fill)
        elif shape.kind == "diamond":
            draw.polygon([(x, y - s), (x + s * 0.8, y), (x, y + s), (x - s * 0.8, y)], fill=fill)
    pixels = np.asarray(image, dtype=np.float32)
    if noise:
        pixels = pixels + rng.normal(0.0, noise, pixels.shape)
    return torch.from_numpy(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


class _ShapesDataset(Dataset):
    """`num_samples` items of one split, each a pure function of (seed, split, index)."""

    jitter: float = 1.0  # see sample_shapes
    shape_size: tuple[float, float] = (0.24, 0.38)

    def __init__(self, num_samples: int = 1000, image_size: int = 64, seed: int = 0, split: str = "train",
                 jitter: float | None = None, shape_size: tuple[float, float] | None = None):
        if num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
        if image_size < 16:
            raise ConfigError(f"image_size must be at least 16 pixels, got {image_size}")
        item_rng(seed, split, 0)  # validates the split
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.jitter = type(self).jitter if jitter is None else float(jitter)
        self.shape_size = tuple(shape_size or type(self).shape_size)
        if not 0 <= self.jitter <= 1 or not 0 < self.shape_size[0] <= self.shape_size[1] <= 0.44:
            raise ConfigError(f"jitter must be in [0, 1] and shape_size within (0, 0.44], got {jitter}, {shape_size}")

    def shapes(self, rng: np.random.Generator, count: int) -> list[Shape]:
        return sample_shapes(rng, self.image_size, count, jitter=self.jitter, size=self.shape_size)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} is out of range for {self.num_samples} samples")
        return self.make(item_rng(self.seed, self.split, index), index)

    def make(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        """Item `index`, drawn from its own generator `rng`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, image_size={self.image_size}, " \
               f"seed={self.seed}, split={self.split!r})"


class ShapesClassification(_ShapesDataset):
    """One large shape per image, in any cell (moved by up to half the room it has) and any colour; `label` is the
    index of its kind in `classes`."""

    classes = KINDS
    jitter = 0.5
    shape_size = (0.32, 0.42)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def make(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        (shape,) = self.shapes(rng, 1)
        return {"image": render([shape], self.image_size, rng), "label": KINDS.index(shape.kind)}


def ask(kind: str, shapes: list[Shape], target: Shape) -> tuple[str, str]:
    """The question of type `kind` about `target` (one of `shapes`) and its answer."""
    if kind == "color":
        return f"What color is the {target.kind}?", target.color
    if kind == "shape":
        return f"Which shape is {target.color}?", target.kind
    if kind == "count":
        return "How many shapes are there?", str(len(shapes))
    return f"Where is the {target.kind}?", CELLS[target.cell]


class ShapesVQA(_ShapesDataset):
    """Images of shapes with one question each and a short answer:

        color     "What color is the circle?"        -> "red" | "green" | "blue" | "yellow"
        shape     "Which shape is blue?"             -> "circle" | "square" | "triangle" | "diamond"
        count     "How many shapes are there?"       -> "1" | "2" | "3"
        position  "Where is the triangle?"           -> "top left" | "top right" | "bottom left" | "bottom right"

    Counting images hold 1-3 shapes (distinct kinds, colours and cells). For the other questions the image holds
    one shape, unless `binding=True`: then it holds 1-3 too, and the answer is about the shape the question names
    (by kind or colour), which a model must find first; a tiny model needs many times longer to learn that.
    Question types come in turn (item i asks type i mod 4), so every batch mixes them evenly. Shapes sit near the
    centres of their cells (`jitter` 0.25) and are large (half-widths 0.34-0.42 of a cell), which makes the set
    learnable by a tiny model in minutes on a CPU (`zoo quickstart`).
    """

    jitter = 0.25
    shape_size = (0.34, 0.42)

    question_types = QUESTION_TYPES
    answers = {
        "color": tuple(COLORS), "shape": KINDS, "count": ("1", "2", "3"), "position": CELLS,
    }

    def __init__(self, num_samples: int = 1000, image_size: int = 64, seed: int = 0, split: str = "train",
                 jitter: float | None = None, shape_size: tuple[float, float] | None = None, binding: bool = False):
        super().__init__(num_samples, image_size, seed, split, jitter, shape_size)
        self.binding = binding

    def make(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        kind = QUESTION_TYPES[index % len(QUESTION_TYPES)]
        count = int(rng.integers(1, 4)) if kind == "count" or self.binding else 1
        shapes = self.shapes(rng, count)
        image = render(shapes, self.image_size, rng)
        question, answer = ask(kind, shapes, shapes[int(rng.integers(len(shapes)))])
        return {"image": image, "question": question, "answer": answer, "type": kind}

    @classmethod
    def chance_accuracy(cls) -> dict[str, float]:
        """Exact match of always giving the most frequent answer of each question type (answers are uniform
        within a type, except counts, whose three values are equally likely too)."""
        per_type = {kind: 1 / len(answers) for kind, answers in cls.answers.items()}
        return {**per_type, "overall": sum(per_type.values()) / len(per_type)}


class SmallShapesVQA(ShapesVQA):
    """ShapesVQA's four question types about small shapes anywhere in their cells, on a larger image (default
    128 px, several tiles or hundreds of patches), for measuring what visual token reduction costs:

        color, shape, position   one shape, a half-width of 0.2-0.3 of its cell (13-19 px at 128 px)
        count                    1-4 such shapes, one per cell           -> "1" | "2" | "3" | "4"

    A shape covers 2-7% of the image (a few tokens of a tile), so pooling the token grid blurs its kind away and
    dropping tokens can drop it (or, when counting, some of the shapes). No binding: the other questions name no
    shape (`binding=True` adds 1-3 distractors as in ShapesVQA).
    """

    jitter = 1.0
    shape_size = (0.2, 0.3)
    answers = {**ShapesVQA.answers, "count": ("1", "2", "3", "4")}

    def __init__(self, num_samples: int = 1000, image_size: int = 128, seed: int = 0, split: str = "train",
                 jitter: float | None = None, shape_size: tuple[float, float] | None = None, binding: bool = False):
        super().__init__(num_samples, image_size, seed, split, jitter, shape_size, binding)

    def make(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        kind = QUESTION_TYPES[index % len(QUESTION_TYPES)]
        count = int(rng.integers(1, len(CELLS) + 1)) if kind == "count" else \
            int(rng.integers(1, 4)) if self.binding else 1
        shapes = self.shapes(rng, count)
        question, answer = ask(kind, shapes, shapes[int(rng.integers(len(shapes)))])
        return {"image": render(shapes, self.image_size, rng), "question": question, "answer": answer, "type": kind}


class ShapesCaptions(_ShapesDataset):
    """1-2 shapes with a caption naming each one's colour, kind and cell, e.g.
    "a red circle at the top left and a blue diamond at the bottom right"."""

    jitter = 0.25
    shape_size = (0.30, 0.38)

    def make(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        shapes = self.shapes(rng, int(rng.integers(1, 3)))
        caption = " and ".join(f"a {s.color} {s.kind} at the {CELLS[s.cell]}" for s in shapes)
        return {"image": render(shapes, self.image_size, rng, noise=0.0), "caption": caption}


class ShapesRestoration(_ShapesDataset):
    """(degraded, clean) pairs for restoration and super-resolution; both float (3, H, W) in [0, 1].

    The clean image is a scene of 1-3 shapes. The degraded one is the clean image blurred (Gaussian, sigma drawn
    from `blur`), downsampled by `scale` (1 keeps the size; `downsample` "area": area average, "bicubic":
    antialiased bicubic, as MATLAB's imresize) and given Gaussian noise (std drawn from `noise`, in [0, 1] units),
    clipped to [0, 1]. `image_size` is the clean size and must be divisible by `scale`.
    """

    def __init__(self, num_samples: int = 1000, image_size: int = 32, seed: int = 0, split: str = "train",
                 scale: int = 1, blur: tuple[float, float] = (0.5, 1.5), noise: tuple[float, float] = (0.0, 0.08),
                 jitter: float | None = None, shape_size: tuple[float, float] | None = None,
                 downsample: str = "area"):
        super().__init__(num_samples, image_size, seed, split, jitter, shape_size)
        if scale < 1 or image_size % scale:
            raise ConfigError(f"scale must be a positive divisor of image_size={image_size}, got {scale}")
        if downsample not in ("area", "bicubic"):
            raise ConfigError(f"downsample must be 'area' or 'bicubic', got {downsample!r}")
        self.scale = scale
        self.downsample = downsample
        self.blur = tuple(blur)
        self.noise = tuple(noise)

    def make(self, rng: np.random.Generator, index: int) -> dict[str, Any]:
        shapes = self.shapes(rng, int(rng.integers(1, 4)))
        clean = render(shapes, self.image_size, rng, noise=0.0).float() / 255
        degraded = gaussian_blur(clean, float(rng.uniform(*self.blur)))
        if self.scale > 1 and self.downsample == "bicubic":
            degraded = torch.nn.functional.interpolate(degraded[None], scale_factor=1 / self.scale, mode="bicubic",
                                                       align_corners=False, antialias=True)[0]
        elif self.scale > 1:
            degraded = torch.nn.functional.avg_pool2d(degraded[None], self.scale)[0]
        sigma = float(rng.uniform(*self.noise))
        degraded = degraded + torch.from_numpy(rng.normal(0.0, sigma, degraded.shape).astype(np.float32))
        return {"degraded": degraded.clamp(0, 1), "clean": clean}


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A (C, H, W) float image blurred by a separable Gaussian of std `sigma` (reflect padding)."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    padded = torch.nn.functional.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = torch.nn.functional.conv2d(padded, horizontal, groups=channels)
    return torch.nn.functional.conv2d(out, vertical, groups=channels)[0]
