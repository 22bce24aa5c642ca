"""The Hummingbird pipeline: the LCM schedule and step against the release's formulas, the text tower and VAE read
from a (tiny, stand-in) release file against independent oracles, and `zoo run` writing a playable MP4."""

from __future__ import annotations

import re

import av
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from torch import nn
from torch.testing import assert_close

from tests.diffusion.test_hummingbird_pickle import _as_release_classes, _fake_module
from zoo.cli import main
from zoo.diffusion.hummingbird import HummingbirdConfig, HummingbirdUNet
from zoo.diffusion.hummingbird_pipeline import HummingbirdPipeline, lcm_scheduler, lcm_timesteps

open_clip = pytest.importorskip("open_clip")

TEXT_WIDTH = 64
UNET = HummingbirdConfig(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_head_channels=8,
                         context_dim=TEXT_WIDTH, time_cond_proj_dim=256, norm_groups=32)


def test_lcm_timesteps_are_the_release_schedules():
    assert lcm_timesteps(4) == [999, 759, 519, 279]
    assert lcm_timesteps(8) == [999, 879, 759, 639, 519, 399, 279, 159]
    assert lcm_timesteps(1) == [999]


def test_scheduler_step_is_the_release_lcm_formula():
    """T2V-Turbo's step: x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t); denoised = c_skip x + c_out x0 with
    c_skip = 0.25 / ((t / 0.1)^2 + 0.25), c_out = (t / 0.1) / sqrt((t / 0.1)^2 + 0.25); then
    sqrt(a_prev) denoised + sqrt(1 - a_prev) noise, except after the last step."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2  # float32, as both schedulers
    alphas = torch.cumprod(1 - betas, dim=0).double()
    timesteps = lcm_timesteps(4)
    scheduler = lcm_scheduler()
    scheduler.set_timesteps(timesteps=timesteps)
    assert scheduler.timesteps.tolist() == timesteps
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 2, 4, 4, generator=generator, dtype=torch.float64)
    for i, t in enumerate(timesteps):
        eps = torch.randn(sample.shape, generator=generator, dtype=torch.float64)
        prev, denoised = scheduler.step(eps, t, sample, generator=torch.Generator().manual_seed(i), return_dict=False)
        a_t = alphas[t]
        x0 = (sample - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        scaled = t / 0.1
        expected = 0.25 / (scaled**2 + 0.25) * sample + scaled / (scaled**2 + 0.25) ** 0.5 * x0
        assert_close(denoised, expected, rtol=1e-5, atol=1e-6)  # float32 alphas
        if i + 1 < len(timesteps):
            a_prev = alphas[timesteps[i + 1]]
            noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
            expected_prev = a_prev.sqrt() * expected + (1 - a_prev).sqrt() * noise
            assert_close(prev, expected_prev, rtol=1e-5, atol=1e-6)  # float32 alphas
        else:
            assert torch.equal(prev, denoised)
        sample = prev


# ----------------------------------------------------------------------------------------------------
# A tiny release file: the U-Net, an open_clip text tower and an LDM-layout VAE in a pickled LatentDiffusion


def _diffusers_vae_to_ldm(state_dict: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> the LDM (lvdm, SD) layout, written here independently of diffusers' own
    converter: down/up blocks by level (decoder levels reversed), mid block_1/block_2/attn_1, 1x1-conv attention."""
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample."),
        (r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{levels - 1 - int(m[1])}.block."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{levels - 1 - int(m[1])}.upsample."),
        (r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.", "mid.attn_1."), (r"attn_1\.group_norm\.", "attn_1.norm."),
        (r"attn_1\.to_(q|k|v)\.", r"attn_1.\1."), (r"attn_1\.to_out\.0\.", "attn_1.proj_out."),
        (r"conv_shortcut", "nin_shortcut"), (r"conv_norm_out", "norm_out"),
    ]  # fmt: skip
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", key):
            value = value[:, :, None, None]
        converted[key] = value
    return converted


