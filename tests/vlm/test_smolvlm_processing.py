"""SmolVLM / SmolVLM2 processor against transformers' SmolVLMProcessor / Idefics3Processor (the oracle): tile counts,
pixel values (1e-5), pixel masks, input ids with left padding, chat templates, video frame sampling and prompts,
loading from checkpoint folders and the Hub cache, and the errors for bad inputs.

Tokenizers are built procedurally (`build_byte_tokenizer`): one token per byte plus SmolVLM's special tokens and the
checkpoints' chat template.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    Idefics3ImageProcessor,
    Idefics3Processor,
    SmolVLMImageProcessor,
    SmolVLMImageProcessorPil,
    SmolVLMVideoProcessor,
)
from transformers import SmolVLMProcessor as HFSmolVLMProcessor
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as HF_VIDEO_CHAT_TEMPLATE

from tests.hub_server import populate_cache
from zoo.errors import InputError
from zoo.vlm.smolvlm_processing import (
    CHECKPOINT_CHAT_TEMPLATE,
    DEFAULT_CHAT_TEMPLATE,
    SmolVLMProcessor,
    image_prompt,
    resized_image_size,
    sample_frame_indices,
    tiled_image_size,
)
from zoo.vlm.smolvlm_processing import build_byte_tokenizer as make_tokenizer

NORMALIZE = dict(resample=1, image_mean=[0.5] * 3, image_std=[0.5] * 3)
ATOL = 1e-5

# (height, width): square, landscape 640x480, portrait, tiny 30x50, a thin strip, one smaller than a 64-px tile
IMAGE_SIZES = [(96, 96), (480, 640), (120, 68), (50, 30), (5, 160), (40, 56)]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def reference(tokenizer, longest_edge, max_image_size, image_seq_len, do_image_splitting=True, backend="torchvision",
              video_longest_edge=None, max_frames=64):
    """transformers' processor with the published settings, sizes scaled as given."""
    image_class = SmolVLMImageProcessor if backend == "torchvision" else SmolVLMImageProcessorPil
    tile = {"longest_edge": max_image_size}
    image_processor = image_class(
        size={"longest_edge": longest_edge}, max_image_size=tile, do_image_splitting=do_image_splitting, **NORMALIZE
    )
    video_size = {"longest_edge": video_longest_edge or max_image_size}
    sampling = {"fps": 1, "max_frames": max_frames, "video_size": video_size}
    video_processor = SmolVLMVideoProcessor(max_image_size=tile, video_sampling=sampling, **NORMALIZE)
    return HFSmolVLMProcessor(
        image_processor, tokenizer, video_processor, image_seq_len=image_seq_len, chat_template=CHECKPOINT_CHAT_TEMPLATE
    )


def random_image(height, width, seed=0, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode)


def random_video(num_frames, seed=0, height=30, width=50):
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    return torch.from_numpy(frames)


def assert_same_inputs(ours, theirs):
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=ATOL)
    assert torch.equal(ours["pixel_attention_mask"], theirs["pixel_attention_mask"])


# ----------------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize(
    "longest_edge, max_image_size, do_image_splitting",
    [(256, 64, True), (200, 48, True), (64, 64, True), (256, 64, False)],
    ids=["split", "uneven-split", "fits-one-tile", "no-split"],
)
def test_images_match_transformers(tokenizer, backend, longest_edge, max_image_size, do_image_splitting):
    theirs = reference(tokenizer, longest_edge, max_image_size, 4, do_image_splitting, backend)
    ours = SmolVLMProcessor(
        tokenizer, image_seq_len=4, longest_edge=longest_edge, max_image_size=max_image_size,
        do_image_splitting=do_image_splitting, backend=backend,
    )
    images = [random_image(height, width, seed) for seed, (height, width) in enumerate(IMAGE_SIZES)]
    texts = ["<image>What is it?", "Compare <image> and<image>.", "<image><image><image>Describe.", "No image here."]
    groups = [images[:1], images[1:3], images[3:], []]

    for image in images:
        tiles, rows, cols = ours.preprocess_image(image)
        info = theirs.image_processor(image, return_row_col_info=True)
        assert (rows, cols) == (info["rows"][0][0], info["cols"][0][0])
        assert len(tiles) == (rows * cols + 1 if rows else 1)

    expected = theirs(text=texts, images=groups, padding=True, padding_side="left", return_tensors="pt")
    assert_same_inputs(ours(text=texts, images=groups), expected)
    assert (expected["attention_mask"][:, 0] == 0).any()  # left padding was exercised


