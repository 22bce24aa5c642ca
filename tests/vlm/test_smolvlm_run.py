"""`zoo run smolvlm-*`: load a checkpoint folder with its tokenizer, answer about an image, clear errors."""

from __future__ import annotations

import json

import pytest

import zoo
from tests.vlm.test_smolvlm_processing import random_image
from zoo.cli import main
from zoo.vlm.smolvlm_processing import SmolVLMProcessor
from zoo.vlm.smolvlm_processing import build_byte_tokenizer as make_tokenizer


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny SmolVLM saved with its tokenizer and image-processor settings, as a published folder would be."""
    tokenizer = make_tokenizer()
    model = zoo.create("smolvlm-tiny", image_token_id=tokenizer.convert_tokens_to_ids("<image>")).eval()
    folder = model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"longest_edge": 128}, "max_image_size": {"longest_edge": 64}, "do_image_splitting": True,
         "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255}))
    random_image(90, 120).save(tmp_path / "photo.png")
    return model, folder, tmp_path / "photo.png"


def test_run_answers_about_an_image(checkpoint, capsys):
    model, folder, image = checkpoint
    code = main(["run", "smolvlm-tiny", "--checkpoint", str(folder), "--image", str(image), "--prompt",
                 "What is it?", "--max-new-tokens", "6", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out.strip()

    processor = SmolVLMProcessor.from_pretrained(folder, image_seq_len=model.config.image_seq_len,
                                                 max_image_size=64)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True)
    assert prompt == "<|im_start|>User:<image>What is it?<end_of_utterance>\nAssistant:"
    inputs = processor(text=prompt, images=[str(image)])
    assert inputs["pixel_values"].shape[1] == 2 * 2 + 1  # 128 px longest edge, 64 px tiles, plus the global view
    stop = [processor.tokenizer.convert_tokens_to_ids("<end_of_utterance>")]
    output = model.generate(**inputs, max_new_tokens=6, eos_token_id=stop)
    assert printed == processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_run_errors(checkpoint, capsys):
    _, folder, _ = checkpoint
    assert main(["run", "smolvlm-tiny", "--checkpoint", str(folder), "--image", "missing.png", "--prompt", "?"]) == 2
    assert "Image file not found: missing.png" in capsys.readouterr().err
    assert main(["run", "smolvlm-tiny", "--checkpoint", str(folder), "--image", "missing.png"]) == 2
    assert "needs --prompt" in capsys.readouterr().err
    (folder / "bad.mp4").write_bytes(b"not a video")
    assert main(["run", "smolvlm-tiny", "--checkpoint", str(folder), "--video", str(folder / "bad.mp4"),
                 "--prompt", "?"]) == 2
    assert "Cannot decode video" in capsys.readouterr().err
    not_an_image = str(folder / "README.md")
    assert main(["run", "smolvlm-tiny", "--checkpoint", str(folder), "--image", not_an_image, "--prompt", "?"]) == 2
    assert "Cannot read image" in capsys.readouterr().err


def test_too_many_images_for_the_context(checkpoint, capsys):
    _, folder, image = checkpoint
    args = ["run", "smolvlm-tiny", "--checkpoint", str(folder), "--prompt", "?", "--max-new-tokens", "1900"]
    for _ in range(4):
        args += ["--image", str(image)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "more than max_length" in err and "do_image_splitting=False" in err
    assert "Traceback" not in err


def test_max_new_tokens_filling_the_context_is_a_one_line_error(checkpoint, capsys):
    """(--max-new-tokens below 1 is refused by the argument parser: tests/test_cli.py.)"""
    _, folder, image = checkpoint
    assert main(["run", "smolvlm-tiny", "--checkpoint", str(folder), "--image", str(image), "--prompt", "?",
                 "--max-new-tokens", "2048", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("zoo run: error: --max-new-tokens 2048 leaves no room for the prompt in the model's "
                            "2048-token context; ask for fewer\n")
    assert captured.out == ""
