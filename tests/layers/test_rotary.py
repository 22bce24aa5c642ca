"""Rotary embeddings: parity with transformers (Llama, Llama-3.1, Phi, VideoLLaMA3/Hulu-Med) and diffusers
(Wan, Z-Image), plus the properties any rotary embedding must have."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from zoo.layers.rotary import Llama3RopeScaling, RotaryEmbedding, apply_rotary, rotary_inv_freq

EXACT = dict(rtol=0, atol=0)


def _grid_ids(frames: int, height: int, width: int) -> torch.Tensor:
    """(frames * height * width, 3) row-major (frame, row, column) ids."""
    grid = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)


def _complex_rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Independent definition of the interleaved layout: consecutive channel pairs as complex numbers."""
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


# ----------------------------------------------------------------------------------------------------
# transformers parity


def test_llama_tables_and_application_are_bit_exact():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0, max_position_embeddings=4096)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3000, 17, 5, 4095, 0, 9, 2048]])
    x = torch.randn(2, 7, 64)
    ref_cos, ref_sin = LlamaRotaryEmbedding(config)(x, position_ids)
    cos, sin = RotaryEmbedding(16, theta=10000.0)(position_ids)
    assert_close(torch.cat((cos, cos), -1), ref_cos, **EXACT)
    assert_close(torch.cat((sin, sin), -1), ref_sin, **EXACT)

    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 7, 16)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, ref_cos, ref_sin)
    assert_close(apply_rotary(q, cos, sin), ref_q, **EXACT)
    assert_close(apply_rotary(k, cos, sin), ref_k, **EXACT)


def test_llama3_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    scaling = Llama3RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    config = LlamaConfig(
        hidden_size=512,
        num_attention_heads=4,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings,
        },
    )
    reference = LlamaRotaryEmbedding(config)
    ours = RotaryEmbedding(128, theta=500000.0, scaling=scaling)
    # The three bands (kept, interpolated, divided by factor) all occur for head_dim 128.
    assert_close(ours.inv_freq(), reference.inv_freq, **EXACT)
    assert not torch.equal(ours.inv_freq(), RotaryEmbedding(128, theta=500000.0).inv_freq())

    position_ids = torch.tensor([[0, 1, 100, 8191, 9000, 100000]])
    ref_cos, ref_sin = reference(torch.zeros(1), position_ids)
    cos, sin = ours(position_ids)
    assert_close(torch.cat((cos, cos), -1), ref_cos, **EXACT)
    assert_close(torch.cat((sin, sin), -1), ref_sin, **EXACT)


def test_partial_rotation_matches_phi():
    from transformers import PhiConfig
    from transformers.models.phi.modeling_phi import PhiRotaryEmbedding, apply_rotary_pos_emb

    config = PhiConfig(hidden_size=160, num_attention_heads=2, partial_rotary_factor=0.4)  # 32 of 80 dims
    position_ids = torch.arange(9)[None]
    ref_cos, ref_sin = PhiRotaryEmbedding(config)(torch.zeros(1), position_ids)
    cos, sin = RotaryEmbedding(32)(position_ids)
    assert_close(torch.cat((cos, cos), -1), ref_cos, **EXACT)

    q, k = torch.randn(1, 2, 9, 80), torch.randn(1, 2, 9, 80)
    ref_q, _ = apply_rotary_pos_emb(q[..., :32], k[..., :32], ref_cos, ref_sin)
    out = apply_rotary(q, cos, sin)
    assert_close(out[..., :32], ref_q, **EXACT)
    assert_close(out[..., 32:], q[..., 32:], **EXACT)


def test_2d_axial_matches_videollama3_vision_rotary():
    """Hulu-Med's NaViT encoder = VideoLLaMA3's: (row, column) angles over head_dim / 2, rotate-half."""
    from transformers import VideoLlama3VisionConfig
    from transformers.models.video_llama_3.modeling_video_llama_3 import (
        VideoLlama3VisionRotaryEmbedding,
        apply_rotary_pos_emb_vision,
    )

    config = VideoLlama3VisionConfig(hidden_size=144, num_attention_heads=2)  # head_dim 72 as in Hulu-Med
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    position_ids = torch.stack((rows.flatten(), cols.flatten()), dim=-1)  # (24, 2)
    ref_cos, ref_sin = VideoLlama3VisionRotaryEmbedding(config)(torch.zeros(1), position_ids)
    cos, sin = RotaryEmbedding((36, 36))(position_ids)
    assert_close(torch.cat((cos, cos), -1), ref_cos, **EXACT)

    q = torch.randn(1, 2, 24, 72)
    ref_q, _ = apply_rotary_pos_emb_vision(q[0].transpose(0, 1), q[0].transpose(0, 1), ref_cos, ref_sin)
    assert_close(apply_rotary(q, cos, sin), ref_q.transpose(0, 1)[None], **EXACT)


# ----------------------------------------------------------------------------------------------------
# diffusers parity


