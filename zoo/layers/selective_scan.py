"""Mamba's S6 selective scan: a sequential reference, a chunked pure-PyTorch scan and mamba-ssm's kernel.

Shapes and semantics follow mamba-ssm's ``selective_scan_fn``::

    u, delta, z: (batch, dim, length)     A: (dim, state)     D, delta_bias: (dim,)
    B, C: (batch, state, length), or (batch, groups, state, length) with channel d in group d // (dim / groups)

    dt  = softplus(delta + delta_bias)            softplus only if delta_softplus
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t    one state vector h (state,) per channel
    y_t = <h_t, C_t> + D * u_t,    out = y * SiLU(z)

The state is fp32 whatever the input dtype; ``out`` has the dtype of ``u`` and the last state is fp32.
"""

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .flops import selective_scan_backward_flops, selective_scan_flops

BACKENDS = ("auto", "chunked", "ref", "mamba_ssm")
DEFAULT_CHUNK_SIZE = 64


@functools.cache
def _mamba_ssm_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def _check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    if A.is_complex():
        raise TypeError("selective_scan: complex A is not supported; A must be real (dim, state)")
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, tensor in tensors.items():
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a floating-point tensor, got {tensor.dtype}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length == 0:
        raise ValueError("selective_scan: the sequence length must be positive")
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: delta must be (batch, dim, length) = {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim, state) with dim = {dim}, got {tuple(A.shape)}")
    state = A.shape[1]
    for name, tensor in (("B", B), ("C", C)):
        plain = tensor.dim() == 3 and tuple(tensor.shape) == (batch, state, length)
        grouped = (
            tensor.dim() == 4
            and tensor.shape[0] == batch
            and tuple(tensor.shape[2:]) == (state, length)
            and dim % tensor.shape[1] == 0
        )
        if not (plain or grouped):
            raise ValueError(
                f"selective_scan: {name} must be (batch, state, length) = ({batch}, {state}, {length}) or "
                f"(batch, groups, state, length) with groups dividing dim = {dim}, got {tuple(tensor.shape)}"
            )
    for name, tensor, shape in (("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)), ("z", z, (batch, dim, length))):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(tensor.shape)}")


def _time_step(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _grouped(x: Tensor) -> Tensor:
    """B or C as (batch, groups, state, length)."""
    return x.float()[:, None] if x.dim() == 3 else x.float()


def _gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """The scan one time step at a time in fp32: the oracle the other paths are tested against.

    Returns ``out`` (batch, dim, length), and the last state (batch, dim, state) if ``return_last_state``.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dim = u.shape[1]
    dt = _time_step(delta, delta_bias, delta_softplus)
    B, C = _grouped(B), _grouped(C)
    B = repeat(B, "b g n l -> b (g e) n l", e=dim // B.shape[1])
    C = repeat(C, "b g n l -> b (g e) n l", e=dim // C.shape[1])
    decay = torch.exp(torch.einsum("bdl,dn->bdln", dt, A.float()))
    drive = torch.einsum("bdl,bdnl,bdl->bdln", dt, B, u.float())
    h = u.new_zeros(u.shape[0], dim, A.shape[1], dtype=torch.float32)
    ys = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[..., t]))
    out = _gate(torch.stack(ys, dim=-1), u.float(), D, z).to(u.dtype)
    return (out, h) if return_last_state else out


def selective_state_update(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """One decoding step of the scan, like mamba-ssm's ``selective_state_update``.

    ``state`` (batch, dim, state) is updated in place; x, dt, z are (batch, dim); B, C are (batch, state)
    or (batch, groups, state). Returns y (batch, dim) in the dtype of ``x``.
    """
    if state.dim() != 3 or x.dim() != 2 or tuple(state.shape) != (*x.shape, A.shape[-1]):
        raise ValueError(
            f"selective_state_update: expected state (batch, dim, state) and x (batch, dim), "
            f"got state {tuple(state.shape)}, x {tuple(x.shape)}, A {tuple(A.shape)}"
        )
    _check_scan_inputs(
        x[..., None], dt[..., None], A, B[..., None], C[..., None], D, None if z is None else z[..., None], dt_bias
    )
    step = _time_step(dt[..., None], dt_bias, dt_softplus)[..., 0]
    B, C = _per_channel(B, x.shape[1]), _per_channel(C, x.shape[1])
    decay = torch.exp(step[..., None] * A.float())
    state.copy_(decay * state.float() + (step * x.float())[..., None] * B)
    y = torch.einsum("bdn,bdn->bd", state.float(), C)
    if D is not None:
        y = y + D.float() * x.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def _per_channel(x: Tensor, dim: int) -> Tensor:
    """B or C of one step, (batch, state) or (batch, groups, state), as (batch, dim, state)."""
    x = x.float() if x.dim() == 3 else x.float()[:, None]
    return repeat(x, "b g n -> b (g e) n", e=dim // x.shape[1])


class _Chunks:
    """Scan inputs laid out step-major, ``(step, batch, group, chunk, ...)``, for the chunked scan.

    The sequence is cut into chunks of equal length (the last padded with dt = 0, which carries the state
    through unchanged). A slab ``x[i]`` holds step i of every chunk, so each op of the loop over the steps
    of a chunk works on all chunks at once. A state slab is (batch, group, chunk, state, channel-in-group).

    The layout changes go through a plain 2-D transpose, (rows, length) <-> (length, rows), and a copy of whole
    rows: several times faster on CPU than one copy through the 6-D permutation.
    """

    def __init__(self, length: int, groups: int, chunk_size: int):
        self.length = length
        self.groups = groups
        self.chunks = math.ceil(length / chunk_size)
        self.steps = math.ceil(length / self.chunks)
        self.padding = self.chunks * self.steps - length

    def _split(self, x: Tensor, rows: str, slab: str) -> Tensor:
        """(*rows, length) to (step, *slab); ``rows`` names the leading dims of x as einops axes."""
        if self.padding:
            x = F.pad(x, (0, self.padding))
        by_position = x.reshape(-1, x.shape[-1]).t().contiguous()
        sizes = dict(zip(rows.split(), x.shape), t=self.steps)
        return rearrange(by_position, f"(c t) ({rows}) -> t {slab}", **sizes).contiguous()

    def channels(self, x: Tensor) -> Tensor:
        """(batch, dim, length) to (step, batch, group, chunk, 1, channel)."""
        return self._split(x.unflatten(1, (self.groups, -1)), "b g e", "b g c 1 e")

    def states(self, x: Tensor) -> Tensor:
        """(batch, groups, state, length) to (step, batch, group, chunk, state, 1)."""
        return self._split(x, "b g n", "b g c n 1")

    def _merge(self, slabs: Tensor | list[Tensor], slab: str, rows: str) -> Tensor:
        slabs = torch.stack(slabs) if isinstance(slabs, list) else slabs
        by_position = rearrange(slabs, f"t {slab} -> (c t) ({rows})").contiguous()
        return by_position.t().contiguous()[:, : self.length]

    def merge_channels(self, slabs: Tensor | list[Tensor]) -> Tensor:
        """Step slabs (step, batch, group, chunk, 1, channel), stacked or a list, to (batch, dim, length)."""
        batch = slabs[0].shape[0]
        return self._merge(slabs, "b g c 1 e", "b g e").view(batch, -1, self.length)

    def merge_states(self, slabs: list[Tensor]) -> Tensor:
        """A list of step slabs (batch, group, chunk, state, 1) to (batch, groups, state, length)."""
        batch, groups, _, state, _ = slabs[0].shape
        return self._merge(slabs, "b g c n 1", "b g n").view(batch, groups, state, self.length)


def _chunked_states(chunks: _Chunks, dt, dtu, A2, B, C, keep_states: bool = False):
    """Run the recurrence chunk-parallel; returns y (without D and z) as a step-major tensor
    (step, batch, group, chunk, 1, channel), the last state slab, and with ``keep_states`` the state slab
    before every step.

    Pass 1 runs every chunk from a zero state to get its local end state; the end states are carried across
    chunks with the chunk decays exp(A * sum(dt)); pass 2 reruns every chunk from its true start state and
    reads y out. ``A2`` is A * log2(e), so exp(dt * A) = exp2(dt * A2) (several times faster than exp on
    CPU). Every exp is of a non-positive number. The state is updated in place and the decays reuse one
    buffer: a fresh slab per step costs more in allocation than the arithmetic on it.
    """
    _, batch, groups, n_chunks, state, _ = B.shape
    h = dt.new_zeros(batch, groups, n_chunks, state, dt.shape[-1])
    decay = torch.empty_like(h)
    # Every step slab up front: indexing in the loop costs more than the small ops it feeds.
    slabs = list(zip(dt.unbind(0), dtu.unbind(0), B.unbind(0)))
    if n_chunks > 1:
        for dt_i, dtu_i, B_i in slabs:
            h.mul_(torch.mul(dt_i, A2, out=decay).exp2_()).addcmul_(dtu_i, B_i)
        chunk_decay = torch.mul(dt.sum(0), A2).exp2_()
        starts = [torch.zeros_like(h[:, :, 0])]
        for c in range(n_chunks - 1):
            starts.append(torch.addcmul(h[:, :, c], chunk_decay[:, :, c], starts[-1]))
        torch.stack(starts, dim=2, out=h)
    ys = dt.new_empty(chunks.steps, batch, groups, n_chunks, 1, dt.shape[-1])
    # The readout <C_t, h_t> of all chunks as one batched (1, state) @ (state, channel) product.
    h_mats = h.view(-1, state, h.shape[-1])
    C_rows = C.reshape(chunks.steps, -1, 1, state).unbind(0)
    y_rows = ys.view(chunks.steps, -1, 1, h.shape[-1]).unbind(0)
    states = []
    for (dt_i, dtu_i, B_i), C_i, y_i in zip(slabs, C_rows, y_rows):
        if keep_states:
            states.append(h.clone())
        h.mul_(torch.mul(dt_i, A2, out=decay).exp2_()).addcmul_(dtu_i, B_i)
        torch.bmm(C_i, h_mats, out=y_i)
    return ys, h, states


def _prepare_chunks(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size):
    """fp32 step-major inputs shared by the chunked forward and backward."""
    groups = math.lcm(B.shape[-3] if B.dim() == 4 else 1, C.shape[-3] if C.dim() == 4 else 1)
    B, C = _grouped(B), _grouped(C)
    B = B.repeat_interleave(groups // B.shape[1], dim=1)
    C = C.repeat_interleave(groups // C.shape[1], dim=1)
    chunks = _Chunks(u.shape[-1], groups, chunk_size)
    dt = _time_step(delta, delta_bias, delta_softplus)
    u = u.float()
    A2 = rearrange(A.float() * math.log2(math.e), "(g e) n -> g 1 n e", g=groups).contiguous()
    steps = chunks.channels(dt), chunks.channels(dt * u), A2, chunks.states(B), chunks.states(C)
    return chunks, dt, u, steps


def _selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    chunks, _, u32, steps = _prepare_chunks(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size)
    ys, h, _ = _chunked_states(chunks, *steps)
    out = chunks.merge_channels(ys).contiguous()
    if D is not None:
        out.addcmul_(u32, D.float()[:, None])
    if z is not None:
        out.mul_(F.silu(z.float()))
    return out.to(u.dtype), rearrange(h[:, :, -1], "b g n e -> b (g e) n").contiguous()


def _sum_to_groups_of(grad: Tensor, like: Tensor) -> Tensor:
    """A (batch, groups, state, length) gradient of B or C summed to the groups of ``like``, in its dtype."""
    if like.dim() == 3:
        return grad.sum(1).to(like.dtype)
    return grad.unflatten(1, (like.shape[1], -1)).sum(2).to(like.dtype)


def _selective_scan_chunked_backward(
    grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size
):
    """Analytic gradients of the scan, from the stored forward states and a chunked reverse scan.

    With the adjoint lam_t = dL/dh_t = C_t gy_t + exp(dt_{t+1} A) lam_{t+1}, run backwards like the
    forward (local pass, carry across chunks, full pass): dC_t = <h_t, gy_t>, dB_t = <lam_t, dt_t u_t>,
    d(dt_t u_t) = <B_t, lam_t>, and M_t = lam_t h_{t-1} exp(dt_t A) gives d(dt_t) += <M_t, A>, dA += M_t dt_t.
    """
    chunks, dt, u32, steps = _prepare_chunks(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size)
    dt_s, dtu_s, A2, B_s, C_s = steps
    ys, h_last, states = _chunked_states(chunks, *steps, keep_states=True)
    states.append(h_last)
    y = chunks.merge_channels(ys)

    grad_out = grad_out.float()
    if z is not None:
        z32 = z.float()
        gate = torch.sigmoid(z32)
        pre_gate = _gate(y, u32, D, None)
        grad_z = grad_out * pre_gate * gate * (1 + z32 * (1 - gate))
        grad_y = grad_out * z32 * gate
    else:
        grad_y = grad_out
    gy = chunks.channels(grad_y)
    A_steps = rearrange(A.float(), "(g e) n -> g 1 n e", g=chunks.groups)

    batch, groups, n_chunks, state, channels = h_last.shape
    carry = h_last.new_zeros(batch, groups, state, channels)
    if grad_last_state is not None:
        carry = rearrange(grad_last_state.float(), "b (g e) n -> b g n e", g=groups)
    if n_chunks > 1:
        lam = torch.zeros_like(h_last)
        for i in reversed(range(chunks.steps)):
            lam = lam.addcmul_(C_s[i], gy[i]).mul_(torch.mul(dt_s[i], A2).exp2_())
        chunk_decay = torch.mul(dt_s.sum(0), A2).exp2_()
        carries = [carry]
        for c in reversed(range(n_chunks - 1)):
            carries.append(torch.addcmul(lam[:, :, c + 1], chunk_decay[:, :, c + 1], carries[-1]))
        lam = torch.stack(carries[::-1], dim=2)
    else:
        lam = carry[:, :, None]

    grad_dt, grad_dtu, grad_B, grad_C = [], [], [], []
    grad_A = torch.zeros_like(h_last)
    for i in reversed(range(chunks.steps)):
        lam = torch.addcmul(lam, C_s[i], gy[i])
        decay = torch.mul(dt_s[i], A2).exp2_()
        grad_C.append((states[i + 1] * gy[i]).sum(-1, keepdim=True))
        grad_B.append((lam * dtu_s[i]).sum(-1, keepdim=True))
        grad_dtu.append((lam * B_s[i]).sum(-2, keepdim=True))
        decay_grad = lam * states[i] * decay
        grad_dt.append((decay_grad * A_steps).sum(-2, keepdim=True))
        grad_A.addcmul_(decay_grad, dt_s[i])
        lam = decay.mul_(lam)

    grad_dtu = chunks.merge_channels(grad_dtu[::-1])
    grad_dt = chunks.merge_channels(grad_dt[::-1]) + grad_dtu * u32
    grad_u = grad_dtu * dt
    if D is not None:
        grad_u = grad_u + grad_y * D.float()[:, None]
        grad_D = (grad_y * u32).sum((0, 2))
    if delta_softplus:
        raw = delta.float() if delta_bias is None else delta.float() + delta_bias.float()[:, None]
        grad_dt = grad_dt * torch.sigmoid(raw)
    grad_A = rearrange(grad_A.sum((0, 2)), "g n e -> (g e) n")
    grads = (
        grad_u.to(u.dtype),
        grad_dt.to(delta.dtype),
        grad_A.to(A.dtype),
        _sum_to_groups_of(chunks.merge_states(grad_B[::-1]), B),
        _sum_to_groups_of(chunks.merge_states(grad_C[::-1]), C),
        grad_D.to(D.dtype) if D is not None else u.new_empty(0),
        grad_z.to(z.dtype) if z is not None else u.new_empty(0),
        grad_dt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0),
    )
    return tuple(grad.contiguous() for grad in grads)


@torch.library.custom_op("zoo::selective_scan", mutates_args=())
def _selective_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
    use_kernel: bool,
) -> tuple[Tensor, Tensor]:
    kernel = _mamba_ssm_scan() if use_kernel and u.is_cuda else None
    if kernel is not None:
        out, last_state = kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)
        return out, last_state.float()
    return _selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, use_kernel):
    return u.new_empty(u.shape), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)


@torch.library.custom_op("zoo::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(
    grad_out: Tensor,
    grad_last_state: Tensor | None,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _selective_scan_chunked_backward(
        grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size
    )


@_selective_scan_backward_op.register_fake
def _(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    def like(t):
        return t.new_empty(t.shape) if t is not None else u.new_empty(0)

    return like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.delta_softplus = delta_softplus
    ctx.chunk_size = chunk_size


def _backward(ctx, grad_out, grad_last_state):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    grads = torch.ops.zoo.selective_scan_backward(
        grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.chunk_size
    )
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = grads
    optional = [None if t is None else grad for t, grad in ((D, dD), (z, dz), (delta_bias, ddelta_bias))]
    return du, ddelta, dA, dB, dC, *optional, None, None, None


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _scan_flop_kwargs(u_shape, A_shape, D_shape, z_shape, delta_bias_shape, delta_softplus):
    batch, dim, length = u_shape
    return dict(
        batch=batch,
        dim=dim,
        length=length,
        state=A_shape[1],
        has_D=D_shape is not None,
        has_z=z_shape is not None,
        has_delta_bias=delta_bias_shape is not None,
        delta_softplus=bool(delta_softplus),
    )


@register_flop_formula(torch.ops.zoo.selective_scan)
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *args, out_shape=None, **kwargs) -> int:
    return selective_scan_flops(**_scan_flop_kwargs(u, A, D, z, delta_bias, delta_softplus))


@register_flop_formula(torch.ops.zoo.selective_scan_backward)
def _(grad_out, grad_last, u, delta, A, B, C, D, z, delta_bias, delta_softplus, *args, out_shape=None, **kwargs) -> int:
    return selective_scan_backward_flops(**_scan_flop_kwargs(u, A, D, z, delta_bias, delta_softplus))


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """The S6 selective scan with mamba-ssm's ``selective_scan_fn`` signature (see the module docstring).

    ``backend``:
      - ``"auto"``: the ``zoo::selective_scan`` op; mamba-ssm's CUDA kernel for the forward when it is
        importable and the tensors are on CUDA, otherwise the chunked scan. Gradients always come from
        the chunked analytic backward. FlopCounterMode counts it.
      - ``"chunked"``: the same op, never the kernel.
      - ``"ref"``: `selective_scan_ref`.
      - ``"mamba_ssm"``: mamba-ssm's ``selective_scan_fn`` itself, with its fused CUDA backward (not
        counted by FlopCounterMode).
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if backend == "mamba_ssm":
        kernel = _mamba_ssm_scan()
        if kernel is None or not u.is_cuda:
            raise RuntimeError("selective_scan: backend='mamba_ssm' needs mamba-ssm installed and CUDA tensors")
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be positive, got {chunk_size}")
    if u.shape[0] == 0:  # an empty batch: nothing to scan (the chunked layout cannot reshape zero rows)
        out, last_state = u * 0, u.new_zeros(0, u.shape[1], A.shape[1], dtype=torch.float32)
        return (out, last_state) if return_last_state else out
    out, last_state = torch.ops.zoo.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, backend == "auto"
    )
    return (out, last_state) if return_last_state else out


__all__ = ["selective_scan", "selective_scan_ref", "selective_state_update"]
