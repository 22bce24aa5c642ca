"""SmolVLMProcessor.save_pretrained: what a trained VLM's folder needs so that `SmolVLMProcessor.from_pretrained`,
transformers' AutoProcessor and `zoo run --checkpoint` read the same processor back."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor

from zoo.vlm.smolvlm_processing import SmolVLMProcessor, build_byte_tokenizer


def test_byte_tokenizer():
    tokenizer = build_byte_tokenizer()
    assert len(tokenizer) == 300
    ids = {token: tokenizer.convert_tokens_to_ids(token)
           for token in ("<end_of_utterance>", "<global-img>", "<fake_token_around_image>", "<image>", "<video>")}
    assert ids == {"<end_of_utterance>": 259, "<global-img>": 260, "<fake_token_around_image>": 297, "<image>": 298,
                   "<video>": 299}
    assert tokenizer.decode(tokenizer("Où? 3 red")["input_ids"]) == "Où? 3 red"
    assert tokenizer.eos_token_id == 259 and tokenizer.pad_token_id == 2
    assert build_byte_tokenizer(add_bos=True)("hi")["input_ids"][0] == tokenizer.bos_token_id


def test_processor_round_trip(tmp_path):
    processor = SmolVLMProcessor(build_byte_tokenizer(), image_seq_len=4, longest_edge=128, max_image_size=64,
                                 do_image_splitting=True, image_mean=(0.4, 0.5, 0.6), image_std=(0.2, 0.3, 0.4),
                                 video_fps=2.0, video_max_frames=8, video_longest_edge=96)
    folder = processor.save_pretrained(tmp_path / "proc")
    assert {"processor_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    ours = SmolVLMProcessor.from_pretrained(folder)
    for name in ("image_seq_len", "longest_edge", "max_image_size", "do_image_splitting", "image_mean", "image_std",
                 "rescale_factor", "video_fps", "video_max_frames", "video_longest_edge"):
        assert getattr(ours, name) == getattr(processor, name), name
    theirs = AutoProcessor.from_pretrained(folder)
    assert type(theirs).__name__ == "SmolVLMProcessor" and theirs.image_seq_len == 4
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    prompt = ours.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == processor.apply_chat_template(conversation, add_generation_prompt=True)
    expected = processor(text=prompt, images=[image])
    mine, hf = ours(text=prompt, images=[image]), theirs(text=prompt, images=[[image]], return_tensors="pt")
    for inputs in (mine, hf):
        assert torch.equal(inputs["input_ids"], expected["input_ids"])
        torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-5)