def test_3d_video_matches_wan_rotary_pos_embed():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    frames, height, width = 3, 5, 6  # latent grid after the (1, 2, 2) patch
    reference = WanRotaryPosEmbed(attention_head_dim=128, patch_size=(1, 2, 2), max_seq_len=1024)
    ref_cos, ref_sin = reference(torch.zeros(1, 16, frames, 2 * height, 2 * width))  # (1, L, 1, 128)
    ours = RotaryEmbedding((44, 42, 42), theta=10000.0, angle_dtype=torch.float64)
    cos, sin = ours(_grid_ids(frames, height, width)[None])
    assert_close(cos.repeat_interleave(2, -1), ref_cos[:, :, 0], **EXACT)
    assert_close(sin.repeat_interleave(2, -1), ref_sin[:, :, 0], **EXACT)

    # Wan's processor rotates pairs (2i, 2i+1); check the interleaved application against complex numbers.
    x = torch.randn(1, 2, frames * height * width, 128)
    expected = _complex_rotate(x, torch.atan2(sin, cos).double()[:, None]).float()
    assert_close(apply_rotary(x, cos, sin, interleaved=True), expected, rtol=1e-6, atol=1e-6)


def test_3d_matches_z_image_rope_embedder():
    from diffusers.models.transformers.transformer_z_image import RopeEmbedder

    axes_dims, axes_lens = [32, 48, 48], [1536, 512, 512]
    reference = RopeEmbedder(theta=256.0, axes_dims=axes_dims, axes_lens=axes_lens)
    # Caption tokens at (1 + i, 0, 0), image tokens at (offset + f, h, w), pad tokens at (0, 0, 0).
    caption = torch.stack(
        (torch.arange(1, 33), torch.zeros(32, dtype=torch.long), torch.zeros(32, dtype=torch.long)), -1
    )
    image = _grid_ids(1, 6, 7) + torch.tensor([33, 0, 0])
    ids = torch.cat((caption, image, torch.zeros(3, 3, dtype=torch.long), torch.tensor([[1535, 511, 511]])))
    freqs_cis = reference(ids)  # complex (N, 64)

    cos, sin = RotaryEmbedding(axes_dims, theta=256.0, angle_dtype=torch.float64)(ids)
    # Z-Image rounds float64 angles to float32 before cos/sin; ours rounds after.
    assert_close(cos, freqs_cis.real, rtol=0, atol=1e-4)
    assert_close(sin, freqs_cis.imag, rtol=0, atol=1e-4)
    small = ids.max(-1).values < 100
    assert_close(cos[small], freqs_cis.real[small], rtol=0, atol=4e-6)
    assert_close(sin[small], freqs_cis.imag[small], rtol=0, atol=4e-6)

    x = torch.randn(1, 3, ids.shape[0], 128)
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(1, 3, -1, 64, 2)) * freqs_cis).flatten(-2)
    assert_close(apply_rotary(x, cos, sin, interleaved=True), expected, rtol=0, atol=5e-4)


# ----------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=25, deadline=None)
@given(
    half=st.integers(1, 12),
    extra=st.integers(0, 5),
    p=st.integers(0, 300),
    shift=st.integers(-50, 50),
    interleaved=st.booleans(),
)
def test_scores_depend_only_on_relative_position(half, extra, p, shift, interleaved):
    rope = RotaryEmbedding(2 * half, angle_dtype=torch.float64)
    q, k = torch.randn(2, 1, 1, 1, 2 * half + extra, dtype=torch.float64).unbind(0)
    positions = torch.tensor([[p, p + 7, p + abs(shift), p + abs(shift) + 7]])
    cos, sin = rope(positions)
    cos, sin = cos.double(), sin.double()

    def score(i, j):
        qi = apply_rotary(q, cos[:, i : i + 1], sin[:, i : i + 1], interleaved)
        kj = apply_rotary(k, cos[:, j : j + 1], sin[:, j : j + 1], interleaved)
        return (qi * kj).sum()

    assert_close(score(1, 0), score(3, 2), rtol=1e-5, atol=1e-5)
    rotated = apply_rotary(q, cos[:, :1], sin[:, :1], interleaved)
    assert_close(rotated.norm(), q.norm())  # a rotation
    assert_close(rotated[..., 2 * half :], q[..., 2 * half :], **EXACT)  # partial: the tail passes through


def test_interleaved_is_rotate_half_with_channels_permuted():
    cos, sin = RotaryEmbedding(16)(torch.arange(5)[None])
    x = torch.randn(2, 3, 5, 16)
    to_half = torch.cat((torch.arange(0, 16, 2), torch.arange(1, 16, 2)))  # interleaved -> rotate-half order
    assert_close(apply_rotary(x, cos, sin, interleaved=True)[..., to_half], apply_rotary(x[..., to_half], cos, sin))


def test_position_zero_is_identity_and_low_precision_input_keeps_dtype():
    cos, sin = RotaryEmbedding((4, 4))(torch.zeros(1, 3, 2, dtype=torch.long))
    x = torch.randn(1, 2, 3, 8, dtype=torch.bfloat16)
    out = apply_rotary(x, cos, sin)
    assert out.dtype == torch.bfloat16
    assert_close(out, x, **EXACT)


def test_inv_freq_formula():
    assert_close(rotary_inv_freq(8, 100.0), torch.tensor([1.0, 100.0**-0.25, 100.0**-0.5, 100.0**-0.75]))


def test_errors_name_the_expected_shapes():
    with pytest.raises(ValueError, match=r"\(B, L, 3\)"):
        RotaryEmbedding((4, 4, 4))(torch.zeros(2, 5, dtype=torch.long))
    cos, sin = RotaryEmbedding(16)(torch.arange(5)[None])
    with pytest.raises(ValueError, match=r"\(B, H, L, D\) with L = 5 and D >= 16"):
        apply_rotary(torch.randn(1, 2, 5, 8), cos, sin)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)
