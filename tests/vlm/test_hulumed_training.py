"""`zoo train hulu-med-tiny --task vlm-sft`: image, video and volume samples from a JSONL (token reduction active, the
pruned tokens leaving the labels too), full and LoRA fine-tuning, and the embedded shapes-vqa data."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from train.config import TrainConfig
from train.hulumed_sft import HuluMedSFTTask
from train.loop import fit
from train.tasks import IGNORE_INDEX, get_task
from zoo.vlm.hulumed_processing import HuluMedProcessor

nibabel = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    """Three samples: an image, a 4-frame video whose frames 1-2 repeat frame 0, and a volume of 6 slices."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / "xray.png")
    with av.open(str(folder / "endoscopy.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        still = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
        for index in range(4):
            frame = still if index < 3 else 255 - still
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    volume = np.zeros((32, 32, 6), np.float32)
    volume[8:24, 8:24, 2:4] = 1000.0
    volume += rng.normal(0, 1, volume.shape).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(folder / "ct.nii.gz"))
    lines = [{"image": "xray.png", "question": "Which organ?", "answer": "lung"},
             {"video": "endoscopy.mp4", "question": "Any bleeding?", "answer": "no"},
             {"volume": "ct.nii.gz", "question": "Lesion?", "answer": "yes"}]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _config(tmp_path, data, **fields) -> TrainConfig:
    defaults = dict(task="vlm-sft", data=str(data), batch_size=3, max_steps=8, lr=3e-3, warmup_steps=0,
                    eval_every=0, save_every=0, log_every=1, output_dir=str(tmp_path), seed=0,
                    data_options={"eval_data": str(data)}, eval_samples=3)
    return TrainConfig("hulu-med-tiny", **{**defaults, **fields})


def test_a_batch_of_image_video_and_volume_is_pruned_and_labelled(jsonl):
    from zoo.data import load_dataset

    task = get_task("vlm-sft")
    task.check_entry(zoo.registry.get_entry("hulu-med-tiny"), "hulumed")
    assert isinstance(task, HuluMedSFTTask)
    dataset = load_dataset(str(jsonl), "vqa")
    model = zoo.create("hulu-med-tiny")
    task.setup(model, dataset, __import__("train.tasks", fromlist=["ModelSource"]).ModelSource(
        "hulu-med-tiny", None, None, None, False))
    samples = [{**task.encode(dataset[i]), "sample_id": i} for i in range(3)]
    assert [s["modals"] for s in samples] == [["image"], ["video"], ["video"]]
    batch = task.collate(samples)
    answers_before = int((batch["labels"] != IGNORE_INDEX).sum())
    lengths = batch["attention_mask"].sum(1).tolist()
    pruned = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], None, batch["pixel_values"],
                                  batch["grid_sizes"], batch["merge_sizes"], batch["modals"])
    kept = pruned.attention_mask.sum(1).tolist()
    assert kept[0] == lengths[0] and kept[1] < lengths[1] and kept[2] < lengths[2]  # the image keeps every token
    logits = task.forward(model, batch)
    assert logits.shape[:2] == batch["labels"].shape == pruned.input_ids.shape
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == answers_before  # only <image> tokens were pruned
    answer = task.processor.tokenizer.decode(batch["labels"][2][batch["labels"][2] != IGNORE_INDEX])
    assert answer == "yes<|im_end|>"
    loss, _ = task.criterion(logits, batch)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fine_tuning_on_image_video_and_volume_samples_lowers_the_loss(jsonl, tmp_path, lora):
    config = _config(tmp_path, jsonl, **({"lora_rank": 4, "lr": 1e-2} if lora else {}))
    result = fit(config)
    losses = result.losses
    assert len(losses) == 8 and losses[-1] < (0.95 if lora else 0.8) * losses[0], losses
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert 0 <= result.metrics["exact_match"] <= 1  # greedy answers to the three questions were generated
    saved = result.model_dir
    reloaded = zoo.from_pretrained(saved)
    processor = HuluMedProcessor.from_pretrained(saved)
    assert processor.patch_size == reloaded.config.vision.patch_size and processor.max_tokens == 256
