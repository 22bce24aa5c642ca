"""Loaders for user data: an image folder, JSON Lines of each sample kind, Hugging Face datasets (when installed),
and the errors for paths that do not exist or hold the wrong format."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data import load_dataset
from zoo.data.formats import ImageFolder, JsonlDataset
from zoo.errors import InputError


def save_image(path, seed, size=(20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_image_folder(tmp_path):
    tmp_path = tmp_path / "data"
    save_image(tmp_path / "cats" / "a.png", 0)
    save_image(tmp_path / "cats" / "b.jpg", 1)
    save_image(tmp_path / "dogs" / "deep" / "c.png", 2)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()  # no images: not a class
    data = ImageFolder(tmp_path, image_size=16)
    assert data.classes == ("cats", "dogs") and data.num_classes == 2 and len(data) == 3
    assert [data[i]["label"] for i in range(3)] == [0, 0, 1]
    assert data[0]["image"].shape == (3, 16, 16) and data[0]["image"].dtype == torch.uint8
    assert ImageFolder(tmp_path)[0]["image"].shape == (3, 20, 30)


def test_image_folder_with_train_and_eval_splits(tmp_path):
    tmp_path = tmp_path / "data"
    for split, count in (("train", 3), ("val", 1)):
        for index in range(count):
            save_image(tmp_path / split / f"class{index % 2}" / f"{index}.png", index)
    assert len(load_dataset(tmp_path, "classification", image_size=8)) == 3
    assert len(load_dataset(tmp_path, "classification", split="eval", image_size=8)) == 1
    assert load_dataset(tmp_path / "train", "classification", split="eval") is None  # no eval split: none


def test_image_folder_errors(tmp_path):
    tmp_path = tmp_path / "data"
    save_image(tmp_path / "loose.png", 0)
    with pytest.raises(InputError, match="one sub-folder per class.*loose.png"):
        ImageFolder(tmp_path)
    with pytest.raises(InputError, match="folders are read as classification data"):
        load_dataset(tmp_path, "vqa")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_vqa_captions_classification_and_restoration(tmp_path):
    pixels = save_image(tmp_path / "img" / "a.png", 0)
    save_image(tmp_path / "img" / "b.png", 1)
    vqa = JsonlDataset(write_jsonl(tmp_path / "vqa.jsonl", [
        {"image": "img/a.png", "question": "What is it?", "answer": "noise"},
        {"image": str(tmp_path / "img" / "b.png"), "question": "And this?", "answer": 2},
    ]))
    assert vqa.kind == "vqa" and len(vqa) == 2
    assert np.array_equal(vqa[0]["image"].permute(1, 2, 0).numpy(), pixels)  # VQA keeps the original size
    assert vqa[1]["answer"] == "2"
    captions = JsonlDataset(write_jsonl(tmp_path / "captions.jsonl", [{"image": "img/a.png", "caption": "static"}]),
                            image_size=8)
    assert captions.kind == "captions" and captions[0]["caption"] == "static"
    assert captions[0]["image"].shape == (3, 8, 8)
    named = JsonlDataset(write_jsonl(tmp_path / "labels.jsonl", [
        {"image": "img/a.png", "label": "zebra"}, {"image": "img/b.png", "label": "ant"}]))
    assert named.kind == "classification" and named.classes == ("ant", "zebra") and named[0]["label"] == 1
    pairs = JsonlDataset(write_jsonl(tmp_path / "pairs.jsonl", [{"degraded": "img/a.png", "clean": "img/b.png"}]))
    assert pairs.kind == "restoration" and pairs[0]["clean"].dtype == torch.float32
    assert load_dataset(tmp_path / "vqa.jsonl", "vqa", split="eval") is None
    assert len(load_dataset(tmp_path / "vqa.jsonl", "vqa", split="eval", eval_data=tmp_path / "vqa.jsonl")) == 2


def test_jsonl_errors(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"image": "a.png", "question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(InputError, match="broken.jsonl:2 is not valid JSON"):
        JsonlDataset(tmp_path / "broken.jsonl")
    with pytest.raises(InputError, match="cannot tell what its samples are"):
        JsonlDataset(write_jsonl(tmp_path / "odd.jsonl", [{"picture": "a.png", "text": "x"}]))
    with pytest.raises(InputError, match="sample 2 has no answer"):
        JsonlDataset(write_jsonl(tmp_path / "partial.jsonl", [
            {"image": "a.png", "question": "q", "answer": "a"}, {"image": "a.png", "question": "q"}]))
    with pytest.raises(InputError, match="holds no samples"):
        JsonlDataset(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(InputError, match="holds captions samples, but this task needs vqa"):
        load_dataset(write_jsonl(tmp_path / "c.jsonl", [{"image": "a.png", "caption": "x"}]), "vqa")
    data = JsonlDataset(write_jsonl(tmp_path / "missing.jsonl", [{"image": "nope.png", "caption": "x"}]))
    with pytest.raises(InputError, match="Image file not found"):
        data[0]


def test_paths_that_do_not_exist_or_have_the_wrong_format(tmp_path):
    with pytest.raises(InputError, match="neither an embedded dataset nor an existing path"):
        load_dataset(tmp_path / "nowhere", "classification")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="is a .csv file"):
        load_dataset(tmp_path / "data.csv", "classification")


def test_hugging_face_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)) for value in (0, 128, 255)]
    data = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 1], "text": ["a", "b", "c"]})
    data = data.cast_column("label", datasets.ClassLabel(names=["dark", "light"]))
    datasets.DatasetDict({"train": data, "test": data.select([0])}).save_to_disk(str(tmp_path / "hf"))
    train = load_dataset(tmp_path / "hf", "classification", image_size=8)
    assert len(train) == 3 and train.classes == ("dark", "light") and train[1]["label"] == 1
    assert train[2]["image"].shape == (3, 8, 8) and int(train[2]["image"].min()) == 255
    assert len(load_dataset(tmp_path / "hf", "classification", split="eval")) == 1
    assert load_dataset(tmp_path / "hf", "captions")[0]["caption"] == "a"
    with pytest.raises(InputError, match="no column for 'question'"):
        load_dataset(tmp_path / "hf", "vqa")
