"""FlopCounterMode counts the selective scan and gated linear attention with their analytic formulas."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.flop_counter import FlopCounterMode

from zoo.layers.flops import (
    count_flops,
    flops_by_op,
    gated_linear_attention_backward_flops,
    gated_linear_attention_flops,
    selective_scan_backward_flops,
    selective_scan_flops,
)
from zoo.layers.linear_attention import gated_linear_attention
from zoo.layers.mamba import Mamba
from zoo.layers.selective_scan import selective_scan


def linear_flops(tokens, module):
    return 2 * tokens * module.in_features * module.out_features


def depthwise_conv_flops(batch, length, conv):
    """As FlopCounterMode counts a convolution: 2 * batch * weight elements * output length (L + k - 1 here)."""
    return 2 * batch * conv.weight.numel() * (length + conv.kernel_size[0] - 1)


class TinyGLA(nn.Module):
    """A minimal GLA attention block: projections, the GLA op, output projection."""

    def __init__(self, dim=16, heads=2, key_dim=8, value_dim=4):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, heads * key_dim)
        self.k_proj = nn.Linear(dim, heads * key_dim)
        self.v_proj = nn.Linear(dim, heads * value_dim)
        self.g_proj = nn.Linear(dim, heads * key_dim)
        self.o_proj = nn.Linear(heads * value_dim, dim, bias=False)

    def forward(self, x):
        def heads(t):
            return rearrange(t, "b l (h d) -> b h l d", h=self.heads)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        o, _ = gated_linear_attention(q, k, v, heads(F.logsigmoid(self.g_proj(x)) / 16))
        return self.o_proj(rearrange(o, "b h l d -> b l (h d)"))


def test_scan_formula_counts_each_term():
    base = dict(batch=2, dim=3, length=5, state=4)
    none = selective_scan_flops(**base, has_D=False, has_z=False, has_delta_bias=False, delta_softplus=False)
    assert none == 2 * 3 * 5 * (7 * 4 + 1)
    everything = selective_scan_flops(**base, has_D=True, has_z=True, has_delta_bias=True, delta_softplus=True)
    assert everything - none == 2 * 3 * 5 * (2 + 2 + 1 + 1)


@pytest.mark.parametrize("bimamba_type", ["none", "v2"])
def test_mamba_block_flops_are_linear_conv_and_scan(bimamba_type):
    batch, length = 2, 11
    m = Mamba(16, d_state=4, d_conv=4, bimamba_type=bimamba_type)
    counted = flops_by_op(m, torch.randn(batch, length, 16))
    tokens = batch * length
    directions = 2 if bimamba_type == "v2" else 1
    scan = selective_scan_flops(
        batch, m.d_inner, length, m.d_state, has_D=True, has_z=True, has_delta_bias=True, delta_softplus=True
    )
    linear = linear_flops(tokens, m.in_proj) + linear_flops(tokens, m.out_proj)
    linear += directions * (linear_flops(tokens, m.x_proj) + linear_flops(tokens, m.dt_proj))
    assert counted == {
        "selective_scan": directions * scan,
        "mm": linear,
        "convolution": directions * depthwise_conv_flops(batch, length, m.conv1d),
    }
    assert count_flops(m, torch.randn(batch, length, 16)) == sum(counted.values()) > 0


def test_gla_block_flops_are_linear_and_attention():
    batch, length = 2, 9
    block = TinyGLA(dim=16, heads=2, key_dim=8, value_dim=4)
    counted = flops_by_op(block, torch.randn(batch, length, 16))
    tokens = batch * length
    projections = (block.q_proj, block.k_proj, block.v_proj, block.g_proj, block.o_proj)
    assert counted == {
        "gated_linear_attention": gated_linear_attention_flops(batch, 2, length, 8, 4),
        "addmm": sum(linear_flops(tokens, p) for p in projections[:4]),
        "mm": linear_flops(tokens, block.o_proj),
    }


def test_backward_ops_are_counted():
    u, delta, z = torch.randn(3, 2, 6, 10, requires_grad=True).unbind(0)
    A = -torch.rand(6, 4, requires_grad=True)
    B, C = torch.randn(2, 2, 4, 10).unbind(0)
    q, k, gk = torch.randn(3, 1, 2, 7, 5).unbind(0)
    v = torch.randn(1, 2, 7, 3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        selective_scan(u, delta, A, B, C, z=z, delta_softplus=True).sum().backward()
        gated_linear_attention(q, k, v, F.logsigmoid(gk))[0].sum().backward()
    counts = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    flags = dict(has_D=False, has_z=True, has_delta_bias=False, delta_softplus=True)
    assert counts["selective_scan"] == selective_scan_flops(2, 6, 10, 4, **flags)
    assert counts["selective_scan_backward"] == selective_scan_backward_flops(2, 6, 10, 4, **flags)
    assert counts["gated_linear_attention"] == gated_linear_attention_flops(1, 2, 7, 5, 3)
    assert counts["gated_linear_attention_backward"] == gated_linear_attention_backward_flops(1, 2, 7, 5, 3)


def test_count_does_not_depend_on_chunk_size_or_backend():
    u, delta = torch.randn(2, 1, 8, 33).unbind(0)
    A, B, C = -torch.rand(8, 3), torch.randn(1, 3, 33), torch.randn(1, 3, 33)
    counts = {
        count_flops(selective_scan, u, delta, A, B, C, backend=backend, chunk_size=chunk)
        for backend, chunk in (("auto", 64), ("chunked", 5), ("chunked", 1))
    }
    flags = dict(has_D=False, has_z=False, has_delta_bias=False, delta_softplus=False)
    assert counts == {selective_scan_flops(1, 8, 33, 3, **flags)}
