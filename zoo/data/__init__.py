"""Embedded datasets that need no download, and loaders for the usual user formats.

`load_dataset(name_or_path, kind)` gives a map-style dataset of samples of one kind:

    classification   {"image": uint8 (3, H, W), "label": int}
    vqa              {"image": uint8 (3, H, W), "question": str, "answer": str}
    captions         {"image": uint8 (3, H, W), "caption": str}
    restoration      {"degraded": float (3, h, w), "clean": float (3, H, W)}, in [0, 1]
    text             {"text": str}

from an embedded dataset name (`EMBEDDED`), an image folder, a `.jsonl` file (or a `.txt` file for text), or
`hf:NAME[:SPLIT]` / a `datasets.save_to_disk` folder (Hugging Face `datasets`, when installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from zoo.errors import ConfigError, InputError, closest

from .documents import RenderedDocuments, UnitMix
from .formats import HFDataset, ImageFolder, JsonlDataset
from .lightfield import SyntheticLightFields
from .shapes import ShapesCaptions, ShapesClassification, ShapesRestoration, ShapesVQA, SmallShapesVQA
from .text import ProceduralText, TextFile

KINDS = ("classification", "vqa", "captions", "restoration", "text")

# name -> (class, kind, fixed options, what it is)
EMBEDDED: dict[str, tuple[type, str, dict[str, Any], str]] = {
    "shapes": (ShapesClassification, "classification", {}, "one shape per image, 4 classes (its kind)"),
    "shapes-vqa": (ShapesVQA, "vqa", {}, "questions about the colour, kind, count and position of 1-3 shapes"),
    "shapes-vqa-small": (SmallShapesVQA, "vqa", {}, "the shapes-vqa questions about small shapes on a 128 px image "
                         "(1-4 to count): needs visual detail"),
    "shapes-captions": (ShapesCaptions, "captions", {}, "1-2 shapes with a caption, for text-to-image"),
    "shapes-restoration": (ShapesRestoration, "restoration", {}, "blurred and noisy / clean pairs"),
    "shapes-sr": (ShapesRestoration, "restoration", {"scale": 2}, "blurred, 2x downsampled, noisy / clean pairs"),
    "procedural-text": (ProceduralText, "text", {}, "short paragraphs of sums, counting and object facts"),
    "documents": (RenderedDocuments, "captions", {}, "rendered words (DejaVu fonts) captioned with their text"),
    "unit-mix": (UnitMix, "captions", {}, "UNIT's mixture: rendered documents and captioned shapes"),
    "lightfield-sr": (SyntheticLightFields, "restoration", {}, "5x5-view light fields of textured planes at "
                      "several depths, Y mosaics; LR by MATLAB bicubic imresize"),
}
EVAL_SPLITS = ("eval", "val", "validation", "test")


def describe_embedded() -> str:
    return "; ".join(f"{name} ({kind}: {about})" for name, (_, kind, _, about) in EMBEDDED.items())


def load_dataset(
    name_or_path: str | Path,
    kind: str,
    split: str = "train",
    seed: int = 0,
    **options: Any,
) -> Dataset | None:
    """The `split` ("train" or "eval") of a dataset giving `kind` samples.

    Embedded datasets take their options (num_samples, image_size, ...) and `seed`; their eval split is a disjoint
    stream of the same generator. Image folders and HF datasets take `image_size` (resize) and, for their eval split,
    an `eval` / `val` / `validation` / `test` sub-folder or split when there is one; a `.jsonl` file takes its eval
    split from `eval_data` (another file) in `options`. Returns None for an eval split that does not exist.
    Errors (an unknown name, a missing path, a file of the wrong format or kind) are raised as InputError.
    """
    if kind not in KINDS:
        raise ConfigError(f"Unknown sample kind '{kind}'; kinds: {', '.join(KINDS)}.")
    name = str(name_or_path)
    options = dict(options)
    eval_data = options.pop("eval_data", None)
    if name in EMBEDDED:
        cls, own_kind, fixed, _ = EMBEDDED[name]
        _check_kind(name, own_kind, kind)
        if split == "eval":
            options["num_samples"] = options.pop("eval_samples", options.get("num_samples", 200))
        options.pop("eval_samples", None)
        options.pop("columns", None)
        try:
            return cls(seed=seed, split=split, **{**options, **fixed})
        except TypeError as error:
            raise ConfigError(f"Dataset '{name}' does not take these options ({error}).") from error
    image_size = options.get("image_size")
    if name.startswith("hf:"):
        source = name[3:]
        if split == "eval" and ":" in source:
            return None  # NAME:SPLIT names the one split to read
        return _hf_dataset(source, kind, split, image_size, options.get("columns"))
    path = Path(name).expanduser()
    if not path.exists():
        hint = closest(name, EMBEDDED)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        raise InputError(
            f"Dataset '{name}' is neither an embedded dataset nor an existing path.{suggestion} "
            f"Embedded: {describe_embedded()}. Or give an image folder, a .jsonl file, or hf:NAME."
        )
    if path.is_dir() and _is_saved_hf_dataset(path):
        if split == "eval" and not (path / "dataset_dict.json").is_file():
            return None  # a single saved split: no eval split
        return _hf_dataset(str(path), kind, split, image_size, options.get("columns"))
    if path.is_dir() and kind == "restoration" and next(path.rglob("*.h5"), None) is not None:
        from .lightfield import BasicLFSRTrainingSet  # BasicLFSR's prepared light-field patches

        return None if split == "eval" else BasicLFSRTrainingSet(path, seed=seed)
    if path.is_dir():
        if kind != "classification":
            raise InputError(
                f"{path} is a folder; folders are read as classification data (one sub-folder per class), but "
                f"this task needs {kind} samples. Give a .jsonl file instead (see zoo.data.formats)."
            )
        sub = {p.name: p for p in path.iterdir() if p.is_dir()}
        train_dir = sub.get("train")
        eval_dir = next((sub[s] for s in EVAL_SPLITS if s in sub), None)
        if split == "eval":
            return ImageFolder(eval_dir, image_size) if train_dir is not None and eval_dir is not None else None
        return ImageFolder(train_dir if train_dir is not None and eval_dir is not None else path, image_size)
    if path.suffix.lower() in (".txt", ".jsonl") and kind == "text":
        if split == "eval":
            return TextFile(Path(eval_data).expanduser()) if eval_data is not None else None
        return TextFile(path)
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise InputError(
            f"{path} is a {path.suffix or 'suffix-less'} file; zoo reads datasets from a .jsonl file, an image "
            f"folder, hf:NAME or an embedded name ({', '.join(EMBEDDED)})."
        )
    if split == "eval":
        if eval_data is None:
            return None
        path = Path(eval_data).expanduser()
    dataset = JsonlDataset(path, image_size)
    _check_kind(str(path), dataset.kind, kind)
    return dataset


def dataset_kind(name_or_path: str) -> str | None:
    """The kind of an embedded dataset, else None (paths are checked when they are loaded)."""
    entry = EMBEDDED.get(str(name_or_path))
    return entry[1] if entry else None


def _check_kind(name: str, own_kind: str, kind: str) -> None:
    if own_kind != kind:
        fitting = [n for n, (_, k, _, _) in EMBEDDED.items() if k == kind]
        raise InputError(
            f"Dataset '{name}' holds {own_kind} samples, but this task needs {kind} samples"
            + (f" (e.g. {', '.join(fitting)})." if fitting else ".")
        )


def _is_saved_hf_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _hf_dataset(source: str, kind: str, split: str, image_size: int | None, columns: dict | None) -> HFDataset | None:
    """The `split` of a Hugging Face dataset; for "eval", its first split named in EVAL_SPLITS, or None."""
    if split != "eval":
        return HFDataset(source, kind, split, image_size, columns)
    for name in EVAL_SPLITS:
        try:
            return HFDataset(source, kind, name, image_size, columns)
        except InputError:
            continue
    return None


__all__ = [
    "EMBEDDED", "KINDS", "HFDataset", "ImageFolder", "JsonlDataset", "ProceduralText", "RenderedDocuments",
    "ShapesCaptions", "ShapesClassification", "ShapesRestoration", "ShapesVQA", "SmallShapesVQA", "TextFile", "UnitMix",
    "load_dataset",
]
