"""Chunked gated linear attention (and fla's kernels) against the recurrent reference."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.layers.linear_attention import (
    gated_linear_attention,
    gated_linear_attention_recurrent,
    gated_linear_attention_step,
)

# fp32 throughout; the two forms differ only by rounding (observed max abs diff ~5e-6 on these inputs).
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def gla_inputs(batch, heads, length, key_dim, value_dim, initial_state=True, seed=0, decay_scale=1.0):
    """SpikingBrain-like gates: gk = logsigmoid(x) / 16 * decay_scale, so exp(gk) is a decay in (0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return dict(
        q=torch.randn(batch, heads, length, key_dim, generator=gen),
        k=torch.randn(batch, heads, length, key_dim, generator=gen),
        v=torch.randn(batch, heads, length, value_dim, generator=gen),
        gk=F.logsigmoid(torch.randn(batch, heads, length, key_dim, generator=gen) * 2) / 16 * decay_scale,
        initial_state=torch.randn(batch, heads, key_dim, value_dim, generator=gen) if initial_state else None,
    )


def run_with_grads(inputs, backend, chunk_size=16, scale=None, seed=1):
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    o, final = gated_linear_attention(
        **leaves, scale=scale, output_final_state=True, backend=backend, chunk_size=chunk_size
    )
    gen = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=gen).to(x.device)).sum() for x in (o, final))
    loss.backward()
    return o.detach(), final.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


def assert_matches_recurrent(inputs, chunk_size=16, scale=None):
    ref_o, ref_final, ref_grads = run_with_grads(inputs, "recurrent", scale=scale)
    o, final, grads = run_with_grads(inputs, "chunked", chunk_size, scale=scale)
    torch.testing.assert_close(o, ref_o, **TOLERANCE)
    torch.testing.assert_close(final, ref_final, **TOLERANCE)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        # The decay gradient is a reverse cumulative sum over the sequence of q dq - k dk, whose terms cancel
        # where a decay has no effect (e.g. gk_0 with a zero initial state), so its rounding error scales
        # with the gradient's largest entry rather than with each entry.
        scale = max(1.0, ref_grads[name].abs().max().item()) if name == "gk" else 1.0
        torch.testing.assert_close(
            grads[name],
            ref_grads[name],
            rtol=TOLERANCE["rtol"],
            atol=TOLERANCE["atol"] * scale,
            msg=lambda m, name=name: f"grad {name}: {m}",
        )


@pytest.mark.parametrize("length", [1, 15, 16, 37, 64])
@pytest.mark.parametrize("initial_state", [True, False])
def test_chunked_matches_recurrent(length, initial_state):
    assert_matches_recurrent(gla_inputs(2, 2, length, 8, 6, initial_state))


def test_chunked_matches_recurrent_with_custom_scale():
    assert_matches_recurrent(gla_inputs(1, 2, 21, 4, 5), chunk_size=8, scale=0.3)


def test_chunked_is_stable_under_strong_decay():
    """Cumulative log-decays reach -1000s: exp(-G) factors would overflow, ours must not."""
    inputs = gla_inputs(1, 2, 40, 4, 4, decay_scale=800.0)
    o, final, grads = run_with_grads(inputs, "chunked", chunk_size=32)
    assert all(torch.isfinite(t).all() for t in (o, final, *grads.values()))
    assert_matches_recurrent(inputs, chunk_size=32)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    length=st.integers(1, 45),
    key_dim=st.integers(1, 6),
    value_dim=st.integers(1, 6),
    chunk_size=st.sampled_from([1, 2, 4, 8, 16, 64]),
    initial_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_recurrent_property(batch, heads, length, key_dim, value_dim, chunk_size, initial_state, seed):
    inputs = gla_inputs(batch, heads, length, key_dim, value_dim, initial_state, seed)
    assert_matches_recurrent(inputs, chunk_size=chunk_size)


def test_default_scale_is_inverse_sqrt_key_dim():
    inputs = gla_inputs(1, 1, 5, 9, 3)
    default, _ = gated_linear_attention(**inputs)
    explicit, _ = gated_linear_attention(**inputs, scale=9**-0.5)
    torch.testing.assert_close(default, explicit)


def test_final_state_only_when_asked():
    inputs = gla_inputs(1, 1, 5, 4, 3)
    assert gated_linear_attention(**inputs)[1] is None
    assert gated_linear_attention(**inputs, output_final_state=True)[1].shape == (1, 1, 4, 3)


def test_step_matches_full_sequence_token_by_token():
    inputs = gla_inputs(2, 3, 12, 5, 4)
    full, final = gated_linear_attention(**inputs, output_final_state=True)
    state = inputs["initial_state"].clone()
    for t in range(12):
        o = gated_linear_attention_step(*(inputs[n][:, :, t] for n in ("q", "k", "v", "gk")), state)
        torch.testing.assert_close(o, full[:, :, t], **TOLERANCE)
    torch.testing.assert_close(state, final, **TOLERANCE)


