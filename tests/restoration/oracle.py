"""An independent MLFSR for parity tests, written from the release's description (research notes §4.1): the
release's own reshapes (5-D BasicSS2D input, the SAM's spatial then angular reshapes), a Vim v2 BiMamba whose
two directions call zoo's sequential reference scan, and the release's module names. It shares no code with
zoo.restoration.mlfsr."""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.layers.selective_scan import selective_scan_ref


class OracleBiMamba(nn.Module):
    def __init__(self, d, d_state, d_conv, expand, dt_rank):
        super().__init__()
        di = expand * d
        self.sizes = (dt_rank, d_state, d_state)
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        for suffix in ("", "_b"):
            setattr(self, "conv1d" + suffix, nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1))
            setattr(self, "x_proj" + suffix, nn.Linear(di, dt_rank + 2 * d_state, bias=False))
            setattr(self, "dt_proj" + suffix, nn.Linear(dt_rank, di))
        self.A_log = nn.Parameter(torch.zeros(di, d_state))
        self.D = nn.Parameter(torch.zeros(di))
        self.A_b_log = nn.Parameter(torch.zeros(di, d_state))
        self.D_b = nn.Parameter(torch.zeros(di))
        self.out_proj = nn.Linear(di, d, bias=False)

    def _direction(self, xz, conv, x_proj, dt_proj, A_log, D):
        length = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)
        x = F.silu(conv(x)[..., :length])
        dt, B, C = torch.einsum("bdl,ed->bel", x, x_proj.weight).split(self.sizes, dim=1)
        delta = torch.einsum("brl,dr->bdl", dt, dt_proj.weight)
        return selective_scan_ref(x, delta, -torch.exp(A_log), B, C, D, z, dt_proj.bias, delta_softplus=True)

    def forward(self, tokens):
        xz = torch.einsum("bld,ed->bel", tokens, self.in_proj.weight)
        forward = self._direction(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        backward = self._direction(xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        return torch.einsum("bdl,ed->ble", forward + backward.flip(-1), self.out_proj.weight)


class OracleAttention(nn.Module):
    def __init__(self, c, squeeze):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // squeeze, 1), nn.ReLU(), nn.Conv2d(c // squeeze, c, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.attention(x)


class OracleCAB(nn.Module):
    def __init__(self, c, compress, squeeze):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(c, c // compress, 3, 1, 1), nn.GELU(), nn.Conv2d(c // compress, c, 3, 1, 1),
            OracleAttention(c, squeeze),
        )

    def forward(self, x):
        return self.cab(x)


class OracleSS2D(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = cfg["channels"]
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.mamba = OracleBiMamba(c, cfg["d_state"], cfg["d_conv"], cfg["expand"], cfg["dt_rank"])
        self.gamma = nn.Parameter(torch.zeros(c))
        self.ca = OracleCAB(c, cfg["cab_compress"], cfg["cab_squeeze"])
        self.conv = nn.Conv2d(c, c, 3, 1, 1, groups=c)

    def forward(self, x):  # (b, c, n, v, w): scan (v, w) row-major for each of the n slices
        b, c, n, v, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b * n, v * w, c)
        t1 = self.mamba(self.norm1(tokens)) + tokens
        image = self.norm2(t1).reshape(b * n, v, w, c).permute(0, 3, 1, 2)
        t2 = self.conv(self.ca(image)) + t1.reshape(b * n, v, w, c).permute(0, 3, 1, 2)
        out = t2.reshape(b, n, c, v, w).permute(0, 2, 1, 3, 4)
        return out + x * self.gamma.view(1, c, 1, 1, 1)


def oracle_convs(c):
    layers = []
    for i in range(3):
        layers.append(nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1), bias=False))
        if i < 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class OracleEPI(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.a = cfg["angular_resolution"]
        self.epi_trans = OracleSS2D(cfg)
        self.conv = oracle_convs(cfg["channels"])

    def forward(self, x):
        a, (h, w) = self.a, x.shape[-2:]
        y = rearrange(x, "b c (u v) h w -> b c (v w) u h", u=a, v=a)
        y = rearrange(self.epi_trans(y), "b c (v w) u h -> b c (u v) h w", v=a, w=w)
        y = self.conv(y) + x
        y = rearrange(y, "b c (u v) h w -> b c (u h) v w", u=a, v=a)
        y = rearrange(self.epi_trans(y), "b c (u h) v w -> b c (u v) h w", u=a, h=h)
        return self.conv(y) + x


class OracleSA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.a = cfg["angular_resolution"]
        self.spa_trans = OracleSS2D(cfg)
        self.ang_trans = OracleSS2D(cfg)
        self.conv = oracle_convs(cfg["channels"])

    def forward(self, x):
        a, (h, w) = self.a, x.shape[-2:]
        y = self.conv(self.spa_trans(x)) + x
        y = rearrange(y, "b c (u v) h w -> b c (h w) u v", u=a, v=a)
        y = rearrange(self.ang_trans(y), "b c (h w) u v -> b c (u v) h w", h=h, w=w)
        return self.conv(y) + x


class OracleSAM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.a = cfg["angular_resolution"]
        c = cfg["channels"]
        self.modulation1 = nn.Conv2d(c, c, 1)
        self.modulation2 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, n, h, w = x.shape
        spatial = rearrange(x, "b c n h w -> (b n) c h w")
        spatial = spatial * torch.sigmoid(self.modulation1(spatial))
        angular = rearrange(spatial, "(b u v) c h w -> (b h w) c u v", b=b, u=self.a)
        angular = angular * torch.sigmoid(self.modulation2(angular))
        return rearrange(angular, "(b h w) c u v -> b c (u v) h w", b=b, h=h, w=w)


class OracleMLFSR(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, s = cfg["channels"], cfg["scale"]
        self.cfg = cfg
        self.conv_init0 = nn.Sequential(nn.Conv3d(1, c, (1, 3, 3), padding=(0, 1, 1), bias=False))
        self.conv_init = nn.Sequential(*oracle_convs(c), nn.LeakyReLU(0.2))
        self.altblock = nn.Sequential(
            *[m for _ in range(cfg["num_blocks"]) for m in (OracleEPI(cfg), OracleSA(cfg), OracleSAM(cfg))]
        )
        self.upsampling = nn.Sequential(
            nn.Conv2d(c, c * s * s, 1, bias=False), nn.PixelShuffle(s), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 1, 3, 1, 1, bias=False),
        )

    def forward(self, lr):
        a, s = self.cfg["angular_resolution"], self.cfg["scale"]
        views = rearrange(lr, "b c (u h) (v w) -> b c u v h w", u=a, v=a)
        b, _, _, _, h, w = views.shape
        skip = torch.stack([  # (b, c, u, v, h*s, w*s), one view at a time
            torch.stack([
                F.interpolate(views[:, :, i, j], scale_factor=s, mode="bicubic", align_corners=False)
                for j in range(a)
            ], 2)
            for i in range(a)
        ], 2)
        skip = rearrange(skip, "b c u v h w -> b c (u h) (v w)")
        x = self.conv_init0(rearrange(views, "b c u v h w -> b c (u v) h w"))
        x = self.conv_init(x) + x
        feature = self.altblock(x)
        y = rearrange(feature + x, "b c (u v) h w -> b c (u h) (v w)", u=a)
        return self.upsampling(y) + skip, feature


def randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Every norm, bias, layer scale, A_log and D random (weights keep their fan-in scaled init, re-drawn)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=generator)
            if leaf in ("A_log", "A_b_log"):
                p.copy_(noise.mul(0.5).add(1.0))
            elif leaf in ("D", "D_b"):
                p.copy_(noise)
            elif leaf == "gamma":
                p.copy_(noise.mul(0.3))
            elif "norm" in name and leaf == "weight":
                p.copy_(noise.mul(0.2).add(1.0))
            elif leaf == "bias":
                p.copy_(noise.mul(0.2) - (2.0 if "dt_proj" in name else 0.0))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(noise.mul(fan_in**-0.5))
