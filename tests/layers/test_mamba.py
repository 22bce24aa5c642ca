"""The Mamba mixer against a token-by-token reference of the block, and Vim's bidirectional v2 variant."""

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers.mamba import Mamba, causal_conv1d_silu

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
MAMBA_KEYS = {
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "A_log",
    "D",
    "out_proj.weight",
}
VIM_V2_KEYS = {
    "conv1d_b.weight",
    "conv1d_b.bias",
    "x_proj_b.weight",
    "dt_proj_b.weight",
    "dt_proj_b.bias",
    "A_b_log",
    "D_b",
}


def randomise(module, seed=0):
    """Random parameters (weights ~ N(0, 1 / fan_in), the rest ~ N(0, 0.25)), so every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = p[0].numel() ** -0.5 if p.dim() > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def reference_direction(x, z, conv, x_proj, dt_proj, A_log, D, dt_rank, d_state):
    """One direction of the block, one token at a time: x, z (batch, length, d_inner) -> (batch, length, d_inner)."""
    batch, length, d_inner = x.shape
    width = conv.weight.shape[-1]
    A = -torch.exp(A_log)
    h = x.new_zeros(batch, d_inner, d_state)
    outputs = []
    for t in range(length):
        conv_t = sum(conv.weight[:, 0, width - 1 - j] * x[:, t - j] for j in range(width) if t - j >= 0)
        if conv.bias is not None:
            conv_t = conv_t + conv.bias
        x_t = F.silu(conv_t)
        dt, B, C = (x_t @ x_proj.weight.T).split([dt_rank, d_state, d_state], dim=-1)
        delta = F.softplus(dt @ dt_proj.weight.T + dt_proj.bias)
        h = torch.exp(delta[..., None] * A) * h + (delta * x_t)[..., None] * B[:, None, :]
        y = (h * C[:, None, :]).sum(-1) + D * x_t
        outputs.append(y * F.silu(z[:, t]))
    return torch.stack(outputs, dim=1)


def reference_block(m, hidden):
    x, z = F.linear(hidden, m.in_proj.weight, m.in_proj.bias).chunk(2, dim=-1)
    args = (m.dt_rank, m.d_state)
    y = reference_direction(x, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D, *args)
    if m.bimamba_type == "v2":
        y_b = reference_direction(x.flip(1), z.flip(1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b, *args)
        y = y + y_b.flip(1)
        if m.if_devide_out:
            y = y / 2
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(bias=True, conv_bias=False, d_conv=3, dt_rank=3),
        dict(bimamba_type="v2"),
        dict(bimamba_type="v2", if_devide_out=True, bias=True),
    ],
)
@pytest.mark.parametrize("length", [1, 13])
def test_block_matches_token_by_token_reference(config, length):
    m = randomise(Mamba(12, d_state=4, expand=2, **config))
    hidden = torch.randn(2, length, 12, requires_grad=True)
    out = m(hidden)
    expected = reference_block(m, hidden)
    torch.testing.assert_close(out, expected, **TOLERANCE)

    cotangent = torch.randn_like(out)
    grads = torch.autograd.grad(out, [hidden, *m.parameters()], cotangent)
    expected_grads = torch.autograd.grad(expected, [hidden, *m.parameters()], cotangent, allow_unused=True)
    for name, grad, expected_grad in zip(["input", *dict(m.named_parameters())], grads, expected_grads, strict=True):
        expected_grad = torch.zeros_like(grad) if expected_grad is None else expected_grad
        torch.testing.assert_close(grad, expected_grad, **TOLERANCE, msg=lambda msg, name=name: f"{name}: {msg}")


@pytest.mark.parametrize("if_devide_out", [False, True])
def test_v2_is_forward_plus_flipped_backward(if_devide_out):
    """out = out_proj(y_f + flip(y_b)), halved only with if_devide_out: composed from two unidirectional blocks."""
    v2 = randomise(Mamba(8, d_state=3, bimamba_type="v2", if_devide_out=if_devide_out))
    forward, backward = Mamba(8, d_state=3), Mamba(8, d_state=3)
    state = v2.state_dict()
    forward.load_state_dict({k: state[k] for k in MAMBA_KEYS})
    renamed = {"conv1d.": "conv1d_b.", "x_proj.": "x_proj_b.", "dt_proj.": "dt_proj_b.", "A_log": "A_b_log", "D": "D_b"}

    def backward_key(key):
        return next((key.replace(a, b, 1) for a, b in renamed.items() if key.startswith(a)), key)

    backward.load_state_dict({k: state[backward_key(k)] for k in MAMBA_KEYS})
    hidden = torch.randn(2, 9, 8)
    expected = forward(hidden) + backward(hidden.flip(1)).flip(1)
    if if_devide_out:
        expected = expected / 2
    torch.testing.assert_close(v2(hidden), expected, **TOLERANCE)


def test_parameter_names_match_mamba_ssm_and_vim():
    assert set(Mamba(16).state_dict()) == MAMBA_KEYS
    assert set(Mamba(16, bimamba_type="v2").state_dict()) == MAMBA_KEYS | VIM_V2_KEYS
    assert set(Mamba(16, bias=True).state_dict()) == MAMBA_KEYS | {"in_proj.bias", "out_proj.bias"}
    assert "conv1d.bias" not in Mamba(16, conv_bias=False).state_dict()


def test_shapes_and_s4d_initialisation():
    m = Mamba(32, d_state=8, d_conv=4, expand=2, dt_min=0.002, dt_max=0.05)
    assert m.d_inner == 64 and m.dt_rank == 2
    assert m.in_proj.weight.shape == (128, 32)
    assert m.conv1d.weight.shape == (64, 1, 4)
    assert m.x_proj.weight.shape == (2 + 16, 64)
    assert m.dt_proj.weight.shape == (64, 2)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 9.0)).expand(64, 8))
    torch.testing.assert_close(m.D, torch.ones(64))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    assert m.dt_proj.weight.abs().max() <= 2**-0.5
    assert m.A_log.dtype == torch.float32 and Mamba(8, dtype=torch.bfloat16).A_log.dtype == torch.float32


def test_constant_dt_init_and_meta_device():
    m = Mamba(16, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(m.dt_proj.weight, torch.full_like(m.dt_proj.weight, 2.0))
    meta = Mamba(768, d_state=16, bimamba_type="v2", device="meta")
    assert sum(p.numel() for p in meta.parameters()) > 0 and meta.A_log.is_meta


def test_output_is_causal():
    m = randomise(Mamba(8, d_state=3))
    hidden = torch.randn(1, 10, 8)
    changed = hidden.clone()
    changed[:, 6:] += 1.0
    torch.testing.assert_close(m(hidden)[:, :6], m(changed)[:, :6])


def test_low_precision_block():
    m = Mamba(8, d_state=4, dtype=torch.bfloat16)
    out = m(torch.randn(2, 7, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_block_under_torch_compile():
    """The scan custom op traces whole (fake kernel, registered autograd): one graph, same values and grads."""
    m = randomise(Mamba(8, d_state=3, bimamba_type="v2"))
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    out, expected = compiled(hidden), m(hidden)
    torch.testing.assert_close(out, expected)
    grad = torch.autograd.grad(out.sum(), hidden)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), hidden)[0])


def test_config_errors():
    with pytest.raises(ValueError, match="bimamba_type must be one of"):
        Mamba(8, bimamba_type="v1")
    with pytest.raises(ValueError, match="dt_init must be"):
        Mamba(8, dt_init="normal")


@pytest.mark.gpu
def test_causal_conv1d_kernel_matches_conv1d():
    pytest.importorskip("causal_conv1d")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    conv = torch.nn.Conv1d(64, 64, 4, groups=64, padding=3).cuda()
    x = torch.randn(2, 64, 100, device="cuda")
    expected = F.silu(conv(x)[..., :100])
    torch.testing.assert_close(causal_conv1d_silu(x, conv), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_block_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    m = randomise(Mamba(32, d_state=8, bimamba_type="v2"))
    hidden = torch.randn(2, 50, 32)
    expected = m(hidden)
    out = m.cuda()(hidden.cuda())
    torch.testing.assert_close(out.cpu(), expected, rtol=math.sqrt(1e-7), atol=1e-3)
