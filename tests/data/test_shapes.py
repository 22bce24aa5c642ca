"""The embedded shapes datasets: deterministic per (seed, split, index), valid samples of each kind, and the
registry of embedded names."""

import numpy as np
import pytest
import torch

from zoo.data import EMBEDDED, load_dataset
from zoo.data.shapes import (
    CELLS,
    COLORS,
    KINDS,
    ShapesCaptions,
    ShapesClassification,
    ShapesRestoration,
    ShapesVQA,
    SmallShapesVQA,
    gaussian_blur,
)
from zoo.errors import ConfigError, InputError

ALL = [ShapesClassification, ShapesVQA, SmallShapesVQA, ShapesCaptions, ShapesRestoration]


def same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("cls", ALL)
def test_items_are_a_function_of_seed_split_and_index(cls):
    data = cls(num_samples=20, image_size=32, seed=3)
    forward = [data[i] for i in range(20)]
    backward = [data[i] for i in reversed(range(20))][::-1]
    for a, b in zip(forward, backward):
        same(a, b)  # the access order does not matter
    same(cls(num_samples=5, image_size=32, seed=3)[4], forward[4])  # nor the dataset length
    other_seed = cls(num_samples=20, image_size=32, seed=4)[0]
    other_split = cls(num_samples=20, image_size=32, seed=3, split="eval")[0]
    key = "clean" if cls is ShapesRestoration else "image"
    assert not torch.equal(other_seed[key], forward[0][key])
    assert not torch.equal(other_split[key], forward[0][key])