def test_low_precision_inputs():
    inputs = gla_inputs(1, 2, 19, 4, 4)
    half = {k: v.bfloat16() if k != "initial_state" else v for k, v in inputs.items()}
    o, _ = gated_linear_attention(**half)
    assert o.dtype == torch.bfloat16
    ref, _ = gated_linear_attention_recurrent(**{k: v.float() for k, v in half.items()})
    torch.testing.assert_close(o, ref.bfloat16())


def test_shape_errors_name_expected_shapes():
    inputs = gla_inputs(2, 3, 7, 4, 5)
    with pytest.raises(ValueError, match=r"k must be \(batch, heads, length, key_dim\) = \(2, 3, 7, 4\)"):
        gated_linear_attention(**{**inputs, "k": inputs["k"][..., :3]})
    with pytest.raises(ValueError, match=r"v must be \(batch, heads, length, value_dim\) = \(2, 3, 7, value_dim\)"):
        gated_linear_attention(**{**inputs, "v": inputs["v"][:, :, :6]})
    with pytest.raises(ValueError, match=r"initial_state must be \(batch, heads, key_dim, value_dim\) = \(2, 3, 4, 5"):
        gated_linear_attention(**{**inputs, "initial_state": torch.zeros(2, 3, 5, 4)})
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        gated_linear_attention(**{**inputs, "q": inputs["q"].long()})
    with pytest.raises(ValueError, match="backend must be one of"):
        gated_linear_attention(**inputs, backend="naive")


def test_under_torch_compile():
    inputs = gla_inputs(1, 2, 11, 4, 3)
    compiled = torch.compile(gated_linear_attention, backend="aot_eager", fullgraph=True)
    o, final = compiled(**inputs, output_final_state=True)
    expected_o, expected_final = gated_linear_attention(**inputs, output_final_state=True)
    torch.testing.assert_close(o, expected_o)
    torch.testing.assert_close(final, expected_final)


def test_custom_op_registration():
    inputs = gla_inputs(1, 2, 7, 4, 3)
    q, k, v, gk, state = (x.requires_grad_() for x in inputs.values())
    torch.library.opcheck(torch.ops.zoo.gated_linear_attention.default, (q, k, v, gk, 0.5, state, 4, True))


@pytest.mark.gpu
@pytest.mark.parametrize("length", [1, 37, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_kernels_match_recurrent(length, dtype):
    pytest.importorskip("fla.ops.gla")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inputs = gla_inputs(2, 4, length, 64, 64)
    inputs = {k: v.to(dtype).float() if k != "initial_state" else v for k, v in inputs.items()}
    ref_o, ref_final, _ = run_with_grads(inputs, "recurrent")
    cuda = {k: v.cuda().to(dtype) if k != "initial_state" else v.cuda() for k, v in inputs.items()}
    # fla's chunk_gla does its matmuls in TF32 and bf16 outputs keep 8 bits: compare relative error norms.
    tolerance = 5e-3 if dtype == torch.float32 else 1e-2
    for backend in ("auto", "fla"):
        o, final = gated_linear_attention(**cuda, output_final_state=True, backend=backend)
        for name, got, expected in (("o", o, ref_o), ("final_state", final, ref_final)):
            error = ((got.float().cpu() - expected).norm() / expected.norm()).item()
            assert error < tolerance, f"{backend} {name}: relative error {error:.1e}"


@pytest.mark.gpu
def test_auto_uses_fla_only_within_input_precision():
    fla = pytest.importorskip("fla.ops.gla")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from zoo.layers.linear_attention import _fla_kernel

    def kernel(length, dtype):
        return _fla_kernel(torch.zeros(1, 1, length, 16, device="cuda", dtype=dtype))

    assert kernel(64, torch.float32) is fla.fused_recurrent_gla
    assert kernel(65, torch.bfloat16) is fla.chunk_gla
    assert kernel(65, torch.float32) is None


@pytest.mark.gpu
def test_chunked_on_cuda_matches_recurrent():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inputs = gla_inputs(2, 2, 203, 16, 8)
    ref_o, ref_final, ref_grads = run_with_grads(inputs, "recurrent")
    o, final, grads = run_with_grads({k: v.cuda() for k, v in inputs.items()}, "chunked")
    torch.testing.assert_close(o.cpu(), ref_o, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.cpu(), ref_final, rtol=1e-4, atol=1e-4)
    for name in ref_grads:
        torch.testing.assert_close(grads[name].cpu(), ref_grads[name], rtol=1e-4, atol=1e-4)
