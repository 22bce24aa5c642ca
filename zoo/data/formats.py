"""Loaders for the usual user formats, giving the same samples as the embedded datasets.

    ImageFolder     root/<class name>/*.png|jpg|...         -> {"image", "label"} (classes sorted by name)
    JsonlDataset    one JSON object per line, image paths relative to the file:
                        {"image", "question", "answer"}     -> VQA ("video" or "volume": a path, for Hulu-Med)
                        {"image", "caption"}                -> captions (text-to-image)
                        {"image", "label"}                  -> classification (int, or names mapped in sorted order)
                        {"degraded", "clean"}               -> restoration pairs
    HFDataset       a Hugging Face `datasets` dataset ("hf:NAME[:SPLIT]", or a folder written by `save_to_disk`),
                    with its columns mapped onto the names above; needs `pip install datasets`.

Images are returned as uint8 tensors (3, H, W), restoration pairs as float tensors in [0, 1], resized to
`image_size` (a square) when it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from zoo.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The kind of samples each key set gives, checked in this order.
JSONL_KINDS = (
    ("vqa", ("image", "question", "answer")),
    ("captions", ("image", "caption")),
    ("classification", ("image", "label")),
    ("restoration", ("degraded", "clean")),
)
# What a VQA sample may ask about instead of an image: a video file or a 3D volume (NIfTI file, DICOM folder).
VQA_MEDIA = ("image", "video", "volume")


def read_image(path: str | Path, image_size: int | None = None) -> torch.Tensor:
    """An image file -> (3, H, W) uint8 RGB (EXIF orientation applied), resized to image_size x image_size if given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Image file not found: {path}")
    try:
        with Image.open(path) as image:
            return to_image_tensor(ImageOps.exif_transpose(image), image_size)
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"Cannot read image {path}: {error}") from error


def to_image_tensor(image: Any, image_size: int | None = None) -> torch.Tensor:
    """A PIL image, a (H, W, 3) uint8 array or a (3, H, W) uint8 tensor -> (3, H, W) uint8, optionally resized."""
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.uint8:
        if image_size is None or tuple(image.shape[1:]) == (image_size, image_size):
            return image
        image = Image.fromarray(image.permute(1, 2, 0).numpy())
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"Expected an image (PIL image, uint8 array or tensor), got {type(image).__name__}")
    image = image.convert("RGB")
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