@pytest.mark.parametrize(
    "longest_edge, max_image_size, image_seq_len, sizes, tiles",
    [(2048, 512, 64, [(480, 640)], [13]), (1536, 384, 81, [(640, 360)], [13])],
    ids=["256m-500m", "2.2b"],
)
def test_published_settings(tokenizer, longest_edge, max_image_size, image_seq_len, sizes, tiles):
    theirs = reference(tokenizer, longest_edge, max_image_size, image_seq_len)
    ours = SmolVLMProcessor(tokenizer, image_seq_len, longest_edge, max_image_size)
    images = [random_image(height, width, seed) for seed, (height, width) in enumerate(sizes)]
    text = "User:" + "<image>" * len(images) + "Describe."
    inputs = ours(text=text, images=images)
    assert_same_inputs(inputs, theirs(text=text, images=[images], return_tensors="pt"))
    assert inputs["pixel_values"].shape == (1, sum(tiles), 3, max_image_size, max_image_size)
    assert int((inputs["input_ids"] == ours.image_token_id).sum()) == sum(tiles) * image_seq_len


def test_idefics3_processor_and_flat_image_lists(tokenizer):
    own_tokenizer = make_tokenizer()  # Idefics3Processor adds tokens to the tokenizer it is given
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 128}, max_image_size={"longest_edge": 32}, **NORMALIZE
    )
    theirs = Idefics3Processor(image_processor, own_tokenizer, image_seq_len=3)
    ours = SmolVLMProcessor(tokenizer, image_seq_len=3, longest_edge=128, max_image_size=32)
    images = [random_image(45, 70, 1), random_image(64, 20, 2), random_image(33, 33, 3)]
    texts = ["<image>One", "<image>then<image>two"]
    expected = theirs(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    assert_same_inputs(ours(text=texts, images=images), expected)


def test_image_inputs_paths_arrays_and_modes(tokenizer, tmp_path):
    theirs = reference(tokenizer, 128, 32, 2)
    ours = SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=128, max_image_size=32)
    rgb, rgba, grey = random_image(40, 60, 1), random_image(50, 30, 2, "RGBA"), random_image(36, 36, 3, "L")
    rgb.save(tmp_path / "rgb.png")
    expected = theirs(text="<image><image><image>", images=[[rgb, rgba, grey]], return_tensors="pt")
    for images in ([str(tmp_path / "rgb.png"), rgba, grey], [np.asarray(rgb), rgba, grey],
                   [torch.from_numpy(np.array(rgb)).permute(2, 0, 1), rgba, np.array(grey)]):
        assert_same_inputs(ours(text="<image><image><image>", images=images), expected)


def test_image_prompt_layout():
    assert image_prompt(0, 0, 2) == "<fake_token_around_image><global-img><image><image><fake_token_around_image>"
    grid = (
        "<fake_token_around_image><row_1_col_1><image><fake_token_around_image><row_1_col_2><image>\n"
        "<fake_token_around_image><row_2_col_1><image><fake_token_around_image><row_2_col_2><image>\n"
        "\n<fake_token_around_image><global-img><image><fake_token_around_image>"
    )
    assert image_prompt(2, 2, 1) == grid


def test_resize_rules_and_the_cheaper_settings(tokenizer):
    assert resized_image_size(480, 640, 2048) == (1536, 2048)
    assert resized_image_size(101, 100, 2048) == (2048, 2028)  # int(2048 * 100/101) = 2027, made even
    assert resized_image_size(10, 10, 5000) == (4096, 4096)  # capped at 4096
    assert tiled_image_size(1536, 2048, 512) == (1536, 2048)  # 3 x 4 + 1 = 13 tiles
    assert tiled_image_size(*resized_image_size(300, 300, 2048), 512) == (2048, 2048)  # 4 x 4 + 1 = 17 tiles
    assert tiled_image_size(*resized_image_size(480, 640, 1024), 512) == (1024, 1024)  # 2 x 2 + 1 = 5 tiles
    square = random_image(80, 80)
    assert len(SmolVLMProcessor(tokenizer, longest_edge=1024).preprocess_image(square)[0]) == 5
    tiles, rows, cols = SmolVLMProcessor(tokenizer, do_image_splitting=False).preprocess_image(square)
    assert tiles.shape == (1, 3, 512, 512) and rows == cols == 0