def _module_tree(cls: type, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Modules of class `cls` nested as the keys say, holding the tensors as parameters."""
    root = cls()
    for key, value in state_dict.items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, cls())
            module = module._modules[part]
        module.register_parameter(name, nn.Parameter(value.clone(), requires_grad=False))
    return root


@pytest.fixture
def tiny_release(tmp_path):
    """A folder with a tiny 07B_merged_all.pt, and the components it was made from (U-Net, text tower, VAE)."""
    torch.manual_seed(0)
    unet = HummingbirdUNet(UNET).eval()
    reference_unet = HummingbirdUNet(UNET).eval()
    reference_unet.load_state_dict(unet.state_dict())
    text = open_clip.transformer.TextTransformer(width=TEXT_WIDTH, heads=1, layers=2, output_dim=TEXT_WIDTH).eval()
    vae = AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for module in (text, vae):
            for name, param in module.named_parameters():
                if param.ndim == 1:
                    param.add_(0.1 * torch.randn_like(param))

    folder = tmp_path / "release"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:  # the fake lvdm modules go after saving
        _as_release_classes(monkeypatch, unet)
        ddpm = _fake_module(monkeypatch, "lvdm.models.ddpm3d")
        encoders = _fake_module(monkeypatch, "lvdm.modules.encoders.condition")
        ae = _fake_module(monkeypatch, "lvdm.models.autoencoder")
        classes = ((ddpm, "LatentDiffusion"), (ddpm, "DiffusionWrapper"), (encoders, "FrozenOpenCLIPEmbedder"),
                   (ae, "AutoencoderKL"))
        for module, name in classes:
            setattr(module, name, type(name, (nn.Module,), {"__module__": module.__name__}))
        model = ddpm.LatentDiffusion()
        model.model = ddpm.DiffusionWrapper()
        model.model.diffusion_model = unet
        model.cond_stage_model = encoders.FrozenOpenCLIPEmbedder()
        model.cond_stage_model.model = text
        model.first_stage_model = _module_tree(ae.AutoencoderKL, _diffusers_vae_to_ldm(vae.state_dict(), 4))
        torch.save(model, folder / "07B_merged_all.pt")
    return folder, reference_unet, text, vae


def _penultimate_oracle(text: nn.Module, prompts: list[str]) -> torch.Tensor:
    """SD-2 / lvdm FrozenOpenCLIPEmbedder: every block but the last, then ln_final."""
    tokens = open_clip.tokenize(prompts)
    x = text.token_embedding(tokens) + text.positional_embedding
    for block in text.transformer.resblocks[:-1]:
        x = block(x, attn_mask=text.attn_mask)
    return text.ln_final(x)


def test_from_release_reads_all_three_parts(tiny_release):
    folder, unet, text, vae = tiny_release
    pipe = HummingbirdPipeline.from_release(folder)
    prompts = ["a corgi on the beach", "fireworks over a city at night"]
    with torch.no_grad():
        assert_close(pipe.encode_prompt(prompts), _penultimate_oracle(text, prompts), rtol=0, atol=1e-5)
        latents = torch.randn(1, 4, 2, 4, 6)
        expected = vae.decode(latents.transpose(1, 2).flatten(0, 1) / 0.18215).sample
        decoded = torch.from_numpy(pipe.decode(latents))
        assert decoded.shape == (1, 2, 32, 48, 3)
        assert_close(decoded, ((expected + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)[None], rtol=0, atol=1e-5)
        for key, value in unet.state_dict().items():
            assert torch.equal(pipe.unet.state_dict()[key], value), key


def test_generation_follows_the_lcm_loop_with_the_guidance_embedding(tiny_release):
    folder, _, _, _ = tiny_release
    pipe = HummingbirdPipeline.from_release(folder)
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda *args, **kwargs: calls.append((args[1], kwargs)) or forward(*args, **kwargs)
    out = pipe("a cat", num_inference_steps=4, guidance_scale=7.5, height=32, width=48, num_frames=3, fps=8,
               generator=0, output_type="latent")  # fmt: skip
    assert [int(t) for t, _ in calls] == [999, 759, 519, 279]
    assert all(kwargs["fps"] == 8 and kwargs["timestep_cond"].shape == (1, 256) for _, kwargs in calls)
    assert out.frames.shape == (1, 4, 3, 4, 6) and torch.isfinite(out.frames).all()
    again = pipe("a cat", num_inference_steps=4, height=32, width=48, num_frames=3, generator=0, output_type="latent")
    assert torch.equal(out.frames, again.frames)


def test_zoo_run_writes_a_playable_mp4(tiny_release, tmp_path):
    folder, _, _, _ = tiny_release
    out = tmp_path / "clip.mp4"
    argv = ["run", "hummingbird-t2v-0.7b", "--checkpoint", str(folder), "--prompt", "a red balloon", "--out", str(out),
            "--steps", "2", "--height", "32", "--width", "48", "--frames", "5", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    with av.open(str(out)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (32, 48, 3)


def test_bad_sizes_are_clear_errors(tiny_release):
    pipe = HummingbirdPipeline.from_release(tiny_release[0])
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe("a cat", height=40, width=48, num_frames=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_generation_is_finite(tiny_release, dtype):
    """Every part in the low precision (float16 as the release runs on GPUs, here on the CPU), no NaN."""
    pipe = HummingbirdPipeline.from_release(tiny_release[0]).to(dtype=dtype)
    out = pipe("a cat", num_inference_steps=4, height=32, width=48, num_frames=2, generator=0)
    assert out.frames.shape == (1, 2, 32, 48, 3) and np.isfinite(out.frames).all()
