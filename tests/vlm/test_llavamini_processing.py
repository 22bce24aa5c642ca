"""LLaVA-Mini processor (against transformers' PIL CLIPImageProcessor and the release's rules) and `zoo run`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.vlm.test_smolvlm_processing import random_image, write_video
from zoo.cli import main
from zoo.errors import InputError
from zoo.vlm.llavamini_processing import (
    LlavaMiniProcessor, build_llama_byte_tokenizer, split_image, video_frame_indices,
)
from zoo.vlm.smolvlm_processing import build_byte_tokenizer

transformers = pytest.importorskip("transformers")

CROP = 32
SIZES = [(32, 32), (48, 80), (90, 41), (33, 35)]  # (height, width)


@pytest.fixture(scope="module")
def tokenizer():
    return build_llama_byte_tokenizer()


def _clip_reference():
    return transformers.CLIPImageProcessorPil(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP})


def _padded(image: Image.Image, fill) -> Image.Image:
    """The image centred on a square canvas of the mean colour, offsets rounded down."""
    pixels = np.asarray(image)
    side = max(pixels.shape[:2])
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = fill
    top, left = (side - pixels.shape[0]) // 2, (side - pixels.shape[1]) // 2
    canvas[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
    return Image.fromarray(canvas)


@pytest.mark.parametrize("aspect", ["square", "pad"])
@pytest.mark.parametrize("size", SIZES)
def test_images_match_transformers_clip(tokenizer, aspect, size):
    processor = LlavaMiniProcessor(tokenizer, crop_size=CROP, image_aspect_ratio=aspect)
    image = random_image(*size)
    reference = _clip_reference()
    if aspect == "pad":
        image_in = _padded(image, tuple(int(x * 255) for x in reference.image_mean))
    else:
        image_in = image
    expected = reference(image_in, return_tensors="pt")["pixel_values"]
    got = processor.preprocess_image(image)
    assert got.shape == (1, 3, CROP, CROP)
    assert (got - expected).abs().max() < 1e-5


def test_high_resolution_crops(tokenizer):
    image = random_image(70, 90)
    parts = split_image(image, 2)
    pixels = np.asarray(image)
    assert len(parts) == 5 and parts[-1] is image
    assert np.array_equal(np.asarray(parts[1]), pixels[:35, 45:90])  # row 0, column 1
    assert np.array_equal(np.asarray(parts[2]), pixels[35:70, :45])
    processor = LlavaMiniProcessor(tokenizer, crop_size=CROP, resolution_ratio=2)
    got = processor.preprocess_image(image)
    expected = _clip_reference()(parts, return_tensors="pt")["pixel_values"]
    assert got.shape == (5, 3, CROP, CROP) and (got - expected).abs().max() < 1e-5


def test_video_sampling_follows_the_release():
    # 10 s at 25 fps: 10 frames, the middle of each of 10 segments of [0, 249] (24.9 frames each)
    assert video_frame_indices(250, 25.0) == [12, 37, 62, 87, 112, 136, 161, 186, 211, 236]
    assert video_frame_indices(12, 4.0) == [2, 5, 9]  # segments of 11 / 3: (0 + 4) // 2, (4 + 7) // 2, (7 + 11) // 2
    assert video_frame_indices(3, 30.0) == [1]  # shorter than a second: one frame
    with pytest.raises(InputError, match="no frames"):
        video_frame_indices(0, 30.0)


def test_video_file_frames(tokenizer, tmp_path):
    write_video(tmp_path / "clip.mp4", num_frames=12, fps=4)
    processor = LlavaMiniProcessor(tokenizer, crop_size=CROP)
    video = processor.preprocess_video(tmp_path / "clip.mp4")
    assert video.shape == (3, 1, 3, CROP, CROP)
    # frames are squashed to the crop size (nearest), then CLIP-normalised: the second sampled frame is frame 5
    import av

    with av.open(str(tmp_path / "clip.mp4")) as container:
        frame = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][5]
    resized = torch.nn.functional.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None].float(), size=(CROP, CROP))
    expected = _clip_reference()(Image.fromarray(resized[0].permute(1, 2, 0).to(torch.uint8).numpy()),
                                 return_tensors="pt")["pixel_values"][0]
    assert (video[1, 0] - expected).abs().max() < 1e-5
    with pytest.raises(InputError, match="no frames"):
        processor.preprocess_video(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(InputError, match="Video file not found"):
        processor.preprocess_video(tmp_path / "missing.mp4")


def test_prompt_and_placeholder(tokenizer):
    processor = LlavaMiniProcessor(tokenizer, crop_size=CROP)
    prompt = processor.apply_chat_template("What is it?")
    assert prompt == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + processor.system_prompt
                      + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = processor.tokenize(prompt)
    before, after = prompt.split("<image>")
    assert ids == tokenizer(before).input_ids + [-200] + tokenizer(after).input_ids
    assert processor.stop_token_ids == [tokenizer.convert_tokens_to_ids("<|eot_id|>")]


def test_bos_of_later_chunks_is_dropped():
    bos_tokenizer = build_byte_tokenizer(add_bos=True)
    processor = LlavaMiniProcessor(bos_tokenizer, crop_size=CROP)
    ids = processor.tokenize("ab<image>cd")
    bos = bos_tokenizer.bos_token_id
    assert ids == [bos, *bos_tokenizer("ab", add_special_tokens=False).input_ids, -200,
                   *bos_tokenizer("cd", add_special_tokens=False).input_ids]


def test_batch_is_left_padded_and_checked(tokenizer):
    processor = LlavaMiniProcessor(tokenizer, crop_size=CROP)
    prompts = [processor.apply_chat_template("Hi?"), processor.apply_chat_template("What colour is it?")]
    inputs = processor(prompts, images=[random_image(40, 40), random_image(30, 50)])
    assert inputs["images"].shape == (2, 1, 3, CROP, CROP)
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][:, -1].all()
    with pytest.raises(InputError, match="holds 2 <image> placeholders"):
        processor("<image><image>?", images=random_image(40, 40))
    with pytest.raises(InputError, match="holds 0 <image> placeholders"):
        processor("?", images=random_image(40, 40))
    with pytest.raises(InputError, match="1 images/videos for 2 prompts"):
        processor(prompts, images=[random_image(40, 40)])


@pytest.fixture
def checkpoint(tmp_path):
    tokenizer = build_llama_byte_tokenizer()
    torch.manual_seed(0)
    model = zoo.create("llava-mini-tiny").eval()
    folder = model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(folder)
    random_image(60, 45).save(tmp_path / "photo.png")
    write_video(tmp_path / "clip.mp4", num_frames=12, fps=4)
    return model, folder, tmp_path


@pytest.mark.parametrize("media", ["image", "video"])
def test_zoo_run(checkpoint, capsys, media):
    model, folder, where = checkpoint
    path = where / ("photo.png" if media == "image" else "clip.mp4")
    code = main(["run", "llava-mini-tiny", "--checkpoint", str(folder), f"--{media}", str(path), "--prompt",
                 "What is it?", "--max-new-tokens", "6", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    processor = LlavaMiniProcessor.for_model(model.config, folder)
    inputs = processor(processor.apply_chat_template("What is it?"), **{f"{media}s": str(path)})
    assert inputs["images"].shape[:2] == ((1, 1) if media == "image" else (1, 3))
    output = model.generate(**inputs, max_new_tokens=6, eos_token_id=processor.stop_token_ids)
    assert printed == processor.decode(output[0, inputs["input_ids"].shape[1]:]).strip()


def test_zoo_run_errors(checkpoint, capsys):
    _, folder, where = checkpoint
    args = ["run", "llava-mini-tiny", "--checkpoint", str(folder), "--prompt", "?"]
    assert main(args) == 2
    assert "--image PATH or --video PATH" in capsys.readouterr().err
    assert main(args + ["--image", str(where / "photo.png"), "--video", str(where / "clip.mp4")]) == 2
    assert "one --image or one --video" in capsys.readouterr().err
    assert main(args + ["--image", str(where / "missing.png")]) == 2
    assert "Image file not found" in capsys.readouterr().err


def test_training_samples_keep_one_bos():
    """Inference keeps tokenizer_image_token's two BOS (template + tokenizer); training drops one, as the release."""
    from zoo.vlm.llavamini_processing import LlavaMiniSFT

    tokenizer = build_byte_tokenizer(add_bos=True)
    tokenizer.chat_template = "<|im_start|>{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    handler = LlavaMiniSFT(zoo.create("llava-mini-tiny"))
    handler.processor = LlavaMiniProcessor(tokenizer, crop_size=CROP)
    bos = tokenizer.bos_token_id
    prompt = handler.processor.apply_chat_template("Hi?")
    assert handler.processor.tokenize(prompt)[:3] == [bos, bos, tokenizer.convert_tokens_to_ids("Y")]
    sample = handler.encode({"image": random_image(40, 40), "question": "Hi?", "answer": "no"})
    assert sample["input_ids"][:2].tolist() == [bos, tokenizer.convert_tokens_to_ids("Y")]
    assert (sample["labels"] != -100).sum() == len(tokenizer("no|", add_special_tokens=False).input_ids)
