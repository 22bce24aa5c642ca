"""TinyGPT-V's processor (BLIP-2 eval transform, stage templates, <ImageHere> expansion) and `zoo run tinygpt-v`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import zoo
from tests.vlm.test_smolvlm_processing import random_image
from zoo.cli import main
from zoo.errors import InputError
from zoo.vlm.smolvlm_processing import build_byte_tokenizer
from zoo.vlm.tinygpt_v_processing import CLIP_MEAN, CLIP_STD, TinyGPTVProcessor


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def _processor(tokenizer, arch="minigpt4", size=56):
    return TinyGPTVProcessor(tokenizer, image_size=size, num_query_tokens=4, image_token_id=298, arch=arch)


@pytest.mark.parametrize("size", [224, 448])
def test_image_transform_is_blip2_eval(tokenizer, size):
    image = random_image(173, 301)
    official = transforms.Compose([transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
                                   transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    pixels = _processor(tokenizer, size=size).preprocess_image(image)
    assert pixels.shape == (3, size, size)
    assert (pixels - official(image)).abs().max() < 1e-5
    from_array = _processor(tokenizer, size=size).preprocess_image(np.asarray(image))
    assert torch.equal(from_array, pixels)


def test_stage_templates_and_image_expansion(tokenizer):
    stage3, stage4 = _processor(tokenizer), _processor(tokenizer, arch="minigpt_v2")
    assert stage3.prompt("What is it?") == "###Human: <Img><ImageHere></Img> What is it? ###Assistant: "
    assert stage4.prompt("What is it?") == "[INST] <Img><ImageHere></Img> What is it? [/INST]"
    inputs = stage3(stage3.prompt("Hi"), images=[random_image(20, 30)])
    expected = (tokenizer("###Human: <Img>", add_special_tokens=False)["input_ids"] + [298] * 4
                + tokenizer("</Img> Hi ###Assistant: ", add_special_tokens=False)["input_ids"])
    assert inputs["input_ids"][0].tolist() == expected
    assert inputs["attention_mask"].all() and inputs["pixel_values"].shape == (1, 3, 56, 56)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_are_padded_on_either_side(tokenizer, side):
    processor = _processor(tokenizer)
    prompts = [processor.prompt("a longer question"), processor.prompt("?")]
    inputs = processor(prompts, images=[random_image(30, 30), random_image(40, 20)], padding_side=side)
    short = len(processor.token_ids(prompts[1]))
    mask = inputs["attention_mask"][1]
    real = mask.nonzero().flatten()
    assert mask.sum() == short and (real[0] == 0 if side == "right" else real[-1] == mask.numel() - 1)
    assert inputs["input_ids"][1][mask.bool()].tolist() == processor.token_ids(prompts[1])
    assert (inputs["input_ids"][1][~mask.bool()] == tokenizer.pad_token_id).all()


def test_placeholders_must_match_the_images(tokenizer):
    processor = _processor(tokenizer)
    with pytest.raises(InputError, match="the prompts hold 1 <ImageHere> but 2 image"):
        processor(processor.prompt("?"), images=[random_image(9, 9)] * 2)


@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    model = zoo.create("tinygpt-v-tiny").eval()
    with torch.no_grad():  # a model that answers something other than its first token over and over
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    folder = model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(folder)
    random_image(90, 120).save(tmp_path / "photo.png")
    return model, folder, tmp_path / "photo.png"


def test_run_answers_about_an_image(checkpoint, tokenizer, capsys):
    model, folder, image = checkpoint
    code = main(["run", "tinygpt-v-tiny", "--checkpoint", str(folder), "--image", str(image), "--prompt",
                 "What is it?", "--max-new-tokens", "6", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    processor = TinyGPTVProcessor.for_model(model, tokenizer)
    inputs = processor(processor.prompt("What is it?"), images=[Image.open(image)])
    output = model.generate(**inputs, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1]:])
    assert printed == answer and answer


def test_run_errors(checkpoint, capsys):
    _, folder, image = checkpoint
    assert main(["run", "tinygpt-v-tiny", "--checkpoint", str(folder), "--image", str(image)]) == 2
    assert "needs --prompt" in capsys.readouterr().err
    assert main(["run", "tinygpt-v-tiny", "--checkpoint", str(folder), "--prompt", "?"]) == 2
    assert "takes one --image, got 0" in capsys.readouterr().err
    assert main(["run", "tinygpt-v-tiny", "--checkpoint", str(folder), "--image", str(image), "--prompt", "?",
                 "--max-new-tokens", "2048", "--device", "cpu"]) == 2
    assert "exceed the model's 2048-token context" in capsys.readouterr().err
