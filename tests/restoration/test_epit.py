"""EPIT (MLFSR's teacher): parity with an independent oracle at the published size, BasicLFSR's checkpoint format."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import zoo
from zoo.errors import CheckpointError
from zoo.registry import get_entry

from .oracle import oracle_convs, randomize


class OracleTrans(nn.Module):
    """Attention written out: q, k from LN(x), v from x, heads of 16, additive -inf outside the window."""

    def __init__(self, c, heads=8):
        super().__init__()
        d = 2 * c
        self.heads = heads
        self.linear_in = nn.Linear(c, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.attention = nn.Module()
        self.attention.in_proj_weight = nn.Parameter(torch.zeros(3 * d, d))
        self.attention.out_proj = nn.Linear(d, d, bias=False)
        self.feed_forward = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d, bias=False), nn.ReLU(), nn.Identity(),
                                          nn.Linear(2 * d, d, bias=False))
        self.linear_out = nn.Linear(d, c, bias=False)

    @staticmethod
    def mask(h, w, kh, kw):
        m = torch.full((h, w, h, w), float("-inf"))
        for i in range(h):
            for j in range(w):
                m[i, j, max(0, i - kh // 2):min(h, i + kh - kh // 2), max(0, j - kw // 2):min(w, j + kw - kw // 2)] = 0
        return m.reshape(h * w, h * w)

    def forward(self, x, window):
        b, c, n, h, w = x.shape
        t = self.linear_in(x.permute(0, 2, 3, 4, 1).reshape(b * n, h * w, c))
        q_w, k_w, v_w = self.attention.in_proj_weight.chunk(3)
        normed = self.norm(t)
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for z in (normed @ q_w.T, normed @ k_w.T, t @ v_w.T))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + self.mask(h, w, *window)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        t = self.attention.out_proj(attended) + t
        t = self.feed_forward(t) + t
        return self.linear_out(t).reshape(b, n, h, w, c).permute(0, 4, 1, 2, 3)


class OracleAlt(nn.Module):
    def __init__(self, c, a):
        super().__init__()
        self.a = a
        self.epi_trans = OracleTrans(c)
        self.conv = oracle_convs(c)

    def forward(self, x):
        a, (h, w) = self.a, x.shape[-2:]
        y = rearrange(x, "b c (u v) h w -> b c (v w) u h", u=a)
        y = rearrange(self.epi_trans(y, (2 * a, 11)), "b c (v w) u h -> b c (u v) h w", v=a, w=w)
        y = self.conv(y) + x
        y = rearrange(y, "b c (u v) h w -> b c (u h) v w", u=a)
        y = rearrange(self.epi_trans(y, (2 * a, 11)), "b c (u h) v w -> b c (u v) h w", u=a, h=h)
        return self.conv(y) + x


class OracleEPIT(nn.Module):
    def __init__(self, scale, c=64, a=5):
        super().__init__()
        self.a, self.s = a, scale
        self.conv_init0 = nn.Sequential(nn.Conv3d(1, c, (1, 3, 3), padding=(0, 1, 1), bias=False))
        self.conv_init = nn.Sequential(*oracle_convs(c), nn.LeakyReLU(0.2))
        self.altblock = nn.Sequential(*[OracleAlt(c, a) for _ in range(5)])
        self.upsampling = nn.Sequential(nn.Conv2d(c, c * scale**2, 1, bias=False), nn.PixelShuffle(scale),
                                        nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, 1, 1, bias=False))

    def forward(self, lr):
        a, s = self.a, self.s
        views = rearrange(lr, "b c (u h) (v w) -> (b u v) c h w", u=a, v=a)
        skip = F.interpolate(views, scale_factor=s, mode="bicubic", align_corners=False)
        skip = rearrange(skip, "(b u v) c h w -> b c (u h) (v w)", u=a, v=a)
        x = self.conv_init0(rearrange(lr, "b c (u h) (v w) -> b c (u v) h w", u=a, v=a))
        x = self.conv_init(x) + x
        feature = self.altblock(x)
        y = rearrange(feature + x, "b c (u v) h w -> b c (u h) (v w)", u=a)
        return self.upsampling(y) + skip, feature


@pytest.mark.parametrize("scale, params", [(4, 1_470_080), (2, 1_420_928)])
def test_parity_with_oracle_at_published_size(scale, params, tmp_path):
    oracle = OracleEPIT(scale)
    randomize(oracle, torch.Generator().manual_seed(scale))
    oracle.eval()
    state = oracle.state_dict()
    with torch.device("meta"):
        published = zoo.create(f"epit-x{scale}")
    assert sum(p.numel() for p in published.parameters()) == params == get_entry(f"epit-x{scale}").expected_params
    assert set(published.state_dict()) == set(state) and len(state) == 71
    path = tmp_path / f"EPIT_5x5_{scale}x_model.pth"
    torch.save({"epoch": 80, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model = zoo.create(f"epit-x{scale}", checkpoint_path=path)
    lr = torch.rand(2, 1, 5 * 8, 5 * 14, generator=torch.Generator().manual_seed(5))  # 14 > the 11-pixel window
    with torch.no_grad():
        expected, expected_feature = oracle(lr)
        sr, feature = model.forward_features(lr)
    assert (sr - expected).abs().max() < 1e-4 and (feature - expected_feature).abs().max() < 1e-4
    assert expected.std() > 0.1 and expected_feature.abs().mean() > 0.05
    if scale == 4:
        with pytest.raises(CheckpointError, match="x4 super-resolution, the model is x2"):
            zoo.create("epit-x2", checkpoint_path=path)
