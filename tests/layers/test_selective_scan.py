"""The chunked selective scan (and mamba-ssm's kernel) against the sequential reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.layers.selective_scan import selective_scan, selective_scan_ref, selective_state_update

# fp32 throughout; the two paths differ only by rounding (observed max abs diff ~1e-6 on these inputs).
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_inputs(batch, dim, length, state, groups=None, c_groups=None, seed=0, dtype=torch.float32):
    """Mamba-like magnitudes: dt = softplus(delta + bias) around 0.1 to 2, A = -exp(A_log) in about -5..-0.3."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    def bc(groups):
        return randn(batch, state, length) if groups is None else randn(batch, groups, state, length)

    c_groups = groups if c_groups is None else c_groups
    return dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length, scale=0.5),
        A=-torch.exp(torch.randn(dim, state, generator=gen) * 0.8),
        B=bc(groups),
        C=bc(c_groups),
        D=torch.randn(dim, generator=gen),
        z=randn(batch, dim, length),
        delta_bias=torch.randn(dim, generator=gen) * 0.5,
    )


def run_with_grads(inputs, backend, delta_softplus=True, chunk_size=8, seed=1):
    """Output, last state and the gradients of a fixed random projection of both."""
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan(
        **leaves, delta_softplus=delta_softplus, return_last_state=True, backend=backend, chunk_size=chunk_size
    )
    gen = torch.Generator().manual_seed(seed)
    loss = sum((x.float() * torch.randn(x.shape, generator=gen).to(x.device)).sum() for x in (out, last))
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out.detach(), last.detach(), grads


def assert_matches_reference(inputs, delta_softplus=True, chunk_size=8):
    ref_out, ref_last, ref_grads = run_with_grads(inputs, "ref", delta_softplus)
    out, last, grads = run_with_grads(inputs, "chunked", delta_softplus, chunk_size)
    torch.testing.assert_close(out, ref_out, **TOLERANCE)
    torch.testing.assert_close(last, ref_last, **TOLERANCE)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("length", [1, 7, 8, 29, 64])
def test_chunked_matches_reference_lengths(length):
    assert_matches_reference(scan_inputs(2, 6, length, 4))


@pytest.mark.parametrize("groups, c_groups", [(1, 1), (2, 2), (3, 3), (2, 3), (None, 2)])
def test_chunked_matches_reference_grouped(groups, c_groups):
    assert_matches_reference(scan_inputs(2, 6, 21, 3, groups=groups, c_groups=c_groups))


@pytest.mark.parametrize("drop", [(), ("z",), ("D",), ("delta_bias",), ("z", "D", "delta_bias")])
@pytest.mark.parametrize("delta_softplus", [True, False])
def test_chunked_matches_reference_optional_inputs(drop, delta_softplus):
    inputs = scan_inputs(1, 4, 19, 3)
    if not delta_softplus:
        inputs["delta"] = inputs["delta"].abs() * 0.3
    for name in drop:
        inputs[name] = None
    assert_matches_reference(inputs, delta_softplus=delta_softplus, chunk_size=5)


def test_chunked_is_stable_under_strong_decay():
    """dt * A far below -88 in places: exp of large positive numbers would overflow, ours must not."""
    inputs = scan_inputs(1, 4, 50, 4)
    inputs["A"] = inputs["A"] * 40
    inputs["delta_bias"] = inputs["delta_bias"] + 4
    out, last, grads = run_with_grads(inputs, "chunked", chunk_size=16)
    assert all(torch.isfinite(t).all() for t in (out, last, *grads.values()))
    assert_matches_reference(inputs, chunk_size=16)


def test_return_last_state_flag():
    inputs = scan_inputs(2, 4, 9, 3)
    out = selective_scan(**inputs, delta_softplus=True)
    out_with_state, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert isinstance(out, torch.Tensor) and last.shape == (2, 4, 3) and last.dtype == torch.float32
    torch.testing.assert_close(out, out_with_state)