def test_images_and_videos_interleave_in_placeholder_order(tokenizer):
    ours = SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=64, max_image_size=32)
    image, video, metadata = random_image(30, 40), random_video(6), {"fps": 2.0}
    tiles = ours.preprocess_image(image)[0]
    frames = ours.preprocess_video(video, metadata)[0]
    texts = ["<video>then<image>", "<image>only"]
    inputs = ours(text=texts, images=[image, image], videos=video, video_metadata=metadata)
    assert torch.equal(inputs["pixel_values"][0, : len(frames) + len(tiles)], torch.cat([frames, tiles]))
    assert torch.equal(inputs["pixel_values"][1, : len(tiles)], tiles)
    assert inputs["pixel_attention_mask"][1, len(tiles):].sum() == 0


def test_transformers_call_arguments(tokenizer):
    theirs = reference(tokenizer, 64, 32, 2)
    ours = SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=64, max_image_size=32)
    image = random_image(30, 40)
    texts, images = ["<image>hello", "<image>hi there you"], [[image], [image]]
    for options in [
        dict(return_tensors="pt", padding=True),
        dict(return_tensors="pt", padding="max_length", max_length=80, padding_side="right"),
        dict(return_tensors="pt", padding=True, pad_to_multiple_of=16, add_special_tokens=False),
        dict(return_tensors="pt", padding="longest", truncation=True, max_length=60),
        dict(return_tensors="pt", padding=True, return_attention_mask=False),
    ]:
        expected = theirs(text=texts, images=images, **{"padding_side": "left", **options})
        inputs = ours(text=texts, images=images, **options)
        assert inputs.keys() == expected.keys()
        assert torch.equal(inputs["input_ids"], expected["input_ids"])
        if options.get("return_attention_mask", True):
            assert_same_inputs(inputs, expected)
    assert torch.equal(ours(text=texts, images=images).to("cpu")["input_ids"], expected["input_ids"])  # a BatchFeature

    as_numpy = ours(text=texts, images=images, return_tensors="np")
    expected = theirs(text=texts, images=images, padding=True, padding_side="left", return_tensors="np")
    assert all(isinstance(value, np.ndarray) for value in as_numpy.values())
    assert (as_numpy["input_ids"] == expected["input_ids"]).all()
    np.testing.assert_allclose(as_numpy["pixel_values"], expected["pixel_values"], rtol=0, atol=ATOL)

    truncated = ours(text=["hello world", "hi"], truncation=True, max_length=4, padding_side="right")
    expected = theirs(text=["hello world", "hi"], truncation=True, max_length=4, padding=True, return_tensors="pt")
    assert torch.equal(truncated["input_ids"], expected["input_ids"])
    assert torch.equal(truncated["attention_mask"], expected["attention_mask"])
    assert ours(text="")["input_ids"].shape == (1, 0)  # as transformers encodes it; generate refuses it


def test_unsupported_call_arguments_are_clear_errors(small):
    image = random_image(30, 40)
    for return_tensors in ("tf", "jax", "mlx"):
        with pytest.raises(InputError, match="return_tensors must be 'pt' .* or 'np'"):
            small(text="<image>", images=image, return_tensors=return_tensors)
    with pytest.raises(InputError, match="unknown argument 'do_image_splitting'.*from_pretrained"):
        small(text="<image>", images=image, do_image_splitting=False)
    with pytest.raises(InputError, match="padding_side must be 'left' or 'right'"):
        small(text="hi", padding_side="middle")
    with pytest.raises(InputError, match=r"Prompts of \[2, 3\] tokens .* pass padding=True"):
        small(text=["ab", "abc"], padding=False)
    length = small(text="<image>Describe", images=image)["input_ids"].shape[1]  # 10 image tokens
    with pytest.raises(InputError, match=f"is {length} tokens long, more than max_length=12.*truncation does not cut"):
        small(text="<image>Describe", images=image, truncation=True, max_length=12)
    kept = small(text="<image>Describe", images=image, truncation=True, max_length=length - 3)["input_ids"]
    assert kept.shape[1] == length - 3 and int((kept == small.image_token_id).sum()) == 10  # the text was cut


