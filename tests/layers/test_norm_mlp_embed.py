"""Norms, MLPs, patch/timestep embeddings and adaLN modulation: parity with transformers and diffusers."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from zoo.layers.embed import PatchEmbed, TimestepEmbedding, timestep_embedding
from zoo.layers.mlp import Mlp, SwiGLU
from zoo.layers.modulation import AdaLNModulation, ScaleShiftTable, gated_residual, modulate
from zoo.layers.norm import HeadLayerNorm, HeadRMSNorm, LayerNorm, RMSNorm, qk_norm

EXACT = dict(rtol=0, atol=0)


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


# ----------------------------------------------------------------------------------------------------
# Norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_bit_exact_with_llama(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    reference = _randomize(LlamaRMSNorm(64, eps=1e-5)).to(dtype)
    ours = RMSNorm(64, eps=1e-5).to(dtype)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 5, 64, dtype=dtype) * 4
    assert_close(ours(x), reference(x), **EXACT)
    assert ours(x).dtype == dtype


def test_rms_norm_matches_diffusers():
    from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm

    reference = _randomize(DiffusersRMSNorm(48, eps=1e-6))
    ours = RMSNorm(48)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 7, 48)
    assert_close(ours(x), reference(x), rtol=1e-6, atol=1e-6)


def test_layer_norm_computes_in_float32():
    norm = _randomize(LayerNorm(32, eps=1e-6)).to(torch.bfloat16)
    assert set(norm.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 3, 32, dtype=torch.bfloat16) * 100 + 300  # large mean: catastrophic in bf16
    expected = F.layer_norm(x.float(), (32,), norm.weight.float(), norm.bias.float(), 1e-6).to(torch.bfloat16)
    assert_close(norm(x), expected, **EXACT)

    plain = LayerNorm(32, eps=1e-6, elementwise_affine=False)  # Wan's norm1 / norm2
    assert_close(plain(x.float()), F.layer_norm(x.float(), (32,), eps=1e-6), **EXACT)


def test_qk_norm_variants():
    heads, head_dim = 3, 8
    x = torch.randn(2, 5, heads * head_dim)
    split = x.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (B, H, L, D)

    per_head = _randomize(qk_norm("rms", heads, head_dim))
    assert isinstance(per_head, HeadRMSNorm) and per_head.weight.shape == (head_dim,)
    single = RMSNorm(head_dim)
    single.load_state_dict(per_head.state_dict())
    assert_close(per_head(x), single(x.unflatten(-1, (heads, head_dim))).flatten(-2), **EXACT)
    assert_close(per_head(split), single(split), **EXACT)  # split heads work too

    across = qk_norm("rms_across_heads", heads, head_dim)
    assert type(across) is RMSNorm and across.weight.shape == (heads * head_dim,)

    layer = _randomize(qk_norm("layer", heads, head_dim, eps=1e-5))
    assert isinstance(layer, HeadLayerNorm) and set(layer.state_dict()) == {"weight", "bias"}
    expected = F.layer_norm(x.unflatten(-1, (heads, head_dim)), (head_dim,), layer.weight, layer.bias, 1e-5)
    assert_close(layer(x), expected.flatten(-2), rtol=1e-6, atol=1e-6)

    assert isinstance(qk_norm(None, heads, head_dim), nn.Identity)
    with pytest.raises(ValueError, match="rms_across_heads"):
        qk_norm("l2", heads, head_dim)


def test_rms_across_heads_matches_wan_norm():
    reference = _randomize(torch.nn.RMSNorm(24, eps=1e-6))  # diffusers WanAttention.norm_q
    ours = qk_norm("rms_across_heads", 3, 8, eps=1e-6)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5, 24)
    assert_close(ours(x), reference(x), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# MLPs


def test_swiglu_matches_llama_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    reference = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=80, hidden_act="silu"))
    ours = SwiGLU(32, 80)
    ours.load_state_dict(reference.state_dict())  # same key names
    x = torch.randn(2, 5, 32)
    assert_close(ours(x), reference(x), **EXACT)


def test_mlp_matches_siglip_mlp():
    from transformers import SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMLP

    config = SiglipVisionConfig(hidden_size=32, intermediate_size=72, hidden_act="gelu_pytorch_tanh")
    reference = SiglipMLP(config)
    ours = Mlp(32, 72, act_layer=partial(nn.GELU, approximate="tanh"))
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5, 32)
    assert_close(ours(x), reference(x), rtol=1e-6, atol=1e-6)


def test_mlp_options():
    mlp = Mlp(8, 16, out_dim=4, bias=False)
    assert set(mlp.state_dict()) == {"fc1.weight", "fc2.weight"}
    x = torch.randn(3, 8)
    assert_close(mlp(x), F.gelu(x @ mlp.fc1.weight.T) @ mlp.fc2.weight.T)
    swiglu = SwiGLU(8, 16, bias=True, act_layer=nn.GELU)
    assert "gate_proj.bias" in swiglu.state_dict()
    expected = swiglu.down_proj(F.gelu(swiglu.gate_proj(x)) * swiglu.up_proj(x))
    assert_close(swiglu(x), expected, **EXACT)


# ----------------------------------------------------------------------------------------------------
# Embeddings


def test_patch_embed_2d_and_3d_match_explicit_patches():
    embed = PatchEmbed(3, 16, 4)
    x = torch.randn(2, 3, 8, 12)
    tokens, grid = embed(x)
    assert grid == (2, 3) and tokens.shape == (2, 6, 16)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, gh, gw, 4, 4)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 6, 48)
    assert_close(tokens, patches @ embed.proj.weight.reshape(16, 48).T + embed.proj.bias, rtol=1e-5, atol=1e-5)

    video = PatchEmbed(16, 24, (1, 2, 2))  # Wan
    latents = torch.randn(1, 16, 3, 4, 6)
    tokens, grid = video(latents)
    assert grid == (3, 2, 3) and tokens.shape == (1, 18, 24)
    # Wan / diffusers: conv, then flatten(2).transpose(1, 2)
    assert_close(tokens, video.proj(latents).flatten(2).transpose(1, 2), **EXACT)


def test_patch_embed_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\) with C = 16"):
        PatchEmbed(16, 24, (1, 2, 2))(torch.randn(1, 16, 3, 5, 6))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) with C = 3"):
        PatchEmbed(3, 8, 2)(torch.randn(1, 4, 6, 6))


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(4, 65),  # dim // 2 > downscale_freq_shift
    flip=st.booleans(),
    shift=st.sampled_from([0.0, 1.0]),
    scale=st.sampled_from([1.0, 1000.0]),
    max_period=st.sampled_from([10000, 100]),
)
def test_timestep_embedding_matches_diffusers(dim, flip, shift, scale, max_period):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 3.5, 999.0, 500.25])
    options = dict(flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale, max_period=max_period)
    ours = timestep_embedding(t, dim, **options)
    assert_close(ours, get_timestep_embedding(t, dim, **options), **EXACT)


def test_timestep_embedding_matches_wan_and_z_image():
    from diffusers.models.embeddings import Timesteps
    from diffusers.models.transformers.transformer_z_image import TimestepEmbedder

    t = torch.tensor([0.0, 0.3, 1.0])
    wan = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t * 1000)
    assert_close(timestep_embedding(t * 1000, 256, flip_sin_to_cos=True, downscale_freq_shift=0), wan, **EXACT)
    z_image = TimestepEmbedder.timestep_embedding(t * 1000, 256)
    assert_close(timestep_embedding(t * 1000, 256, flip_sin_to_cos=True, downscale_freq_shift=0), z_image, **EXACT)

    per_token = torch.rand(2, 7) * 1000  # Wan2.2 TI2V: one timestep per token
    flat = timestep_embedding(per_token.flatten(), 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    per_token_emb = timestep_embedding(per_token, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert_close(per_token_emb, flat.unflatten(0, (2, 7)), **EXACT)
    assert math.isclose(float(timestep_embedding(torch.zeros(1), 4)[0, 2]), 1.0)  # [sin, cos] at t = 0


def test_timestep_embedding_mlp_matches_diffusers():
    from diffusers.models.embeddings import TimestepEmbedding as DiffusersTimestepEmbedding

    reference = DiffusersTimestepEmbedding(256, 64, out_dim=32)
    ours = TimestepEmbedding(256, 64, out_dim=32)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 256)
    assert_close(ours(x), reference(x), **EXACT)


# ----------------------------------------------------------------------------------------------------
# Modulation


def test_modulate_and_gate_formulas_and_dtypes():
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    shift, scale, gate = torch.randn(3, 2, 1, 8).unbind(0)  # float32, as Wan computes them
    out = modulate(x, shift, scale)
    assert out.dtype == torch.bfloat16
    assert_close(out, (x.float() * (1 + scale) + shift).to(torch.bfloat16), **EXACT)
    assert_close(modulate(x.float(), None, scale), x.float() * (1 + scale), **EXACT)
    branch = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    assert_close(gated_residual(x, branch, gate), (x.float() + gate * branch.float()).to(torch.bfloat16), **EXACT)


def test_adaln_modulation_chunks_like_z_image():
    cond = torch.randn(2, 16)
    modulation = AdaLNModulation(16, 8, 4, act_layer=None)  # Z-Image block: no SiLU
    scale_msa, gate_msa, scale_mlp, gate_mlp = modulation(cond)
    expected = modulation.linear(cond).unsqueeze(1).chunk(4, dim=2)
    for ours, ref in zip((scale_msa, gate_msa, scale_mlp, gate_mlp), expected, strict=True):
        assert ours.shape == (2, 1, 8)
        assert_close(ours, ref, **EXACT)

    with_act = AdaLNModulation(16, 8, 2)
    assert_close(with_act(cond)[1], with_act.linear(F.silu(cond))[:, None, 8:], **EXACT)
    per_token = with_act(torch.randn(2, 5, 16))
    assert [c.shape for c in per_token] == [(2, 5, 8)] * 2


def test_scale_shift_table_matches_wan():
    table = ScaleShiftTable(6, 8)
    temb = torch.randn(2, 6, 8, dtype=torch.bfloat16)  # shared time projection, unflattened
    expected = (table.table + temb.float()).chunk(6, dim=1)
    for ours, ref in zip(table(temb), expected, strict=True):
        assert ours.shape == (2, 1, 8) and ours.dtype == torch.float32
        assert_close(ours, ref, **EXACT)

    per_token = torch.randn(2, 5, 6, 8)  # Wan2.2 TI2V
    expected = (table.table.unsqueeze(0) + per_token).chunk(6, dim=2)
    for ours, ref in zip(table(per_token), expected, strict=True):
        assert_close(ours, ref.squeeze(2), **EXACT)

    head = ScaleShiftTable(2, 8)  # Wan's head adds the time embedding (B, dim) to both chunks
    e = torch.randn(2, 8)
    shift, scale = head(e.unsqueeze(1))
    assert_close(shift, (head.table[:, :1] + e[:, None]), **EXACT)
    assert_close(scale, (head.table[:, 1:] + e[:, None]), **EXACT)


def test_swiglu_reduces_wide_one_row_projections_when_compiled():
    """A compiled decoding step (one row on CPU) reads the gate and up weights through one fused reduction, which
    inductor's decompose_mm_pass leaves to MKL above 2048 columns; several rows keep their GEMMs."""
    from torch._inductor.utils import run_and_get_code

    mlp = SwiGLU(64, 2560, bias=True).eval()
    compiled = torch.compile(mlp, fullgraph=True)
    for rows, gemms in ((1, 1), (3, 3)):  # one row: only the down projection (2560 columns in) stays a GEMM
        x = torch.randn(rows, 1, 64)
        with torch.no_grad():
            out, code = run_and_get_code(compiled, x)
            assert_close(out, mlp(x), rtol=1e-5, atol=1e-5)
        assert "\n".join(code).count("extern_kernels.addmm") == gemms


def test_mlp_and_attention_reduce_wide_one_row_projections_when_compiled():
    """Phi-2's decoding step (2560 wide) is past decompose_mm_pass's 2048 limit: Mlp's fc1/fc2 and attention's
    q/k/v/o take the fused one-row reduction of `project` instead of MKL's single-threaded GEMV."""
    from torch._inductor.utils import run_and_get_code

    from zoo.layers.attention import Attention

    torch.manual_seed(0)
    mlp = Mlp(64, 2560, act_layer=partial(nn.GELU, approximate="tanh")).eval()
    attention = Attention(2080, 4, qkv_bias=True, out_bias=True).eval()  # 2080 columns: past the pass's limit
    for module, width in ((mlp, 64), (attention, 2080)):
        compiled = torch.compile(module, fullgraph=True)
        for rows, gemms in ((1, 0), (3, 2 if module is mlp else 4)):
            x = torch.randn(1, rows, width)
            with torch.no_grad():
                out, code = run_and_get_code(compiled, x)
                assert_close(out, module(x), rtol=1e-4, atol=1e-4)
            assert "\n".join(code).count("extern_kernels.addmm") == gemms
