"""The Wan pipeline end to end with tiny random components: parity with diffusers' pipelines on the same
published folder, video export, memory options, input errors, the Hub layout offline and `zoo run`."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import zoo
from tests.diffusion.wan_components import save_diffusers_pipeline
from tests.hub_server import populate_cache
from zoo.cli import main
from zoo.diffusion.export import export_video
from zoo.diffusion.wan_pipeline import PUBLISHED_SAMPLING, WanPipeline, WanSampling, _size_for_image

LATENTS = dict(rtol=0, atol=1e-4)
PROMPTS, NEGATIVES = ["a cat walks on the grass", "a dog"], ["blurry", "negative"]
CALL = dict(height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=4.0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """Tiny pipelines in the diffusers Hub layout, built once: (kind, scheduler) -> folder."""
    root = tmp_path_factory.mktemp("wan_pipelines")
    cases = [("t2v", "unipc"), ("t2v", "euler"), ("i2v", "unipc"), ("ti2v", "unipc"), ("a14b", "unipc")]
    return {case: save_diffusers_pipeline(root / "-".join(case), *case) for case in cases}


def _diffusers_pipeline(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _run_both(folder, **call):
    """Latents from diffusers' pipeline and from zoo's, for the same seed, scheduler and steps."""
    ours = WanPipeline.from_pretrained(folder)
    reference = _diffusers_pipeline(folder)
    text = dict(prompt=PROMPTS, negative_prompt=NEGATIVES)
    if "image" in call:  # diffusers' image-to-video pipeline needs ftfy to clean prompts: give it the features
        text = dict(prompt_embeds=ours.encode_prompt(PROMPTS), negative_prompt_embeds=ours.encode_prompt(NEGATIVES))
    expected = reference(**text, generator=torch.Generator().manual_seed(0), output_type="latent", **call).frames
    latents = ours(PROMPTS, NEGATIVES, generator=0, output_type="latent", show_progress=False, **call).frames
    return latents, expected


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_text_to_video_matches_diffusers(folders, scheduler):
    latents, expected = _run_both(folders["t2v", scheduler], **CALL)
    assert latents.shape == (2, 16, 2, 4, 4)
    assert_close(latents, expected, **LATENTS)


def test_prompt_encoding_matches_diffusers(folders):
    ours = WanPipeline.from_pretrained(folders["t2v", "unipc"])
    reference = _diffusers_pipeline(folders["t2v", "unipc"])
    prompt = "a  cat &amp; a dog"
    expected, _ = reference.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=512)
    encoded = ours.encode_prompt([prompt])
    assert encoded.shape == (1, 512, 32) and encoded[0, 20:].abs().max() == 0  # zero rows after the prompt
    assert_close(encoded, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["i2v", "ti2v"], ids=["wan2.1-i2v-clip", "wan2.2-ti2v-first-frame"])
def test_image_to_video_matches_diffusers(folders, kind):
    latents, expected = _run_both(folders[kind, "unipc"], image=_image(), **CALL)
    assert_close(latents, expected, **LATENTS)
    if kind == "ti2v":  # the given first frame is kept as its latent
        assert_close(latents[0, :, 0], latents[1, :, 0], rtol=0, atol=0)


def test_two_expert_a14b_matches_diffusers(folders):
    call = {**CALL, "num_inference_steps": 4, "guidance_scale_2": 2.0}  # t = 999, 900 | 750, 500: two per expert
    latents, expected = _run_both(folders["a14b", "unipc"], **call)
    assert_close(latents, expected, **LATENTS)
    pipe = WanPipeline.from_pretrained(folders["a14b", "unipc"])
    assert pipe.boundary_ratio == 0.875 and pipe.transformer_2 is not None
    unguided_low_noise = pipe(PROMPTS, NEGATIVES, generator=0, output_type="latent", show_progress=False,
                              **{**call, "guidance_scale_2": 1.0}).frames  # fmt: skip
    assert not torch.allclose(unguided_low_noise, latents)  # the low-noise expert ran, with its own guidance


def test_video_shape_frame_count_and_export(folders, tmp_path):
    pipe = WanPipeline.from_pretrained(folders["t2v", "unipc"])
    out = pipe("a cat", "blurry", generator=0, show_progress=False, **{**CALL, "num_frames": 13, "width": 48})
    assert out.frames.shape == (1, 13, 32, 48, 3) and out.fps == 16
    assert 0 <= out.frames.min() and out.frames.max() <= 1
    mp4 = export_video(out.frames[0], tmp_path / "video.mp4", fps=out.fps)
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert stream.average_rate == 16 and stream.codec_context.name == "h264"
    assert len(frames) == 13 and frames[0].shape == (32, 48, 3)
    # H.264 is lossy, but the frames must be the generated ones.
    assert np.abs(np.stack(frames) / 255.0 - out.frames[0]).mean() < 0.05
    gif = export_video(out.frames[0], tmp_path / "video.gif", fps=out.fps)
    with Image.open(gif) as image:
        assert (image.n_frames, image.size) == (13, (48, 32))
    pil_frames = pipe("a cat", generator=0, show_progress=False, output_type="pil",
                      **{**CALL, "num_inference_steps": 1}).frames[0]  # fmt: skip
    assert len(pil_frames) == 5 and pil_frames[0].size == (32, 32)


def test_memory_options_keep_the_result(folders):
    call = {**CALL, "num_inference_steps": 1}
    pipe = WanPipeline.from_pretrained(folders["t2v", "unipc"])
    expected = pipe("a cat", "blurry", generator=0, show_progress=False, **call).frames
    pipe.to("cpu", text_encoder_device="cpu")
    pipe.vae.enable_slicing()
    pipe.vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8,
                           tile_sample_stride_width=8)  # fmt: skip
    tiled = pipe("a cat", "blurry", generator=0, show_progress=False, **call).frames
    assert tiled.shape == expected.shape and np.abs(tiled - expected).mean() < 0.1

    bf16 = WanPipeline.from_pretrained(folders["t2v", "unipc"], dtype=torch.bfloat16)
    assert bf16.transformer.patch_embedding.proj.weight.dtype == torch.bfloat16
    assert next(bf16.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(bf16.vae.parameters()).dtype == torch.float32
    frames = bf16("a cat", "blurry", generator=0, show_progress=False, **call).frames
    assert frames.shape == expected.shape and np.isfinite(frames).all()


def test_inputs_are_checked_with_what_is_expected(folders):
    text_to_video = WanPipeline.from_pretrained(folders["t2v", "unipc"])
    run = dict(generator=0, show_progress=False, output_type="latent")
    with pytest.raises(zoo.InputError, match=r"num_frames must be 4k \+ 1 .* got 8"):
        text_to_video("a cat", **{**CALL, "num_frames": 8}, **run)
    with pytest.raises(zoo.InputError, match="multiples of 16 .* got 32 x 40"):
        text_to_video("a cat", **{**CALL, "width": 40}, **run)
    with pytest.raises(zoo.InputError, match="text-to-video Wan model; it takes no image"):
        text_to_video("a cat", image=_image(), **CALL, **run)
    with pytest.raises(zoo.InputError, match="2 prompts but 1 negative prompts"):
        text_to_video(["a", "b"], ["c"], **CALL, **run)
    with pytest.raises(zoo.InputError, match="image-to-video Wan model: pass the first frame as image="):
        WanPipeline.from_pretrained(folders["i2v", "unipc"])("a cat", **CALL, **run)


def test_run_sizes_image_to_video_to_the_image_aspect(folders):
    pipe = WanPipeline.from_pretrained(folders["i2v", "unipc"])
    assert _size_for_image(Image.new("RGB", (1280, 720)), 480 * 832, pipe) == (464, 832)
    assert _size_for_image(Image.new("RGB", (720, 1280)), 480 * 832, pipe) == (832, 464)


def test_published_sampling_settings():
    a14b = PUBLISHED_SAMPLING["wan2.2-t2v-a14b"]
    assert (a14b.steps, a14b.guidance, a14b.guidance_low_noise) == (40, 4.0, 3.0)
    assert (a14b.shift, a14b.boundary) == (12.0, 0.875)
    i2v = PUBLISHED_SAMPLING["wan2.2-i2v-a14b"]
    assert (i2v.guidance, i2v.guidance_low_noise, i2v.shift, i2v.boundary) == (3.5, 3.5, 5.0, 0.9)
    ti2v = PUBLISHED_SAMPLING["wan2.2-ti2v-5b"]
    assert (ti2v.steps, ti2v.frames, ti2v.fps, ti2v.height, ti2v.width) == (50, 121, 24, 704, 1280)
    assert PUBLISHED_SAMPLING["wan2.1-i2v-14b-480p"].shift == 3.0 and PUBLISHED_SAMPLING["wan2.1-t2v-1.3b"].shift == 5.0
    assert PUBLISHED_SAMPLING["wan2.1-t2v-1.3b"].negative_prompt.startswith("色调艳丽")


def test_pipeline_repo_from_the_cache_offline_and_zoo_run(folders, tmp_path, hf_cache, offline, capsys):
    populate_cache(hf_cache, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", folders["t2v", "unipc"])
    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert pipe.defaults == PUBLISHED_SAMPLING["wan2.1-t2v-1.3b"]  # a registered repo brings its settings
    assert WanPipeline.from_pretrained(folders["t2v", "unipc"]).defaults == WanSampling()

    out = tmp_path / "video.mp4"
    args = ["--prompt", "a cat walks", "--out", str(out), "--steps", "2", "--frames", "5", "--height", "16",
            "--width", "32", "--seed", "1"]  # fmt: skip
    assert main(["run", "wan2.1-t2v-1.3b", *args]) == 0
    assert capsys.readouterr().out.strip().endswith("video.mp4")
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and (frames[0].height, frames[0].width) == (16, 32)

    gif = tmp_path / "video.gif"
    tiny = ["--checkpoint", str(folders["t2v", "unipc"]), *args[:2], "--out", str(gif), *args[4:]]
    assert main(["run", "wan-tiny", *tiny]) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 5


def test_zoo_run_errors_are_one_line(capsys):
    assert main(["run", "wan-tiny", "--prompt", "a cat"]) == 2
    assert "'wan-tiny' has no published weights" in (err := capsys.readouterr().err) and "--checkpoint DIR" in err
    assert main(["run", "wan2.1-t2v-1.3b"]) == 2
    assert "needs --prompt" in capsys.readouterr().err