def test_zero_sized_images_are_clear_errors(small):
    for image in (Image.new("RGB", (0, 0)), Image.new("L", (7, 0)), np.zeros((0, 5, 3), np.uint8),
                  torch.zeros(3, 4, 0, dtype=torch.uint8), np.zeros((0, 0), np.uint8)):
        with pytest.raises(InputError, match=r"Cannot use an image of \d+x\d+ pixels: both sides need at least 1"):
            small(text="<image>", images=image)


# ----------------------------------------------------------------------------------------------------
# chat template

CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
    [{"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
     {"role": "user", "content": [{"type": "text", "text": "How?"}]}],
    [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Caption"}]}],
]
VIDEO_CONVERSATION = [
    {"role": "user", "content": [{"type": "video", "path": "clip.mp4"}, {"type": "text", "text": "Describe"}]}
]


def test_chat_templates_match_transformers(tokenizer):
    theirs = reference(tokenizer, 64, 32, 2)
    ours = SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=64, max_image_size=32)
    for conversation in [*CONVERSATIONS, VIDEO_CONVERSATION]:
        for add_generation_prompt in (False, True):
            expected = theirs.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
            assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt) == expected
    assert ours.apply_chat_template(CONVERSATIONS) == theirs.apply_chat_template(CONVERSATIONS)
    assert ours.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True) == (
        "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:"
    )
    string_content = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    for conversation in [*CONVERSATIONS, VIDEO_CONVERSATION, string_content]:
        assert tokenizer.apply_chat_template(conversation, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False) == (
            tokenizer.apply_chat_template(conversation, chat_template=HF_VIDEO_CHAT_TEMPLATE, tokenize=False)
        )


def test_chat_flow_with_a_bos_adding_tokenizer_matches_transformers():
    tokenizer = make_tokenizer(add_bos=True)
    theirs = reference(tokenizer, 64, 32, 2)
    ours = SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=64, max_image_size=32)
    image = random_image(30, 50)
    conversation = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    expected = theirs.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    inputs = ours(text=ours.apply_chat_template(conversation, add_generation_prompt=True), images=image)
    assert_same_inputs(inputs, expected)
    assert (inputs["input_ids"] == tokenizer.bos_token_id).sum() == 1
    assert ours(text="Hello")["input_ids"][0, 0] == tokenizer.bos_token_id


# ----------------------------------------------------------------------------------------------------
# videos


@pytest.mark.parametrize(
    "num_frames, fps, duration, max_frames",
    [(40, 4.0, None, 64), (7, 1.0, 7.0, 64), (25, 25.0, None, 64), (300, 2.0, None, 8), (150, 1.0, None, 64)],
    ids=["10s", "7s", "1s", "150s-capped-skip", "150s-skip"],
)
def test_videos_match_transformers(tokenizer, num_frames, fps, duration, max_frames):
    theirs = reference(tokenizer, 128, 32, 2, video_longest_edge=48, max_frames=max_frames)
    ours = SmolVLMProcessor(
        tokenizer, image_seq_len=2, longest_edge=128, max_image_size=32, video_max_frames=max_frames,
        video_longest_edge=48,
    )
    video = random_video(num_frames)
    prompt = ours.apply_chat_template(VIDEO_CONVERSATION, add_generation_prompt=True)
    metadata = {"fps": fps, "total_num_frames": num_frames, "duration": duration or num_frames / fps}
    expected = theirs(
        text=prompt, videos=[video], video_metadata=[metadata], do_sample_frames=True, return_tensors="pt"
    )
    inputs = ours(text=prompt, videos=video, video_metadata={"fps": fps} | ({"duration": duration} if duration else {}))
    assert_same_inputs(inputs, expected)
    text = tokenizer.decode(inputs["input_ids"][0])
    sampled = len(sample_frame_indices(num_frames, fps, num_frames / fps, 1.0, max_frames))
    assert text.count("\nFrame from ") == sampled == inputs["pixel_values"].shape[1]