def test_classification_samples():
    data = ShapesClassification(num_samples=200, image_size=32)
    labels = [data[i]["label"] for i in range(200)]
    image = data[0]["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert data.num_classes == len(KINDS) == 4
    assert set(labels) == set(range(4))
    assert min(np.bincount(labels)) > 30  # roughly balanced


def test_vqa_questions_cycle_types_and_answers_are_consistent():
    data = ShapesVQA(num_samples=400, image_size=64)
    samples = [data[i] for i in range(400)]
    assert [s["type"] for s in samples[:4]] == ["color", "shape", "count", "position"]
    for sample in samples:
        assert sample["answer"] in ShapesVQA.answers[sample["type"]]
        assert sample["image"].shape == (3, 64, 64)
    for kind in ShapesVQA.answers:
        answers = {s["answer"] for s in samples if s["type"] == kind}
        assert answers == set(ShapesVQA.answers[kind]), kind  # every answer occurs
    chance = ShapesVQA.chance_accuracy()
    assert chance["color"] == 1 / len(COLORS) and chance["position"] == 1 / len(CELLS)
    assert 0.25 < chance["overall"] < 0.3


def test_vqa_counts_many_shapes_and_binding_asks_about_one_of_many():
    plain = ShapesVQA(num_samples=80, image_size=64)
    binding = ShapesVQA(num_samples=80, image_size=64, binding=True)

    def shapes_in(image):  # pixels of any shape colour
        return sum(int(((image.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max(0).values < 30).sum() > 30)
                   for rgb in COLORS.values())

    samples = [plain[i] for i in range(80)]
    assert all(shapes_in(s["image"]) == 1 for s in samples if s["type"] != "count")
    assert all(shapes_in(s["image"]) == int(s["answer"]) for s in samples if s["type"] == "count")
    assert max(shapes_in(binding[i]["image"]) for i in range(0, 80, 4)) == 3


def _shape_pixels(image, colour):
    return int(((image.int() - torch.tensor(COLORS[colour]).view(3, 1, 1)).abs().max(0).values < 30).sum())


def test_small_shapes_vqa_counts_up_to_four_small_shapes():
    data = SmallShapesVQA(num_samples=200)
    samples = [data[i] for i in range(200)]
    assert samples[0]["image"].shape == (3, 128, 128)
    for kind in SmallShapesVQA.answers:
        assert {s["answer"] for s in samples if s["type"] == kind} == set(SmallShapesVQA.answers[kind]), kind
    assert SmallShapesVQA.chance_accuracy()["count"] == 0.25
    for sample in samples[:40]:
        areas = [_shape_pixels(sample["image"], colour) for colour in COLORS]
        drawn = [a for a in areas if a > 20]
        # one shape (or the counted ones, in distinct colours), each covering 1-8% of the image
        assert len(drawn) == (int(sample["answer"]) if sample["type"] == "count" else 1), (sample, areas)
        assert all(0.01 < area / 128**2 < 0.08 for area in drawn), areas
        if sample["type"] == "color":
            assert areas[list(COLORS).index(sample["answer"])] > 20


def test_vqa_answers_match_the_pixels():
    """The colour answer is the colour of the pixels where the named shape is drawn."""
    data = ShapesVQA(num_samples=40, image_size=64)
    for index in range(0, 40, 4):  # colour questions
        sample = data[index]
        rgb = torch.tensor(COLORS[sample["answer"]]).view(3, 1, 1)
        close = ((sample["image"].int() - rgb).abs().max(0).values < 30).sum()
        assert close > 30, sample


def test_restoration_pairs():
    pair = ShapesRestoration(num_samples=3, image_size=32)[0]
    assert pair["clean"].shape == pair["degraded"].shape == (3, 32, 32)
    assert pair["clean"].dtype == torch.float32 and 0 <= pair["degraded"].min() and pair["degraded"].max() <= 1
    assert (pair["clean"] - pair["degraded"]).abs().mean() > 0.005
    sr = ShapesRestoration(num_samples=3, image_size=32, scale=2)[1]
    assert sr["degraded"].shape == (3, 16, 16) and sr["clean"].shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="divisor"):
        ShapesRestoration(image_size=30, scale=4)


def test_captions_name_the_shapes():
    sample = ShapesCaptions(num_samples=5, image_size=32)[2]
    assert sample["caption"].startswith("a ") and any(kind in sample["caption"] for kind in KINDS)
    assert any(cell in sample["caption"] for cell in CELLS)


def test_gaussian_blur_keeps_the_mean_and_smooths():
    image = torch.rand(3, 16, 16)
    blurred = gaussian_blur(image, 1.0)
    assert blurred.shape == image.shape
    assert abs(blurred.mean() - image.mean()) < 0.02
    assert blurred.std() < image.std()
    assert torch.equal(gaussian_blur(image, 0.0), image)


def test_bad_options():
    with pytest.raises(ConfigError, match="split"):
        ShapesVQA(split="validation-2")
    with pytest.raises(ConfigError, match="num_samples"):
        ShapesVQA(num_samples=0)
    with pytest.raises(IndexError):
        ShapesVQA(num_samples=2)[2]


def test_load_embedded_by_name():
    assert set(EMBEDDED) == {"shapes", "shapes-vqa", "shapes-vqa-small", "shapes-captions", "shapes-restoration",
                             "shapes-sr", "procedural-text", "documents", "unit-mix", "lightfield-sr"}
    train = load_dataset("shapes-vqa", "vqa", num_samples=10, image_size=32, eval_samples=6)
    evaluation = load_dataset("shapes-vqa", "vqa", split="eval", num_samples=10, image_size=32, eval_samples=6)
    assert len(train) == 10 and len(evaluation) == 6 and evaluation.split == "eval"
    assert load_dataset("shapes-sr", "restoration", num_samples=2, image_size=32)[0]["degraded"].shape[-1] == 16
    with pytest.raises(InputError, match="holds classification samples, but this task needs vqa"):
        load_dataset("shapes", "vqa")
    with pytest.raises(InputError, match="Did you mean 'shapes-vqa'"):
        load_dataset("shapes-vq", "vqa")
    with pytest.raises(ConfigError, match="does not take"):
        load_dataset("shapes", "classification", colours=3)
