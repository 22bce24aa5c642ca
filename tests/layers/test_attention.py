"""Attention: masks, every backend against the fp32 reference (outputs and gradients), KV caches, and parity
with transformers' Llama/Qwen3 attention and diffusers' Wan/Z-Image attention."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from zoo.layers.attention import (
    Attention,
    DynamicCache,
    StaticCache,
    block_mask,
    causal_mask,
    padding_mask,
    scaled_dot_product,
    segment_ids_from_cu_seqlens,
    sliding_window_mask,
)
from zoo.layers.rotary import RotaryEmbedding

TIGHT = dict(rtol=1e-5, atol=1e-6)


def _qkv(b=2, hq=4, hkv=2, lq=7, lk=7, d=8, dv=None, dtype=torch.float32, device="cpu", grad=False):
    q = torch.randn(b, hq, lq, d, dtype=dtype, device=device)
    k = torch.randn(b, hkv, lk, d, dtype=dtype, device=device)
    v = torch.randn(b, hkv, lk, dv or d, dtype=dtype, device=device)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _outputs_and_grads(backend, q, k, v, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = scaled_dot_product(q, k, v, backend=backend, **kwargs)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out))
    return out.detach(), q.grad, k.grad, v.grad


def _assert_backends_agree(backend, q, k, v, tolerance=TIGHT, **kwargs):
    ours = _outputs_and_grads(backend, q, k, v, **kwargs)
    reference = _outputs_and_grads("reference", q.float(), k.float(), v.float(), **kwargs)
    for name, a, b in zip(("output", "dq", "dk", "dv"), ours, reference, strict=True):
        assert torch.isfinite(a).all(), name
        assert_close(a.float(), b, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def _explicit_mask(q_len, k_len, visible):
    return torch.tensor([[visible(i + k_len - q_len, j) for j in range(k_len)] for i in range(q_len)])


# ----------------------------------------------------------------------------------------------------
# Masks


def test_mask_builders():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    # Queries are the last positions: 2 queries over 4 keys see keys <= 2 and <= 3.
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool())
    for q_len, k_len, window in [(6, 6, 1), (6, 6, 3), (3, 9, 4), (9, 9, 20)]:
        expected = _explicit_mask(q_len, k_len, lambda i, j, window=window: i - window < j <= i)
        assert torch.equal(sliding_window_mask(q_len, k_len, window=window), expected)
    # window w shows exactly w keys once enough history exists (4096, not 4097, for window=4096)
    assert sliding_window_mask(1, 5000, window=4096).sum() == 4096

    attention_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert padding_mask(attention_mask).shape == (2, 1, 1, 3)
    assert torch.equal(padding_mask(attention_mask)[0, 0, 0], torch.tensor([False, True, True]))

    segments = torch.tensor([0, 0, 1, 1, 1, 2])
    assert torch.equal(segment_ids_from_cu_seqlens(torch.tensor([0, 2, 5, 6])), segments)
    blocks = block_mask(segments)
    assert blocks.shape == (1, 6, 6)
    assert torch.equal(blocks[0], segments[:, None] == segments[None, :])
    assert block_mask(segments[None].expand(2, 6)).shape == (2, 1, 6, 6)


# ----------------------------------------------------------------------------------------------------
# SDPA against the reference


CASES = {
    "full": dict(),
    "causal": dict(is_causal=True),
    "causal_chunk_over_cache": dict(is_causal=True, lq=3, lk=8),
    "padding": dict(attn_mask=padding_mask(torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7]))),
    "padding_causal": dict(attn_mask=padding_mask(torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])), is_causal=True),
    "sliding_window": dict(window=3),
    "sliding_window_chunk": dict(window=4, lq=2, lk=9),
    "block": dict(attn_mask=block_mask(torch.tensor([0, 0, 0, 1, 1, 2, 2]))),
    "multi_head": dict(hkv=4),
    "multi_query": dict(hkv=1),
    "cross": dict(lq=5, lk=11),
    "cross_padded": dict(lq=5, lk=4, attn_mask=padding_mask(torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]))),
    "scale_and_value_dim": dict(scale=0.3, dv=5),
    "per_head_mask": dict(attn_mask=torch.rand(2, 4, 7, 7) > 0.3),
    "no_visible_key": dict(is_causal=True, lq=5, lk=3),
}


@pytest.mark.parametrize("case", CASES)
def test_sdpa_matches_reference(case):
    kwargs = dict(CASES[case])
    shape = {key: kwargs.pop(key) for key in ("hkv", "lq", "lk", "dv") if key in kwargs}
    _assert_backends_agree("sdpa", *_qkv(**shape), **kwargs)


def test_sliding_window_equals_explicit_mask():
    q, k, v = _qkv(lq=12, lk=12)
    explicit = _explicit_mask(12, 12, lambda i, j: i - 5 < j <= i)
    for backend in ("sdpa", "reference"):
        assert_close(
            scaled_dot_product(q, k, v, window=5, backend=backend),
            scaled_dot_product(q, k, v, attn_mask=explicit, backend="reference"),
            **TIGHT,
        )


def test_reference_is_softmax_attention():
    q, k, v = _qkv(b=1, hq=1, hkv=1, lq=3, lk=4, d=2)
    weights = torch.softmax(q[0, 0] @ k[0, 0].T / 2**0.5, dim=-1)
    assert_close(scaled_dot_product(q, k, v, backend="reference")[0, 0], weights @ v[0, 0])


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_rows_without_visible_keys_give_zeros(backend):
    q, k, v = _qkv(grad=True)
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    mask[0, :, 3] = False  # one query sees nothing
    mask[1] = False  # a whole sequence sees nothing
    out = scaled_dot_product(q, k, v, attn_mask=mask, backend=backend)
    assert torch.equal(out[0, :, 3], torch.zeros_like(out[0, :, 3])) and not out[1].any()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("lengths", [[3, 1, 5], [3, 3, 3]])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_sequences_equal_separate_sequences(causal, lengths):
    cu_seqlens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0).to(torch.int32)
    q, k, v = _qkv(b=1, lq=9, lk=9)
    for backend in ("auto", "reference"):
        packed = scaled_dot_product(q, k, v, is_causal=causal, cu_seqlens=cu_seqlens, backend=backend)
        separate = [
            scaled_dot_product(qs, ks, vs, is_causal=causal, backend="reference")
            for qs, ks, vs in zip(*(t.split(lengths, dim=2) for t in (q, k, v)), strict=True)
        ]
        assert_close(packed, torch.cat(separate, dim=2), **TIGHT)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    hkv=st.integers(1, 2),
    groups=st.integers(1, 3),
    lq=st.integers(1, 9),
    extra_keys=st.integers(0, 4),
    d=st.sampled_from([1, 4, 8]),
    mask_kind=st.sampled_from(["none", "random", "padding"]),
    is_causal=st.booleans(),
    window=st.one_of(st.none(), st.integers(1, 6)),
    seed=st.integers(0, 2**16),
)
def test_sdpa_matches_reference_property(b, hkv, groups, lq, extra_keys, d, mask_kind, is_causal, window, seed):
    torch.manual_seed(seed)
    lk = lq + extra_keys
    q, k, v = _qkv(b=b, hq=hkv * groups, hkv=hkv, lq=lq, lk=lk, d=d)
    attn_mask = None
    if mask_kind == "random":  # fully masked rows included, with probability
        attn_mask = torch.rand(b, 1, lq, lk) > 0.5
    elif mask_kind == "padding":
        lengths = torch.randint(0, lk + 1, (b,))  # 0: a sequence made only of padding
        attn_mask = padding_mask((torch.arange(lk) >= lk - lengths[:, None]).long())  # left padding
    _assert_backends_agree("sdpa", q, k, v, attn_mask=attn_mask, is_causal=is_causal, window=window)


def test_errors_name_the_expected_shapes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q \(B, Hq, Lq, D\)"):
        scaled_dot_product(q[0], k, v)
    with pytest.raises(ValueError, match="Hq a multiple of Hkv"):
        scaled_dot_product(q[:, :3], k, v)
    with pytest.raises(ValueError, match=r"does not broadcast to \(B, Hq, Lq, Lk\) = \(2, 4, 7, 7\)"):
        scaled_dot_product(q, k, v, attn_mask=torch.ones(3, 1, 7, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean mask"):
        scaled_dot_product(q, k, v, attn_mask=torch.zeros(7, 7))
    with pytest.raises(TypeError, match="share a dtype"):
        scaled_dot_product(q, k.double(), v)
    with pytest.raises(ValueError, match=r"\(1, H, total, D\)"):
        scaled_dot_product(q, k, v, cu_seqlens=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="backend must be one of"):
        scaled_dot_product(q, k, v, backend="xformers")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend='flash' cannot run"):
            scaled_dot_product(q, k, v, backend="flash")


# ----------------------------------------------------------------------------------------------------
# Attention module


def _randomized(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module


def test_module_backends_agree_in_outputs_and_parameter_gradients():
    torch.manual_seed(0)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 9, 24)
    results = []
    for backend in ("sdpa", "reference"):
        torch.manual_seed(1)
        attention = _randomized(
            Attention(32, 4, 2, context_dim=24, qkv_bias=True, out_bias=True, qk_norm="rms", backend=backend)
        )
        out = attention(x, context=context, attn_mask=padding_mask(torch.tensor([[1] * 9, [1] * 4 + [0] * 5])))
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad for p in attention.parameters()])
    for a, b in zip(*results, strict=True):  # gradients relative to their scale
        scale = b.abs().max()
        assert_close(a / scale, b / scale, **TIGHT)


def test_module_key_names_and_options():
    attention = Attention(32, 4, 2, qk_norm="rms", qkv_bias=True)
    assert set(attention.state_dict()) == {
        "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
        "q_norm.weight", "k_norm.weight", "o_proj.weight",
    }  # fmt: skip
    assert attention.k_proj.weight.shape == (16, 32) and attention.k_norm.weight.shape == (8,)
    with pytest.raises(ValueError, match="self-attention"):
        attention(torch.randn(1, 2, 32), context=torch.randn(1, 3, 32), rotary=(torch.ones(2, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="layer_idx"):
        attention(torch.randn(1, 2, 32), cache=DynamicCache())
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        Attention(32, 4, 3)


def _llama_config(**overrides):
    from transformers import LlamaConfig

    config = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, attention_bias=False)
    config.update(overrides)
    config = LlamaConfig(**config)
    config._attn_implementation = "sdpa"
    return config


def test_matches_transformers_llama_attention_with_padding():
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = _llama_config()
    reference = _randomized(LlamaAttention(config, layer_idx=0))
    ours = Attention(32, 4, 2)
    ours.load_state_dict(reference.state_dict())  # same key names

    x = torch.randn(2, 6, 32)
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cos, sin = LlamaRotaryEmbedding(config)(x, position_ids)
    mask = causal_mask(6) & padding_mask(attention_mask)
    expected, _ = reference(x, position_embeddings=(cos, sin), attention_mask=mask)
    out = ours(x, attn_mask=padding_mask(attention_mask), is_causal=True, rotary=RotaryEmbedding(8)(position_ids))
    assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_matches_transformers_qwen3_attention_qk_norm():
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding

    config = Qwen3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6)
    config._attn_implementation = "sdpa"
    reference = _randomized(Qwen3Attention(config, layer_idx=0))
    ours = Attention(32, 4, 2, head_dim=16, qk_norm="rms", norm_eps=1e-6)
    ours.load_state_dict(reference.state_dict())  # q_norm / k_norm included

    x = torch.randn(1, 5, 32)
    position_ids = torch.arange(5)[None]
    expected, _ = reference(x, position_embeddings=Qwen3RotaryEmbedding(config)(x, position_ids), attention_mask=None)
    out = ours(x, is_causal=True, rotary=RotaryEmbedding(16, theta=config.rope_parameters["rope_theta"])(position_ids))
    assert_close(out, expected, rtol=1e-5, atol=1e-6)


def _from_diffusers(state_dict):
    names = {
        "to_q": "q_proj",
        "to_k": "k_proj",
        "to_v": "v_proj",
        "to_out.0": "o_proj",
        "norm_q": "q_norm",
        "norm_k": "k_norm",
    }
    renamed = {}
    for key, value in state_dict.items():
        module, param = key.rsplit(".", 1)
        renamed[f"{names[module]}.{param}"] = value
    return renamed


def test_matches_diffusers_wan_attention_with_3d_rotary():
    from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor, WanRotaryPosEmbed

    dim, heads = 64, 2  # head_dim 32 -> axes (12, 10, 10)
    reference = _randomized(WanAttention(dim=dim, heads=heads, dim_head=32, eps=1e-6, processor=WanAttnProcessor()))
    ours = Attention(dim, heads, qkv_bias=True, out_bias=True, qk_norm="rms_across_heads", rotary_interleaved=True)
    ours.load_state_dict(_from_diffusers(reference.state_dict()))

    frames, height, width = 2, 3, 4
    rotary = WanRotaryPosEmbed(attention_head_dim=32, patch_size=(1, 2, 2), max_seq_len=1024)
    x = torch.randn(1, frames * height * width, dim)
    expected = reference(x, rotary_emb=rotary(torch.zeros(1, 16, frames, 2 * height, 2 * width)))
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (frames, height, width)), indexing="ij"), -1)
    cos_sin = RotaryEmbedding((12, 10, 10), angle_dtype=torch.float64)(grid.reshape(1, -1, 3))
    out = ours(x, rotary=cos_sin)
    assert_close(out, expected, rtol=1e-5, atol=1e-5)

    context = torch.randn(1, 7, dim)  # cross-attention to text, no mask, no rotary
    assert_close(ours(x, context=context), reference(x, encoder_hidden_states=context), rtol=1e-5, atol=1e-5)


def test_matches_diffusers_z_image_attention_with_3d_rotary():
    from diffusers.models.attention_processor import Attention as DiffusersAttention
    from diffusers.models.transformers.transformer_z_image import RopeEmbedder, ZSingleStreamAttnProcessor

    dim, heads = 64, 2  # head_dim 32 -> axes (8, 12, 12)
    reference = DiffusersAttention(
        query_dim=dim, dim_head=32, heads=heads, qk_norm="rms_norm", eps=1e-5, bias=False, out_bias=False,
        processor=ZSingleStreamAttnProcessor(),
    )  # fmt: skip
    _randomized(reference)
    ours = Attention(dim, heads, qk_norm="rms", norm_eps=1e-5, rotary_interleaved=True)
    ours.load_state_dict(_from_diffusers(reference.state_dict()))

    caption_ids = torch.tensor([[1 + i, 0, 0] for i in range(5)])
    image_ids = torch.tensor([[6, h, w] for h in range(3) for w in range(3)])
    ids = torch.cat((caption_ids, image_ids))
    freqs_cis = RopeEmbedder(theta=256.0, axes_dims=[8, 12, 12], axes_lens=[64, 16, 16])(ids)
    x = torch.randn(2, ids.shape[0], dim)
    valid = torch.tensor([[True] * 14, [True] * 10 + [False] * 4])  # Z-Image masks only cross-batch padding
    expected = reference(x, attention_mask=valid, freqs_cis=freqs_cis[None].expand(2, -1, -1))
    cos_sin = RotaryEmbedding((8, 12, 12), theta=256.0, angle_dtype=torch.float64)(ids)
    out = ours(x, attn_mask=padding_mask(valid), rotary=cos_sin)
    assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# KV caches


@pytest.mark.parametrize("cache_type", ["dynamic", "static"])
@pytest.mark.parametrize("window", [None, 3])
def test_decoding_with_cache_equals_full_recompute(cache_type, window):
    """A left-padded GQA batch: prefill 3 tokens, then decode the rest one by one."""
    torch.manual_seed(0)
    layers = [_randomized(Attention(32, 4, 2, qk_norm="rms", sliding_window=window)) for _ in range(2)]
    rotary = RotaryEmbedding(8, theta=100.0)
    length = 9
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[0, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    x = torch.randn(2, length, 32)

    def run(tokens, positions, mask, cache=None):
        h = tokens
        for idx, layer in enumerate(layers):
            h = h + layer(
                h, attn_mask=padding_mask(mask), is_causal=True, rotary=rotary(positions), cache=cache, layer_idx=idx
            )
        return h

    full = run(x, position_ids, attention_mask)
    cache = DynamicCache() if cache_type == "dynamic" else StaticCache(max_length=16)
    steps = [slice(0, 3)] + [slice(t, t + 1) for t in range(3, length)]
    decoded = torch.cat([run(x[:, s], position_ids[:, s], attention_mask[:, : s.stop], cache) for s in steps], dim=1)
    assert cache.get_seq_length(0) == cache.get_seq_length(1) == length
    valid = attention_mask.bool()
    assert_close(decoded[valid], full[valid], rtol=1e-5, atol=1e-5)


def test_static_cache_with_write_position_decodes_like_the_prefix_mode():
    """The fixed-shape mode of compiled decoding: whole buffers returned, unwritten positions masked out."""
    torch.manual_seed(0)
    layers = [_randomized(Attention(32, 4, 2, qk_norm="rms")) for _ in range(2)]
    rotary = RotaryEmbedding(8, theta=100.0)
    x = torch.randn(2, 7, 32)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[0, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    def run(tokens, positions, mask, cache):
        for idx, layer in enumerate(layers):
            tokens = tokens + layer(tokens, attn_mask=padding_mask(mask), is_causal=True, rotary=rotary(positions),
                                    cache=cache, layer_idx=idx)
        return tokens

    prefix, fixed = StaticCache(max_length=12), StaticCache(max_length=12)
    expected = [run(x[:, :3], position_ids[:, :3], attention_mask[:, :3], prefix)]
    decoded = [run(x[:, :3], position_ids[:, :3], attention_mask[:, :3], fixed)]
    fixed.write_position = torch.tensor([3])
    key_mask = torch.cat([attention_mask[:, :3], torch.zeros(2, 9, dtype=torch.long)], dim=1)
    for t in range(3, 7):
        expected.append(run(x[:, t:t + 1], position_ids[:, t:t + 1], attention_mask[:, :t + 1], prefix))
        key_mask[:, t] = 1
        keys_before = fixed.keys[0].data_ptr()
        decoded.append(run(x[:, t:t + 1], position_ids[:, t:t + 1], key_mask, fixed))
        assert fixed.keys[0].data_ptr() == keys_before and fixed.key_length(1) == 12
        fixed.write_position += 1
    assert fixed.get_seq_length() == 7
    valid = attention_mask.bool()
    assert_close(torch.cat(decoded, 1)[valid], torch.cat(expected, 1)[valid], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one new position per update"):
        fixed.update(x.new_zeros(2, 2, 2, 8), x.new_zeros(2, 2, 2, 8), layer_idx=0)
    with pytest.raises(ValueError, match="filled before"):
        fixed.update(x.new_zeros(2, 2, 1, 8), x.new_zeros(2, 2, 1, 8), layer_idx=5)
    window = Attention(32, 4, 2, sliding_window=3)
    with pytest.raises(ValueError, match="sliding-window"):
        window(x[:, :1], is_causal=True, cache=fixed, layer_idx=0)


def test_static_cache_writes_in_place_and_checks_capacity():
    cache = StaticCache(max_length=4)
    k = torch.randn(1, 2, 3, 8)
    cache.update(k, k + 1, layer_idx=0)
    buffer = cache.keys[0].data_ptr()
    keys, _ = cache.update(k[:, :, :1] * 2, k[:, :, :1], layer_idx=0)
    assert cache.keys[0].data_ptr() == buffer and keys.data_ptr() == buffer
    assert keys.shape == (1, 2, 4, 8) and torch.equal(keys[:, :, :3], k) and torch.equal(keys[:, :, 3], 2 * k[:, :, 0])
    with pytest.raises(ValueError, match=r"\(B, Hkv, max_length, D\)"):
        cache.update(k[:, :, :1], k[:, :, :1], layer_idx=0)
    assert StaticCache(4).get_seq_length(0) == DynamicCache().get_seq_length(0) == 0


# ----------------------------------------------------------------------------------------------------
# CUDA fast paths (run with -m gpu on a machine with CUDA)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
BF16 = dict(rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("sdpa_backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"])
@pytest.mark.parametrize(
    "case", ["full", "causal", "padding_causal", "sliding_window", "multi_head", "multi_query", "no_visible_key"]
)
def test_cuda_sdpa_backends_bf16_match_reference(sdpa_backend, case):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kwargs = {key: (value.cuda() if torch.is_tensor(value) else value) for key, value in CASES[case].items()}
    shape = {key: kwargs.pop(key) for key in ("hkv", "lq", "lk", "dv") if key in kwargs}
    q, k, v = _qkv(**shape, d=64, dtype=torch.bfloat16, device="cuda")
    try:
        with sdpa_kernel([getattr(SDPBackend, sdpa_backend)]):
            _assert_backends_agree("sdpa", q, k, v, tolerance=BF16, **kwargs)
    except RuntimeError as error:
        if "No available kernel" not in str(error):
            raise
        pytest.skip(f"{sdpa_backend} cannot run {case}: {error}")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(
    "case", ["full", "causal", "causal_chunk_over_cache", "sliding_window", "multi_query", "no_visible_key"]
)
def test_flash_attn_matches_reference(case):
    pytest.importorskip("flash_attn")
    kwargs = dict(CASES[case])
    shape = {key: kwargs.pop(key) for key in ("hkv", "lq", "lk", "dv") if key in kwargs}
    _assert_backends_agree("flash", *_qkv(**shape, d=64, dtype=torch.bfloat16, device="cuda"), tolerance=BF16, **kwargs)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_varlen_matches_block_mask(causal):
    pytest.importorskip("flash_attn")
    cu_seqlens = torch.tensor([0, 3, 4, 9], dtype=torch.int32, device="cuda")
    q, k, v = _qkv(b=1, lq=9, lk=9, d=64, dtype=torch.bfloat16, device="cuda")
    _assert_backends_agree("flash", q, k, v, tolerance=BF16, is_causal=causal, cu_seqlens=cu_seqlens)
