"""The Hummingbird lvdm U-Net: parity with diffusers' UNet3DConditionModel (+ the fps embedding the test adds), the
guidance embedding, the converters and the registry."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import UNet3DConditionModel
from diffusers.models.embeddings import get_timestep_embedding
from torch.testing import assert_close

import zoo
from zoo.diffusion.hummingbird import HummingbirdConfig, HummingbirdUNet, _diffusers_to_zoo, guidance_embedding
from zoo.registry import count_parameters, get_entry

PARITY = dict(rtol=0, atol=1e-4)
CONTEXT_DIM, COND_DIM = 24, 16
LAYOUTS = {  # name: (num_res_blocks, has_middle_block)
    "0.7b-layout": (1, False),
    "0.9b-layout": (1, True),
    "videocrafter2-layout": (2, True),
}


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: weights ~ N(0, 1/fan_in) (the zero-initialised convolutions included), norm scales
    1 + N(0, 0.1^2), biases N(0, 0.1^2), so that a missed, swapped or mis-shaped layer shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return model


def _diffusers_unet(num_res_blocks: int, has_middle_block: bool) -> UNet3DConditionModel:
    """A tiny UNet3DConditionModel: 3 levels (32, 64, 64 channels), attention on the first two, heads of 16."""
    unet = UNet3DConditionModel(
        in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        layers_per_block=num_res_blocks, norm_num_groups=8, cross_attention_dim=CONTEXT_DIM, attention_head_dim=16,
        time_cond_proj_dim=COND_DIM,
    )  # fmt: skip
    if not has_middle_block:
        unet.mid_block = None  # the 0.7B model deletes it; diffusers' forward skips a missing one
    return _randomize(unet).eval()


def _zoo_config(num_res_blocks: int, has_middle_block: bool) -> HummingbirdConfig:
    return HummingbirdConfig(
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=num_res_blocks, has_middle_block=has_middle_block,
        attention_resolutions=(1, 2), num_head_channels=16, init_attn_heads=8, context_dim=CONTEXT_DIM,
        time_cond_proj_dim=COND_DIM, norm_groups=8,
    )  # fmt: skip


def _check_heads(unet: UNet3DConditionModel) -> None:
    """The research notes warn that diffusers may build heads from the legacy attention_head_dim; lvdm has
    channels / 16 heads of 16 (transformer_in: 8 of 16). Check the oracle has them."""
    attentions = [m for m in unet.modules() if m.__class__.__name__ == "Attention"]
    assert attentions and all(m.heads * 16 == m.inner_dim and m.scale == 16**-0.5 for m in attentions)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_patched_diffusers_with_fps_and_guidance(layout):
    num_res_blocks, has_middle_block = LAYOUTS[layout]
    reference = _diffusers_unet(num_res_blocks, has_middle_block)
    _check_heads(reference)
    config = _zoo_config(num_res_blocks, has_middle_block)
    model = HummingbirdUNet(config).eval()
    state = _diffusers_to_zoo(reference.state_dict(), config)
    fps_mlp = _randomize(torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128)), 3)
    state.update({f"fps_embedding.{k}": v for k, v in fps_mlp.state_dict().items()})
    model.load_state_dict(state, strict=True)

    generator = torch.Generator().manual_seed(1)
    batch, frames = 2, 3
    x = torch.randn(batch, 4, frames, 8, 12, generator=generator)  # non-square latent
    timesteps = torch.tensor([999.0, 259.0])
    context = torch.randn(batch, 5, CONTEXT_DIM, generator=generator)
    fps = torch.tensor([8, 24])
    timestep_cond = guidance_embedding(torch.tensor([7.5, 2.0]), COND_DIM, batch)

    # lvdm adds fps_embedding(sinusoid(fps)) to the time embedding; diffusers has no fps input: add it by a hook.
    fps_features = get_timestep_embedding(fps, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    hook = reference.time_embedding.register_forward_hook(lambda module, args, out: out + fps_mlp(fps_features))
    with torch.no_grad():
        expected = reference(x, timesteps, context, timestep_cond=timestep_cond).sample
        hook.remove()
        actual = model(x, timesteps, context, fps=fps, timestep_cond=timestep_cond)
        without_fps = reference(x, timesteps, context, timestep_cond=timestep_cond).sample
    assert actual.shape == (batch, 4, frames, 8, 12)
    assert_close(actual, expected, **PARITY)
    assert (expected - without_fps).abs().max() > 1e-2  # the fps embedding is not negligible in this test


def test_int_fps_broadcasts_and_guidance_changes_the_output():
    torch.manual_seed(0)
    model = _randomize(HummingbirdUNet(_zoo_config(1, False))).eval()
    x, context = torch.randn(2, 4, 2, 8, 8), torch.randn(2, 5, CONTEXT_DIM)
    with torch.no_grad():
        as_int = model(x, 500, context, fps=8, timestep_cond=guidance_embedding(7.5, COND_DIM, 2))
        as_tensor = model(x, torch.tensor([500, 500]), context, fps=torch.tensor([8, 8]),
                          timestep_cond=guidance_embedding(7.5, COND_DIM, 2))
        other_scale = model(x, 500, context, fps=8, timestep_cond=guidance_embedding(3.0, COND_DIM, 2))
    assert torch.equal(as_int, as_tensor)
    assert (as_int - other_scale).abs().max() > 1e-3


def test_guidance_embedding_is_the_release_formula():
    """T2V-Turbo's w embedding: w * 1000, half = dim / 2, frequencies exp(-ln(10000) i / (half - 1)), [sin, cos]."""
    w, dim = torch.tensor([7.5, 1.0]), 256
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = (w * 1000.0)[:, None] * freqs[None]
    expected = torch.cat((angles.sin(), angles.cos()), dim=1)
    assert_close(guidance_embedding(w, dim, 2), expected, rtol=0, atol=1e-6)


