"""Z-Image: parity of the S3-DiT with diffusers' `ZImageTransformer2DModel`, of the pipeline with diffusers'
`ZImagePipeline`, fp16 overflow clamping, loading the diffusers repo layout from the Hub cache, and `zoo run`."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

import zoo
from tests.hub_server import populate_cache
from zoo.cli import main
from zoo.diffusion.zimage import (
    DIFFUSERS,
    PUBLISHED_PARAMS,
    ZImageConfig,
    ZImageRotaryEmbedding,
    ZImageTransformer,
    _default_input,
)
from zoo.diffusion.zimage_pipeline import BASE_SAMPLING, TURBO_SAMPLING, ZImagePipeline
from zoo.registry import count_parameters

TINY = dict(dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12],
            axes_lens=[1536, 512, 512])  # fmt: skip
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)  # Qwen3's format, with its enable_thinking switch


def _randomized(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Every parameter random (norm weights around 1), so that no key or formula can hide behind an init value."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.2 * noise if "norm" in name else std * noise)
    return module


def _reference():
    from diffusers import ZImageTransformer2DModel

    return _randomized(ZImageTransformer2DModel(**TINY)).eval()


def _converted(reference) -> ZImageTransformer:
    config = DIFFUSERS.convert_config(dict(reference.config))
    model = ZImageTransformer(config).eval()
    model.load_state_dict(DIFFUSERS.convert_state_dict(reference.state_dict(), config))
    return model


# ----------------------------------------------------------------------------------------------------
# The denoiser


@pytest.mark.parametrize(
    ("latent_sizes", "caption_lengths"),
    [
        ([(6, 10), (8, 12), (64, 4)], [7, 37, 64]),  # padding to 32 within items, masking across them
        ([(8, 8), (8, 8)], [32, 32]),  # no padding at all
        ([(6, 10), (6, 10)], [5, 20]),  # equal padded lengths: padding, no mask
    ],
)
def test_matches_diffusers_with_mixed_lengths_and_padding(latent_sizes, caption_lengths):
    reference = _reference()
    ours = _converted(reference)
    generator = torch.Generator().manual_seed(1)
    x = [torch.randn(16, 1, h, w, generator=generator) for h, w in latent_sizes]
    cap_feats = [torch.randn(n, 32, generator=generator) for n in caption_lengths]
    t = torch.rand(len(x), generator=generator)
    with torch.no_grad():
        expected = reference(x, t, cap_feats, return_dict=False)[0]
        out = ours(x, t, cap_feats)
    for ours_i, expected_i in zip(out, expected, strict=True):
        assert ours_i.shape == expected_i.shape
        assert_close(ours_i, expected_i, rtol=0, atol=1e-5)


def test_bfloat16_matches_diffusers_bit_for_bit():
    reference = _reference().bfloat16()
    ours = _converted(reference).bfloat16()
    inputs = _default_input(ours.config, 2, torch.Generator().manual_seed(0))
    inputs = dict(inputs, x=[x.bfloat16() for x in inputs["x"]], cap_feats=[c.bfloat16() for c in inputs["cap_feats"]])
    with torch.no_grad():
        expected = reference(**inputs, return_dict=False)[0]
        out = ours(**inputs)
    assert all(o.dtype == torch.bfloat16 and torch.equal(o, e) for o, e in zip(out, expected, strict=True))


def test_pad_tokens_are_attended_not_masked():
    """Changing the learned pad tokens changes every output token: they take part in attention."""
    model = _converted(_reference())
    inputs = _default_input(model.config, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(**inputs)
        model.cap_pad_token.add_(1.0)
        after = model(**inputs)
    assert all((a - b).abs().amin() > 0 for a, b in zip(before, after, strict=True))


def test_rotary_tables_match_the_published_rounding_exactly():
    from diffusers.models.transformers.transformer_z_image import RopeEmbedder

    reference = RopeEmbedder(theta=256.0, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
    random_ids = torch.randint(0, 512, (500, 3), generator=torch.Generator().manual_seed(0))
    ids = torch.cat((random_ids, torch.tensor([[1535, 511, 511], [0, 0, 0], [1023, 3, 400]])))
    freqs_cis = reference(ids)
    cos, sin = ZImageRotaryEmbedding((32, 48, 48), 256.0)(ids)
    assert_close(cos, freqs_cis.real, rtol=0, atol=0)
    assert_close(sin, freqs_cis.imag, rtol=0, atol=0)


def test_published_size_matches_diffusers_and_the_research_notes():
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        reference = ZImageTransformer2DModel(axes_lens=[1536, 512, 512])
        ours = ZImageTransformer(ZImageConfig())
    assert count_parameters(ours) == count_parameters(reference) == PUBLISHED_PARAMS  # 6.155B
    assert zoo.model_info("z-image-turbo")["params"] == zoo.model_info("z-image")["params"] == PUBLISHED_PARAMS
    converted = DIFFUSERS.convert_state_dict(reference.state_dict(), ZImageConfig())
    assert converted.keys() == ours.state_dict().keys()


def test_diffusers_config_conversion():
    published = {"_class_name": "ZImageTransformer2DModel", "all_patch_size": [2], "all_f_patch_size": [1],
                 "axes_lens": [1536, 512, 512], "n_kv_heads": 30, "siglip_feat_dim": None}  # fmt: skip
    assert DIFFUSERS.convert_config(published) == ZImageConfig()
    assert DIFFUSERS.convert_config({}).axes_lens == (1024, 512, 512)  # diffusers' default, not the published
    with pytest.raises(zoo.ConfigError, match="one patch size"):
        DIFFUSERS.convert_config({"all_patch_size": [2, 4], "all_f_patch_size": [1, 1]})
    with pytest.raises(zoo.ConfigError, match="siglip_feat_dim"):
        DIFFUSERS.convert_config({"siglip_feat_dim": 1152})


def test_bad_inputs_say_what_is_expected():
    model = zoo.create("z-image-tiny")
    t = torch.rand(1)
    with pytest.raises(ValueError, match=r"latents \(C=16, F, H, W\) .* H, W by 2, got \(16, 1, 5, 4\)"):
        model([torch.randn(16, 1, 5, 4)], t, [torch.randn(3, 32)])
    with pytest.raises(ValueError, match=r"caption features \(L >= 1, 32\), got \(3, 31\)"):
        model([torch.randn(16, 1, 4, 4)], t, [torch.randn(3, 31)])
    with pytest.raises(ValueError, match="got 2 latents, 1 caption features"):
        model([torch.randn(16, 1, 4, 4)] * 2, torch.rand(2), [torch.randn(3, 32)])
    with pytest.raises(ValueError, match=r"beyond the model's axes_lens \(1536, 512, 512\)"):
        model([torch.randn(16, 1, 4, 1026)], t, [torch.randn(3, 32)])


def _overflowing(model: ZImageTransformer) -> ZImageTransformer:
    """Scale the first main block's SwiGLU inputs so that its hidden state exceeds float16's 65504."""
    with torch.no_grad():
        model.layers[0].feed_forward.gate_proj.weight.mul_(400)
        model.layers[0].feed_forward.up_proj.weight.mul_(400)
    return model


def test_fp16_overflow_is_clamped():
    torch.manual_seed(0)
    reference = _overflowing(zoo.create("z-image-tiny")).eval()
    inputs = _default_input(reference.config, 2, torch.Generator().manual_seed(0))
    half_inputs = dict(inputs, x=[x.half() for x in inputs["x"]], cap_feats=[c.half() for c in inputs["cap_feats"]])
    hidden = []
    reference.layers[0].feed_forward.down_proj.register_forward_hook(lambda module, args, out: hidden.append(args[0]))
    with torch.no_grad():
        expected = reference(**inputs)
    assert hidden[0].abs().max() > 65504  # the float32 run shows the overflow float16 meets

    unclamped = ZImageTransformer(reference.config.replace(fp16_clamp=False)).eval()
    unclamped.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert not all(torch.isfinite(out).all() for out in unclamped.half()(**half_inputs))
        clamped = reference.half()(**half_inputs)
    for out, out_fp32 in zip(clamped, expected, strict=True):
        assert torch.isfinite(out).all()
        assert torch.cosine_similarity(out.float().flatten(), out_fp32.flatten(), dim=0) > 0.99


# ----------------------------------------------------------------------------------------------------
# The pipeline


def _tiny_tokenizer():
    """A byte-level Qwen2 tokenizer with Qwen3's special tokens and chat format (no merges, no download)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {byte: i for i, byte in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_diffusers_pipeline():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from diffusers import ZImagePipeline as DiffusersZImagePipeline
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen3Model(Qwen3Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, vocab_size=len(tokenizer), max_position_embeddings=512,
    ))  # fmt: skip
    transformer = _randomized(ZImageTransformer2DModel(**TINY), std=0.1)  # latents of order 1, as in use
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], layers_per_block=1, latent_channels=16,
        norm_num_groups=32, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # Z-Image-Turbo's
    return DiffusersZImagePipeline(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A tiny random Z-Image pipeline saved by diffusers in the Hub repo layout (model_index.json + folders)."""
    folder = tmp_path_factory.mktemp("zimage") / "Z-Image-Turbo"
    _tiny_diffusers_pipeline().save_pretrained(folder)
    return folder


def _both_pipelines(folder):
    from diffusers import ZImagePipeline as DiffusersZImagePipeline

    reference = DiffusersZImagePipeline.from_pretrained(folder)
    ours = ZImagePipeline.from_pretrained(folder, dtype=torch.float32, device="cpu")
    for pipeline in (reference, ours):
        pipeline.set_progress_bar_config(disable=True)
    return reference, ours


@pytest.mark.parametrize(
    "call",
    [
        # Turbo: no guidance, several prompts of different lengths, a non-square size whose tokens need padding.
        dict(prompt=["a cat", "a much longer prompt about two dogs in the rain"], guidance_scale=0.0,
             num_inference_steps=3, height=40, width=24),
        # Base: guidance with negative prompts, normalization, several images per prompt.
        dict(prompt=["a cat", "two dogs"], negative_prompt=["blurry", "bad quality, low resolution"],
             guidance_scale=3.0, cfg_normalization=1.0, num_inference_steps=3, num_images_per_prompt=2,
             height=32, width=32),
        # Guidance truncated after the first steps, the default empty negative prompt.
        dict(prompt="a red fox", guidance_scale=4.0, cfg_truncation=0.2, num_inference_steps=4, height=24, width=48),
    ],
)  # fmt: skip
def test_pipeline_latents_match_diffusers(tiny_repo, call):
    reference, ours = _both_pipelines(tiny_repo)
    # diffusers rewrites a prompt list in place with the chat template: give each pipeline its own copy.
    expected = reference(**json.loads(json.dumps(call)), generator=torch.Generator().manual_seed(0),
                         output_type="latent").images  # fmt: skip
    latents = ours(**call, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert latents.shape == expected.shape
    assert_close(latents, expected, rtol=0, atol=1e-4)


def test_pipeline_images_seeds_and_aspect_ratio(tiny_repo):
    reference, ours = _both_pipelines(tiny_repo)
    call = dict(prompt="a lighthouse", guidance_scale=0.0, num_inference_steps=2, height=24, width=40)
    expected = reference(**call, generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert_close(ours(**call, generator=torch.Generator().manual_seed(3), output_type="pt").images, expected,
                 rtol=0, atol=1e-4)  # fmt: skip

    images = ours(**call, num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (5, 3)]).images
    assert [image.size for image in images] == [(40, 24)] * 2 and images[0].mode == "RGB"
    single = ours(**call, generator=torch.Generator().manual_seed(3)).images[0]
    assert images[1].tobytes() == single.tobytes()  # one generator per image: per-image seeds
    assert images[0].tobytes() != single.tobytes()


def test_prompt_format_and_length_limit(tiny_repo):
    pipeline = ZImagePipeline.from_pretrained(tiny_repo, dtype=torch.float32, device="cpu")
    short, long = pipeline.encode_prompt(["hi", "x" * 1000], max_sequence_length=40)
    assert len(long) == 40
    expected = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"  # thinking enabled: no empty think block
    assert len(short) == len(pipeline.tokenizer(expected).input_ids)
    assert short.shape[1] == pipeline.transformer.config.caption_dim and short.dtype == torch.float32


def test_pipeline_errors_name_what_is_expected(tiny_repo):
    pipeline = ZImagePipeline.from_pretrained(tiny_repo, dtype=torch.float32, device="cpu")
    with pytest.raises(zoo.ConfigError, match=r"multiples of 4 \(the VAE's 2x downsampling times the 2x2 .*got 30x32"):
        pipeline("a cat", height=30, width=32)
    with pytest.raises(zoo.ConfigError, match="got 3 negative prompts for 2 prompts"):
        pipeline(["a", "b"], negative_prompt=["x"] * 3, guidance_scale=2.0)
    with pytest.raises(zoo.ConfigError, match="dtype must be one of float32, bfloat16, float16 .*got 'int8'"):
        ZImagePipeline.from_pretrained(tiny_repo, dtype="int8", device="cpu")


def test_fp16_pipeline_gives_finite_non_black_images(tiny_repo):
    pipeline = ZImagePipeline.from_pretrained(tiny_repo, dtype=torch.float16, device="cpu")
    pipeline.set_progress_bar_config(disable=True)
    _overflowing(pipeline.transformer)
    call = dict(prompt="a cat", guidance_scale=0.0, num_inference_steps=2, height=32, width=32)

    latents = pipeline(**call, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert torch.isfinite(latents).all()
    image = pipeline(**call, generator=torch.Generator().manual_seed(0)).images[0]
    assert max(image.getextrema(), key=lambda band: band[1])[1] > 0  # not black

    unclamped = ZImageTransformer(pipeline.transformer.config.replace(fp16_clamp=False))
    unclamped.load_state_dict(pipeline.transformer.state_dict())
    pipeline.transformer = unclamped.half().eval()
    latents = pipeline(**call, generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert not torch.isfinite(latents).all()  # what the clamp prevents: NaN latents, black images


# ----------------------------------------------------------------------------------------------------
# Hub layout, offline cache and `zoo run`


def test_loading_the_repo_layout_from_the_offline_cache(tiny_repo, hf_cache, offline):
    from diffusers import ZImageTransformer2DModel

    populate_cache(hf_cache, "Tongyi-MAI/Z-Image-Turbo", tiny_repo)
    reference = ZImageTransformer2DModel.from_pretrained(tiny_repo / "transformer").eval()
    expected = _converted(reference).state_dict()

    for model in (zoo.from_pretrained("Tongyi-MAI/Z-Image-Turbo"),  # the repo root: model_index.json
                  zoo.from_pretrained(tiny_repo / "transformer"),  # the denoiser's folder
                  zoo.create("z-image-turbo", pretrained=True, dim=64, num_layers=2, num_refiner_layers=1,
                             num_heads=2, caption_dim=32, axes_dims=(8, 12, 12))):  # fmt: skip
        assert isinstance(model, ZImageTransformer) and not model.training
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())

    pipeline = ZImagePipeline.from_pretrained("z-image-turbo", dtype=torch.float32, device="cpu")
    assert pipeline.sampling == TURBO_SAMPLING and pipeline.transformer.config.dim == 64


def test_pipeline_downloads_through_the_hub(tiny_repo, fake_hub):
    fake_hub.upload_folder("Tongyi-MAI/Z-Image", tiny_repo)
    pipeline = ZImagePipeline.from_pretrained("Tongyi-MAI/Z-Image", dtype="bf16", device="cpu")
    assert pipeline.sampling == BASE_SAMPLING
    assert pipeline.dtype == pipeline.text_encoder.dtype == torch.bfloat16 and pipeline.vae.dtype == torch.float32


def test_zoo_run_writes_an_image(tiny_repo, tmp_path, capsys):
    out = tmp_path / "image.png"
    argv = ["run", "z-image-turbo", "--checkpoint", str(tiny_repo), "--prompt", "a cat", "--out", str(out),
            "--steps", "2", "--height", "24", "--width", "40", "--dtype", "float32", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    from PIL import Image

    assert Image.open(out).size == (40, 24)
    assert f"Wrote 40x24 image to {out}" in capsys.readouterr().out

    assert main(["run", "z-image-turbo", "--checkpoint", str(tiny_repo)]) == 2
    assert "needs a prompt: zoo run z-image-turbo --prompt TEXT" in capsys.readouterr().err
