"""Analytic FLOP counts for the recurrent ops that `FlopCounterMode` cannot see inside.

`torch.utils.flop_counter.FlopCounterMode` counts matmuls, convolutions and attention and treats every
other op as free, so a scan or a linear-attention recurrence would count as zero. `zoo::selective_scan`
and `zoo::gated_linear_attention` (and their backward ops) are therefore `torch.library` custom ops with
the formulas below registered through `register_flop_formula`, next to their definitions.

Convention: FLOPs = 2 x multiply-accumulates, as `FlopCounterMode` counts matmuls; every other
arithmetic op counts 1 per element, and so does each transcendental (exp, softplus, sigmoid, SiLU).
The count is that of the recurrence as written, whatever algorithm (sequential, chunked, CUDA kernel)
evaluates it, so it does not depend on the chunk size or the device.
"""

from torch.utils.flop_counter import FlopCounterMode

# Selective scan, per (batch, channel, step, state): dt*A, exp, (dt*u)*B, the state update h = dA*h + dBu
# (a multiply-add, 2), and the readout <h, C> (a multiply-add, 2).
_SCAN_PER_STATE = 7
# Backward, per (batch, channel, step, state): the forward above recomputed (7); the adjoint
# lambda = dA*lambda + C*gy (3); dC, dB and d(dt*u) contractions (2 each); lambda*h_prev*dA (2);
# its contractions with A and with dt, for d(dt) and dA (2 each).
_SCAN_BACKWARD_PER_STATE = 22


def selective_scan_flops(
    batch: int,
    dim: int,
    length: int,
    state: int,
    *,
    has_D: bool,
    has_z: bool,
    has_delta_bias: bool,
    delta_softplus: bool,
) -> int:
    """FLOPs of one selective scan forward.

    Per (batch, channel, step): 7 per state (see `_SCAN_PER_STATE`) plus dt*u (1), the bias add (1),
    softplus (1), the skip D*u + y (2) and the gate y*SiLU(z) (2), each only when present.
    """
    per_step = _SCAN_PER_STATE * state + 1 + 2 * has_D + 2 * has_z + has_delta_bias + delta_softplus
    return batch * dim * length * per_step


def selective_scan_backward_flops(
    batch: int,
    dim: int,
    length: int,
    state: int,
    *,
    has_D: bool,
    has_z: bool,
    has_delta_bias: bool,
    delta_softplus: bool,
) -> int:
    """FLOPs of one selective scan backward (the forward is recomputed inside it).

    Per (batch, channel, step): 22 per state (see `_SCAN_BACKWARD_PER_STATE`); dt*u recomputed and the
    gradients d(dt) += d(dt*u) u, du = d(dt*u) dt (4); with D, du += gy D and dD += gy u (4); with z, the
    sigmoid, the gradients gy and dz (9) and the recomputed y + D u (2, with D); with delta_bias, its add
    recomputed and its gradient sum (2); with softplus, softplus recomputed and its derivative (3).
    """
    per_step = (
        _SCAN_BACKWARD_PER_STATE * state
        + 4
        + 4 * has_D
        + 9 * has_z
        + 2 * (has_D and has_z)
        + 2 * has_delta_bias
        + 3 * delta_softplus
    )
    return batch * dim * length * per_step


def gated_linear_attention_flops(batch: int, heads: int, length: int, key_dim: int, value_dim: int) -> int:
    """FLOPs of one gated linear attention forward.

    Per (batch, head, step): exp of the key decay (K) and the query scaling (K); the state update
    S = exp(g)^T * S + k^T v, a multiply then a multiply-add per state entry (3 K V); the readout
    o = q S, a multiply-add per state entry (2 K V).
    """
    return batch * heads * length * (5 * key_dim * value_dim + 2 * key_dim)


def gated_linear_attention_backward_flops(batch: int, heads: int, length: int, key_dim: int, value_dim: int) -> int:
    """FLOPs of one gated linear attention backward.

    Per (batch, head, step): the forward state recomputed (3 K V + K); the adjoint state update
    (3 K V); dq, dk and dv, one multiply-add per state entry each (6 K V); the decay gradient
    q*dq - k*dk and its reverse cumulative sum (4 K).
    """
    return batch * heads * length * (12 * key_dim * value_dim + 5 * key_dim)


def count_flops(fn, *args, backward: bool = False, **kwargs) -> int:
    """Total FLOPs `FlopCounterMode` counts for ``fn(*args, **kwargs)``, plus its backward if asked.

    The backward is run on the sum of the (first) output.
    """
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
        if backward:
            out = out[0] if isinstance(out, (tuple, list)) else out
            out.float().sum().backward()
    return counter.get_total_flops()


def flops_by_op(fn, *args, **kwargs) -> dict[str, int]:
    """FLOPs per op name (e.g. ``"selective_scan"``, ``"mm"``) that `FlopCounterMode` counts for a forward."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    totals = counter.get_flop_counts()["Global"]
    return {str(op).split(".")[-1]: int(count) for op, count in totals.items()}


__all__ = [
    "count_flops",
    "flops_by_op",
    "gated_linear_attention_backward_flops",
    "gated_linear_attention_flops",
    "selective_scan_backward_flops",
    "selective_scan_flops",
]