def test_from_pretrained_reads_a_diffusers_unet3d_folder(tmp_path):
    """A UNet3DConditionModel folder (ModelScope T2V layout: no fps embedding) loads through the 'diffusers'
    converter and matches diffusers without any hook."""
    reference = _diffusers_unet(2, True)
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert model.family == "hummingbird" and not model.config.fps_cond and model.config.num_res_blocks == 2
    generator = torch.Generator().manual_seed(2)
    x, context = torch.randn(1, 4, 2, 8, 16, generator=generator), torch.randn(1, 5, CONTEXT_DIM, generator=generator)
    cond = guidance_embedding(4.0, COND_DIM)
    with torch.no_grad():
        expected = reference(x, 10.0, context, timestep_cond=cond).sample
        assert_close(model(x, 10.0, context, timestep_cond=cond), expected, **PARITY)


@pytest.mark.parametrize(
    "name, layout, keys",
    [("hummingbird-t2v-0.7b", (1, False), 853), ("hummingbird-t2v-0.9b", (1, True), 957)],
)
def test_published_configs_count_like_diffusers_plus_fps_embedding(name, layout, keys):
    """The published sizes on the meta device: 772.1M and 945.2M (the paper's "0.7B" and the card's "945M") are
    diffusers' UNet3DConditionModel at the same config plus the fps embedding MLP (320 -> 1280 -> 1280)."""
    num_res_blocks, has_middle_block = layout
    with torch.device("meta"):
        model = zoo.create(name)
        reference = UNet3DConditionModel(layers_per_block=num_res_blocks, time_cond_proj_dim=256)
    if not has_middle_block:
        reference.mid_block = None
    fps_params = 320 * 1280 + 1280 + 1280 * 1280 + 1280
    assert count_parameters(model) == count_parameters(reference) + fps_params == get_entry(name).expected_params
    assert len(model.state_dict()) == keys
    assert sum(".temopral_conv." in key for key in model.state_dict()) > 0


def test_bad_inputs_are_clear_errors():
    model = zoo.create("hummingbird-tiny")
    context = torch.randn(1, 5, 24)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.randn(1, 4, 2, 7, 8), 1, context)
    with pytest.raises(ValueError, match="context must be"):
        model(torch.randn(1, 4, 2, 8, 8), 1, torch.randn(1, 5, 7))
    with pytest.raises(ValueError, match="timestep_cond must be"):
        model(torch.randn(1, 4, 2, 8, 8), 1, context, timestep_cond=torch.randn(1, 3))
