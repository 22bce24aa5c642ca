"""`zoo run` for image classifiers (LowFormer, WaveMix): the top-5 classes of each --image, as timm's inference prints.

    zoo run lowformer-b1 --image cat.jpg
    zoo run lowformer-tiny --checkpoint runs/lowformer-tiny-shapes/model --image shape.png

Images are preprocessed as the model's `pretrained_cfg` says, through timm's `resolve_data_config`: the published
source's resize, crop, mean and std, or the normalisation `zoo train` trained the weights with. Classes are named for
ImageNet heads (timm's `ImageNetInfo`) and CIFAR-10; other heads print class indices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoo.errors import InputError
from zoo.factory import create, from_pretrained
from zoo.registry import split_name

TOP_K = 5
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_names(num_classes: int, tag: str | None) -> list[str] | None:
    """Names of the classes of a `num_classes` head: ImageNet's (timm's subsets by size), CIFAR-10's, or None."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is not None:
        info = ImageNetInfo(subset)
        return [info.index_to_description(index) for index in range(num_classes)]
    if tag == "cifar10" and num_classes == len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return None


def load_image(path: str, transform: Any) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(f"--image {path}: cannot read it as an image ({error}).") from None


def image_model(name: str, args: Any, doing: str) -> torch.nn.Module:
    """The model `zoo run NAME --image PATH [...]` runs, in eval mode: its published weights, or `--checkpoint DIR`,
    once the --image paths are checked (`doing` says what the model does with the images, for the error)."""
    if not args.image:
        raise InputError(f"zoo run {name} {doing}: give one or more with --image PATH.")
    missing = [path for path in args.image if not Path(path).is_file()]
    if missing:
        raise InputError(f"--image {missing[0]}: no such file.")
    entry, _ = split_name(name)
    if args.checkpoint:
        model = from_pretrained(args.checkpoint, family=entry.family, dtype=args.dtype or "auto", device=args.device)
    else:
        model = create(name, pretrained=True, dtype=args.dtype, device=args.device)
    return model.eval()


def run(name: str, args: Any) -> None:
    """`zoo run NAME --image PATH [--image PATH ...] [--checkpoint DIR]`: print each image's top-5 classes."""
    from timm.data import create_transform, resolve_data_config

    model = image_model(name, args, "classifies images")
    transform = create_transform(**resolve_data_config(model=model))
    pixels = torch.stack([load_image(path, transform) for path in args.image])
    parameter = next(model.parameters())
    with torch.no_grad():
        probabilities = model(pixels.to(parameter.device, parameter.dtype)).float().softmax(dim=-1)
    names = class_names(probabilities.shape[-1], model.pretrained_cfg.get("tag"))
    top = probabilities.topk(min(TOP_K, probabilities.shape[-1]), dim=-1)
    for path, values, indices in zip(args.image, top.values.tolist(), top.indices.tolist()):
        print(f"{path}:")
        for rank, (probability, index) in enumerate(zip(values, indices), start=1):
            label = f"  {names[index]}" if names else ""
            print(f"  {rank}. {probability * 100:6.2f}%  class {index}{label}")
