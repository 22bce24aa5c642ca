"""The Mamba mixer block, and Vim's bidirectional "v2" variant, with mamba-ssm's parameter names."""

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from .selective_scan import selective_scan

BIMAMBA_TYPES = ("none", "v2")


@functools.cache
def _causal_conv1d_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def causal_conv1d_silu(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """SiLU(causal depthwise conv) of x (batch, channels, length) with ``conv`` padded by kernel_size - 1.

    Uses causal-conv1d's kernel when it is importable and x is on CUDA.
    """
    kernel = _causal_conv1d_fn() if x.is_cuda else None
    if kernel is not None:
        return kernel(x, rearrange(conv.weight, "d 1 w -> d w"), conv.bias, activation="silu")
    return F.silu(conv(x)[..., : x.shape[-1]])


def _s4d_real_log_A(d_inner: int, d_state: int, device) -> Tensor:
    """A_log = log(1..N) for every channel, so A = -exp(A_log) = -(1..N) (S4D-real)."""
    log_A = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device))
    return repeat(log_A, "n -> d n", d=d_inner).contiguous()


class Mamba(nn.Module):
    """Mamba mixer: (batch, length, d_model) -> (batch, length, d_model).

    in_proj splits into x and z; x goes through a causal depthwise conv1d and SiLU, then x_proj gives the
    time step (through dt_proj), B and C of the selective scan; the scan's output is gated by SiLU(z) and
    projected back by out_proj. Parameter names are mamba-ssm's (in_proj, conv1d, x_proj, dt_proj, A_log,
    D, out_proj), so its checkpoints load by identity.

    ``bimamba_type="v2"`` is Vim's bidirectional mixer: a second conv1d_b, x_proj_b, dt_proj_b, A_b_log and
    D_b scan the flipped sequence (x and z flipped), in_proj and out_proj are shared, and
    out = out_proj(y_forward + flip(y_backward)), halved only if ``if_devide_out`` (Vim's spelling).
    MLFSR uses v2 with if_devide_out=False.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        bimamba_type: str = "none",
        if_devide_out: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if bimamba_type not in BIMAMBA_TYPES:
            raise ValueError(f"Mamba: bimamba_type must be one of {BIMAMBA_TYPES}, got {bimamba_type!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.bimamba_type = bimamba_type
        self.if_devide_out = if_devide_out

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = self._make_conv(conv_bias, factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self._init_dt_proj(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.A_log = nn.Parameter(_s4d_real_log_A(self.d_inner, d_state, device))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        if bimamba_type == "v2":
            # Vim leaves dt_proj_b at nn.Linear's default initialisation.
            self.conv1d_b = self._make_conv(conv_bias, factory)
            self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
            self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
            self.A_b_log = nn.Parameter(_s4d_real_log_A(self.d_inner, d_state, device))
            self.D_b = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _make_conv(self, conv_bias: bool, factory: dict) -> nn.Conv1d:
        return nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=self.d_conv,
            groups=self.d_inner,
            padding=self.d_conv - 1,
            bias=conv_bias,
            **factory,
        )

    def _init_dt_proj(self, dt_min, dt_max, dt_init, dt_scale, dt_init_floor) -> None:
        """Weight ~ U(+-dt_rank^-0.5 * dt_scale) or that constant; bias = softplus^-1(dt), dt ~ logU[dt_min, dt_max]."""
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            log_dt = torch.rand(self.d_inner, device=self.dt_proj.bias.device)
            log_dt = log_dt * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = log_dt.exp().clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _scan(self, xz: Tensor, conv1d: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear, A_log, D) -> Tensor:
        """One direction: xz (batch, 2 * d_inner, length) -> gated scan output (batch, d_inner, length)."""
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d_silu(x, conv1d)
        dt, B, C = x_proj(rearrange(x, "b d l -> b l d")).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = rearrange(F.linear(dt, dt_proj.weight), "b l d -> b d l")
        return selective_scan(
            x,
            delta,
            -torch.exp(A_log.float()),
            rearrange(B, "b l n -> b n l"),
            rearrange(C, "b l n -> b n l"),
            D.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        xz = rearrange(self.in_proj(hidden_states), "b l d -> b d l")
        y = self._scan(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        if self.bimamba_type == "v2":
            y_b = self._scan(xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
            y = y + y_b.flip(-1)
            if self.if_devide_out:
                y = y / 2
        return self.out_proj(rearrange(y, "b d l -> b l d"))


__all__ = ["Mamba", "causal_conv1d_silu"]