def test_low_precision_inputs_compute_in_fp32():
    inputs = scan_inputs(1, 4, 13, 3, dtype=torch.bfloat16)
    inputs_fp32 = {k: v.float() for k, v in inputs.items()}
    out = selective_scan(**inputs, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, selective_scan_ref(**inputs_fp32, delta_softplus=True).bfloat16())


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    groups=st.sampled_from([None, 1, 2]),
    channels_per_group=st.integers(1, 3),
    length=st.integers(1, 40),
    state=st.integers(1, 5),
    chunk_size=st.integers(1, 17),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_reference_property(batch, groups, channels_per_group, length, state, chunk_size, seed):
    dim = (groups or 1) * channels_per_group
    assert_matches_reference(scan_inputs(batch, dim, length, state, groups=groups, seed=seed), chunk_size=chunk_size)


@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_matches_full_scan_token_by_token(groups):
    inputs = scan_inputs(2, 4, 11, 3, groups=groups)
    full, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    state = torch.zeros(2, 4, 3)
    for t in range(11):
        step = selective_state_update(
            state,
            inputs["u"][..., t],
            inputs["delta"][..., t],
            inputs["A"],
            inputs["B"][..., t],
            inputs["C"][..., t],
            inputs["D"],
            z=inputs["z"][..., t],
            dt_bias=inputs["delta_bias"],
            dt_softplus=True,
        )
        torch.testing.assert_close(step, full[..., t], **TOLERANCE)
    torch.testing.assert_close(state, last, **TOLERANCE)


def test_shape_errors_name_expected_shapes():
    inputs = scan_inputs(2, 4, 9, 3)
    with pytest.raises(ValueError, match=r"delta must be \(batch, dim, length\) = \(2, 4, 9\)"):
        selective_scan(**{**inputs, "delta": inputs["delta"][..., :5]})
    with pytest.raises(ValueError, match=r"A must be \(dim, state\) with dim = 4"):
        selective_scan(**{**inputs, "A": inputs["A"][:3]})
    with pytest.raises(ValueError, match=r"B must be \(batch, state, length\) = \(2, 3, 9\) or \(batch, groups"):
        selective_scan(**{**inputs, "B": torch.randn(2, 3, 3, 9)})
    with pytest.raises(ValueError, match=r"D must have shape \(4,\)"):
        selective_scan(**{**inputs, "D": torch.ones(5)})


def test_dtype_and_backend_errors():
    inputs = scan_inputs(1, 2, 5, 2)
    with pytest.raises(TypeError, match="u must be a floating-point tensor"):
        selective_scan(**{**inputs, "u": inputs["u"].long()})
    with pytest.raises(TypeError, match="complex A"):
        selective_scan(**{**inputs, "A": inputs["A"].to(torch.complex64)})
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inputs, backend="triton")


def test_custom_op_registration():
    inputs = scan_inputs(1, 4, 6, 2, groups=2)
    args = [v.requires_grad_() for v in inputs.values()]
    torch.library.opcheck(torch.ops.zoo.selective_scan.default, (*args, True, 4, True))


@pytest.mark.gpu
@pytest.mark.parametrize("groups", [None, 2])
def test_mamba_ssm_kernel_matches_reference(groups):
    pytest.importorskip("mamba_ssm")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inputs = scan_inputs(2, 64, 300, 16, groups=groups)
    ref_out, ref_last, _ = run_with_grads(inputs, "ref")
    cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
    out, last = selective_scan(**cuda_inputs, delta_softplus=True, return_last_state=True, backend="mamba_ssm")
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.cpu(), ref_last, rtol=1e-4, atol=1e-4)
    out, last = selective_scan(**cuda_inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_chunked_on_cuda_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inputs = scan_inputs(2, 32, 203, 8, groups=2)
    ref_out, ref_last, ref_grads = run_with_grads(inputs, "ref")
    out, last, grads = run_with_grads({k: v.cuda() for k, v in inputs.items()}, "chunked", chunk_size=64)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.cpu(), ref_last, rtol=1e-4, atol=1e-4)
    for name in ref_grads:
        torch.testing.assert_close(grads[name].cpu(), ref_grads[name], rtol=1e-4, atol=1e-4)