class ImageFolder(Dataset):
    """Classification images in one sub-folder per class: root/cat/1.png, root/dog/2.jpg, ...

    `classes` are the names of the sub-folders holding images (at any depth), sorted; `label` is the index into them.
    """

    kind = "classification"

    def __init__(self, root: str | Path, image_size: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"Image folder not found: {self.root}")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        images = {folder: [f for f in sorted(folder.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
                  for folder in folders}
        class_dirs = [folder for folder in folders if images[folder]]  # sub-folders without images are no class
        self.samples = [(file, index) for index, folder in enumerate(class_dirs) for file in images[folder]]
        if not self.samples:
            loose = [p.name for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES][:3]
            hint = (f" It holds images directly ({', '.join(loose)}, ...): put them in one sub-folder per class."
                    if loose else "")
            raise InputError(
                f"{self.root} is not an image folder: expected one sub-folder per class holding images "
                f"({', '.join(IMAGE_SUFFIXES)}).{hint}"
            )
        self.classes = tuple(folder.name for folder in class_dirs)
        self.image_size = image_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        return {"image": read_image(path, self.image_size), "label": label}


class JsonlDataset(Dataset):
    """A JSON Lines file of samples; image paths are relative to the file's folder (or absolute).

    The kind of samples comes from the keys of the first line (see `JSONL_KINDS`); every line must have them.
    Classification labels may be integers or names (mapped to indices in sorted order, listed in `classes`).
    """

    def __init__(self, path: str | Path, image_size: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"JSONL file not found: {self.path}")
        self.records = []
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise InputError(f"{self.path}:{number} is not valid JSON ({error.msg}).") from error
                if not isinstance(record, dict):
                    raise InputError(f"{self.path}:{number} must be a JSON object, got {type(record).__name__}.")
                self.records.append(record)
        if not self.records:
            raise InputError(f"{self.path} holds no samples.")
        first = set(self.records[0])
        if {"question", "answer"} <= first and first & {"video", "volume"}:
            first.add("image")  # VQA about a video or a 3D volume (Hulu-Med): the sample holds its path
        matches = [(kind, keys) for kind, keys in JSONL_KINDS if set(keys) <= first]
        if not matches:
            formats = "; ".join("{" + ", ".join(f'"{k}"' for k in keys) + "}" for _, keys in JSONL_KINDS)
            raise InputError(
                f"{self.path}: cannot tell what its samples are from the keys {sorted(first)}. "
                f"Each line needs one of: {formats}."
            )
        self.kind, self.keys = matches[0]
        for number, record in enumerate(self.records, 1):
            visual = self.kind == "vqa" and any(key in record for key in VQA_MEDIA)
            missing = [key for key in self.keys if key not in record and not (key == "image" and visual)]
            if missing:
                raise InputError(f"{self.path}: sample {number} has no {', '.join(missing)} (a {self.kind} file).")
        self.classes: tuple[str, ...] = ()
        if self.kind == "classification":
            labels = [record["label"] for record in self.records]
            if all(isinstance(label, str) for label in labels):
                self.classes = tuple(sorted(set(labels)))
            elif not all(isinstance(label, int) and label >= 0 for label in labels):
                raise InputError(f"{self.path}: labels must all be class names or all non-negative integers.")
        self.image_size = image_size

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return max(record["label"] for record in self.records) + 1

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.path.parent / path

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        if self.kind == "restoration":
            degraded = read_image(self._path(record["degraded"])).float() / 255
            clean = read_image(self._path(record["clean"])).float() / 255
            return {"degraded": degraded, "clean": clean}
        if self.kind == "vqa" and "image" not in record:
            media = next(key for key in VQA_MEDIA if key in record)
            return {media: str(self._path(record[media])), "question": str(record["question"]),
                    "answer": str(record["answer"])}
        sample = {"image": read_image(self._path(record["image"]), None if self.kind == "vqa" else self.image_size)}
        if self.kind == "vqa":
            sample.update(question=str(record["question"]), answer=str(record["answer"]))
        elif self.kind == "captions":
            sample["caption"] = str(record["caption"])
        else:
            label = record["label"]
            sample["label"] = self.classes.index(label) if self.classes else int(label)
        return sample


# Column names tried, in order, for each field of a sample.
HF_COLUMNS = {
    "image": ("image", "img", "jpg", "png", "pixel_values"),
    "label": ("label", "labels", "fine_label", "class"),
    "question": ("question", "query", "prompt"),
    "answer": ("answer", "answers", "response"),
    "caption": ("caption", "text", "captions", "prompt"),
}
HF_KINDS = {"classification": ("image", "label"), "vqa": ("image", "question", "answer"),
            "captions": ("image", "caption")}


class HFDataset(Dataset):
    """A Hugging Face `datasets` dataset with its columns mapped to zoo's sample fields (`HF_COLUMNS`).

    `source` is "NAME" or "NAME:SPLIT" for `datasets.load_dataset` (the Hub or its cache), or a folder written by
    `Dataset.save_to_disk`. `kind` is what the task needs: classification, vqa or captions.
    """

    def __init__(self, source: str, kind: str, split: str = "train", image_size: int | None = None,
                 columns: dict[str, str] | None = None):
        try:
            import datasets
        except ImportError as error:
            raise InputError("Reading Hugging Face datasets needs `datasets`: pip install datasets") from error
        if kind not in HF_KINDS:
            raise InputError(f"Hugging Face datasets can give {', '.join(HF_KINDS)} samples, not {kind}.")
        name, _, named_split = source.partition(":")
        try:
            if Path(name).is_dir():
                loaded = datasets.load_from_disk(name)
            else:
                loaded = datasets.load_dataset(name, split=named_split or split)
        except Exception as error:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
            raise InputError(f"Cannot load the Hugging Face dataset '{source}': {error}") from error
        if isinstance(loaded, datasets.DatasetDict):
            wanted = named_split or split
            if wanted not in loaded:
                raise InputError(f"'{source}' has no split '{wanted}'; it has {', '.join(loaded)}.")
            loaded = loaded[wanted]
        self.data = loaded
        self.kind = kind
        self.image_size = image_size
        self.columns = {}
        available = list(loaded.column_names)
        for field in HF_KINDS[kind]:
            column = (columns or {}).get(field) or next((c for c in HF_COLUMNS[field] if c in available), None)
            if column not in available:
                raise InputError(
                    f"'{source}' has no column for '{field}' (tried {', '.join(HF_COLUMNS[field])}); its columns are "
                    f"{', '.join(available)}. Map it with data_options: {{columns: {{{field}: NAME}}}}."
                )
            self.columns[field] = column
        self.classes: tuple[str, ...] = ()
        if kind == "classification":
            feature = loaded.features.get(self.columns["label"])
            self.classes = tuple(getattr(feature, "names", None) or ())

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return int(max(self.data[self.columns["label"]])) + 1

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.data[index]
        sample: dict[str, Any] = {}
        for field, column in self.columns.items():
            value = row[column]
            if field == "image":
                value = to_image_tensor(value, None if self.kind == "vqa" else self.image_size)
            elif field == "label":
                value = int(value)
            else:
                value = value[0] if isinstance(value, (list, tuple)) and value else value
                value = str(value)
            sample[field] = value
        return sample