def test_presampled_frames_and_frame_lists_match_transformers(tokenizer):
    theirs = reference(tokenizer, 128, 32, 2)
    ours = SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=128, max_image_size=32)
    video, indices, fps = random_video(5, seed=3), [0, 30, 60, 90, 120], 30.0
    metadata = {"fps": fps, "frames_indices": indices, "total_num_frames": 150, "duration": 5.0}
    expected = theirs(text="<video>Go", videos=[video], video_metadata=[metadata], return_tensors="pt")
    timestamps = {"timestamps": [index / fps for index in indices], "duration": 5.0}
    assert_same_inputs(ours(text="<video>Go", videos=video, video_metadata=timestamps), expected)
    frames = [Image.fromarray(frame.numpy()) for frame in video]
    assert_same_inputs(ours(text="<video>Go", videos=[frames], video_metadata=[timestamps]), expected)


def test_sample_frame_indices():
    assert sample_frame_indices(40, 4.0, 10.0).tolist() == [0, 4, 8, 13, 17, 21, 26, 30, 34, 39]
    assert sample_frame_indices(10, 10.0, 1.0).tolist() == [0]
    assert len(sample_frame_indices(3000, 30.0, 100.0)) == 64
    skipped = sample_frame_indices(3000, 30.0, 100.0)  # 100 s > 64 frames at 1 fps + 2 s: skip the first/last second
    assert skipped[0] == 30 and skipped[-1] == 2970
    assert sample_frame_indices(600, 30.0, 20.0)[0] == 0


def write_video(path, num_frames=12, fps=4):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(num_frames):
            frame = np.full((48, 64, 3), index * 20, dtype=np.uint8)
            frame[:, : index * 5] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_video_files_are_decoded_and_sampled(tokenizer, tmp_path):
    import av

    write_video(tmp_path / "clip.mp4")
    with av.open(str(tmp_path / "clip.mp4")) as container:
        decoded = torch.from_numpy(np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]))
    theirs = reference(tokenizer, 128, 32, 2)
    ours = SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=128, max_image_size=32)
    metadata = {"fps": 4.0, "total_num_frames": 12, "duration": 3.0}
    expected = theirs(
        text="<video>", videos=[decoded], video_metadata=[metadata], do_sample_frames=True, return_tensors="pt"
    )
    inputs = ours(text="<video>", videos=tmp_path / "clip.mp4")
    assert_same_inputs(inputs, expected)
    assert "series of three frames from a 0:00:03" in tokenizer.decode(inputs["input_ids"][0])


# ----------------------------------------------------------------------------------------------------
# loading


def test_from_pretrained_reads_what_transformers_saves(tokenizer, tmp_path):
    reference(tokenizer, 128, 32, 2, video_longest_edge=48, max_frames=6).save_pretrained(tmp_path)
    assert_matches_auto_processor(tmp_path)


def test_from_pretrained_legacy_configs_and_hub_cache(tokenizer, tmp_path, hf_cache, offline):
    """The files of the SmolVLM2 repos: flat preprocessor_config.json with video_sampling, chat_template.json."""
    folder = tmp_path / "checkpoint"
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink()
    image = {"size": {"longest_edge": 96}, "max_image_size": {"longest_edge": 32}, "do_image_splitting": True,
             "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255, "resample": 1,
             "image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
             "video_sampling": {"fps": 1, "max_frames": 6, "video_size": {"longest_edge": 32}}}
    (folder / "preprocessor_config.json").write_text(json.dumps(image))
    processor = {"image_seq_len": 2, "processor_class": "SmolVLMProcessor"}
    (folder / "processor_config.json").write_text(json.dumps(processor))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHECKPOINT_CHAT_TEMPLATE}))
    assert_matches_auto_processor(folder)

    # Without image_seq_len in processor_config.json it comes from the model config: (32 / 8)**2 / 2**2 = 4.
    (folder / "processor_config.json").unlink()
    model_config = {"scale_factor": 2, "vision_config": {"image_size": 32, "patch_size": 8}}
    (folder / "config.json").write_text(json.dumps(model_config))
    populate_cache(hf_cache, "HuggingFaceTB/SmolVLM2-test", folder)
    ours = SmolVLMProcessor.from_pretrained("HuggingFaceTB/SmolVLM2-test", do_image_splitting=False)
    assert (ours.longest_edge, ours.max_image_size, ours.image_seq_len, ours.do_image_splitting) == (96, 32, 4, False)
    assert (ours.video_fps, ours.video_max_frames, ours.video_longest_edge) == (1, 6, 96)
    assert ours.chat_template == CHECKPOINT_CHAT_TEMPLATE


def assert_matches_auto_processor(folder):
    theirs, ours = AutoProcessor.from_pretrained(folder), SmolVLMProcessor.from_pretrained(folder)
    assert type(theirs.image_processor) is SmolVLMImageProcessor  # the torchvision backend is transformers' default
    prompt = ours.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True)
    assert prompt == theirs.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True)
    image = random_image(70, 45)
    assert_same_inputs(ours(text=prompt, images=image), theirs(text=prompt, images=image, return_tensors="pt"))
    video = random_video(40, height=40, width=24)
    metadata = {"fps": 4.0, "total_num_frames": 40, "duration": 10.0}
    expected = theirs(
        text="<video>", videos=[video], video_metadata=[metadata], do_sample_frames=True, return_tensors="pt"
    )
    assert_same_inputs(ours(text="<video>", videos=video, video_metadata={"fps": 4.0}), expected)


# ----------------------------------------------------------------------------------------------------
# errors


@pytest.fixture(scope="module")
def small(tokenizer):
    return SmolVLMProcessor(tokenizer, image_seq_len=2, longest_edge=64, max_image_size=32)


def test_bad_images_are_clear_errors(small, tmp_path):
    with pytest.raises(InputError, match="Image file not found: .*missing.png"):
        small(text="<image>", images=tmp_path / "missing.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Cannot read image .*broken.jpg"):
        small(text="<image>", images=str(tmp_path / "broken.jpg"))
    with pytest.raises(ValueError, match="local files"):
        small(text="<image>", images="https://example.com/cat.png")
    with pytest.raises(ValueError, match="must be uint8"):
        small(text="<image>", images=torch.rand(3, 20, 20))
    with pytest.raises(TypeError, match="Cannot use images"):
        small(text="<image>", images=[1.5])


def test_image_count_must_match_the_placeholders(small):
    image = random_image(20, 20)
    with pytest.raises(ValueError, match="hold 1 <image> placeholders .* but 2 images"):
        small(text="<image>", images=[image, image])
    with pytest.raises(ValueError, match=r"hold \[1, 0\] <image> placeholders but \[0, 1\] images"):
        small(text=["<image>", "none"], images=[[], [image]])
    with pytest.raises(ValueError, match="2 <image> placeholders but no images"):
        small(text="<image><image>")


def test_prompts_longer_than_the_context_say_what_to_change(tokenizer):
    processor = SmolVLMProcessor(tokenizer, image_seq_len=64, longest_edge=128, max_image_size=32)
    with pytest.raises(ValueError, match=r"1088 of them \(17 tiles .*do_image_splitting=False.*longest_edge"):
        processor(text="<image>Describe", images=random_image(40, 40), max_length=1000)
    assert processor(text="<image>Describe", images=random_image(40, 40), max_length=2000)["input_ids"].shape[1] > 1088


def test_bad_videos_are_clear_errors(small, tmp_path):
    with pytest.raises(InputError, match="Video file not found"):
        small(text="<video>", videos=tmp_path / "missing.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="Cannot decode video .*broken.mp4"):
        small(text="<video>", videos=tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="no frames"):
        small(text="<video>", videos=torch.zeros(0, 8, 8, 3, dtype=torch.uint8), video_metadata={"fps": 1.0})
    with pytest.raises(ValueError, match="need video_metadata"):
        small(text="<video>", videos=random_video(4))
    with pytest.raises(ValueError, match="4 video frames but 2 timestamps"):
        small(text="<video>", videos=random_video(4), video_metadata={"timestamps": [0.0, 1.0]})
    with pytest.raises(ValueError, match="1 <video> placeholders .* but 2 videos"):
        small(text="<video>", videos=[random_video(4), random_video(4)], video_metadata=[{"fps": 1.0}] * 2)
    with pytest.raises(ValueError, match="2 videos but 1 video_metadata"):
        small(text="<video><video>", videos=[random_video(4), random_video(4)], video_metadata=[{"fps": 1.0}])
