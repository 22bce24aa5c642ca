"""Gated linear attention (GLA) with a per-key decay: recurrent reference, chunked PyTorch, fla's kernels.

Layout is heads-first, ``(batch, heads, length, dim)`` as in ``F.scaled_dot_product_attention``
(fla's own layout is ``(batch, length, heads, dim)``; the fla path transposes)::

    q, k, gk: (batch, heads, length, key_dim)      v: (batch, heads, length, value_dim)
    state S: (batch, heads, key_dim, value_dim), fp32

    S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t       gk is a log-decay, <= 0
    o_t = scale * q_t S_t                            scale defaults to key_dim ** -0.5

Outputs have the dtype of ``q``; states are fp32.
"""

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .flops import gated_linear_attention_backward_flops, gated_linear_attention_flops

BACKENDS = ("auto", "chunked", "recurrent", "fla")
DEFAULT_CHUNK_SIZE = 64
# fla's layers switch from the chunked to the fused recurrent kernel for sequences this short.
_FLA_RECURRENT_MAX_LENGTH = 64


@functools.cache
def _fla_kernels():
    try:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
    except ImportError:
        return None
    return chunk_gla, fused_recurrent_gla


def _check_gla_inputs(q, k, v, gk, state=None, state_name="initial_state") -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v), ("gk", gk), (state_name, state)):
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(f"gated_linear_attention: {name} must be a floating-point tensor, got {tensor.dtype}")
    if q.dim() != 4:
        raise ValueError(f"gated_linear_attention: q must be (batch, heads, length, key_dim), got {tuple(q.shape)}")
    batch, heads, length, _ = q.shape
    if length == 0:
        raise ValueError("gated_linear_attention: the sequence length must be positive")
    for name, tensor in (("k", k), ("gk", gk)):
        if tensor.shape != q.shape:
            raise ValueError(
                f"gated_linear_attention: {name} must be (batch, heads, length, key_dim) = {tuple(q.shape)} "
                f"like q, got {tuple(tensor.shape)}"
            )
    if v.dim() != 4 or tuple(v.shape[:3]) != (batch, heads, length):
        raise ValueError(
            f"gated_linear_attention: v must be (batch, heads, length, value_dim) = "
            f"({batch}, {heads}, {length}, value_dim), got {tuple(v.shape)}"
        )
    state_shape = (batch, heads, q.shape[-1], v.shape[-1])
    if state is not None and tuple(state.shape) != state_shape:
        raise ValueError(
            f"gated_linear_attention: {state_name} must be (batch, heads, key_dim, value_dim) = {state_shape}, "
            f"got {tuple(state.shape)}"
        )


def _default_scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def gated_linear_attention_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The recurrence one step at a time in fp32: the oracle for the other paths.

    Returns ``(o, final_state)``; ``final_state`` is None unless ``output_final_state``.
    """
    _check_gla_inputs(q, k, v, gk, initial_state)
    scale = _default_scale(q, scale)
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1], dtype=torch.float32)
    if initial_state is not None:
        state = initial_state.float()
    queries, keys, values, decays = q.float() * scale, k.float(), v.float(), gk.float().exp()
    outputs = []
    for t in range(q.shape[2]):
        state = state * decays[:, :, t, :, None] + keys[:, :, t, :, None] * values[:, :, t, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", queries[:, :, t], state))
    o = torch.stack(outputs, dim=2).to(q.dtype)
    return o, state if output_final_state else None


def gated_linear_attention_step(
    q: Tensor, k: Tensor, v: Tensor, gk: Tensor, state: Tensor, scale: float | None = None
) -> Tensor:
    """One decoding step in constant memory: updates ``state`` (batch, heads, key_dim, value_dim) in place.

    q, k, gk are (batch, heads, key_dim), v is (batch, heads, value_dim). Returns o (batch, heads, value_dim).
    """
    _check_gla_inputs(q[:, :, None], k[:, :, None], v[:, :, None], gk[:, :, None], state, "state")
    scale = _default_scale(q, scale)
    state.mul_(gk.float().exp()[..., None]).add_(k.float()[..., None] * v.float()[..., None, :])
    return torch.einsum("bhk,bhkv->bhv", q.float() * scale, state.float()).to(q.dtype)


class _Chunks:
    """The sequence cut into chunks of a power-of-two length, the last one padded with gk = 0, q = k = v = 0."""

    def __init__(self, length: int, chunk_size: int):
        self.length = length
        self.steps = min(chunk_size, 1 << (length - 1).bit_length())
        self.padding = -length % self.steps

    def split(self, x: Tensor) -> Tensor:
        """(batch, heads, length, dim) to fp32 (batch, heads, chunk, step, dim)."""
        return rearrange(F.pad(x.float(), (0, 0, 0, self.padding)), "b h (c t) d -> b h c t d", t=self.steps)

    def merge(self, x: Tensor) -> Tensor:
        return rearrange(x, "b h c t d -> b h (c t) d")[:, :, : self.length]


def _halves(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Views of the left and right halves of every block of ``block`` steps: (b, h, c, n, block / 2, d) each."""
    x = rearrange(x, "b h c (n t) d -> b h c n t d", t=block)
    return x[..., : block // 2, :], x[..., block // 2 :, :]


def _chunk_terms(log_decay: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Decays within a chunk from G, the cumulative log-decay since the chunk's start; all exps are of sums <= 0.

    read = scale exp(G_t) scales q_t to read the chunk's start state; write = exp(G_end - G_s) carries k_s to
    the chunk's end state; chunk_decay = exp(G_end) decays a state across the whole chunk.
    """
    end = log_decay[..., -1:, :]
    return log_decay.float().exp() * scale, (end - log_decay).float().exp(), end[..., 0, :].float().exp()


def _split_levels(q: Tensor, k: Tensor, log_decay: Tensor, steps: int):
    """For block = steps, steps / 2, ..., 2: decay-normalised right-half queries and left-half keys.

    For t in a block's right half and s in its left half, exp(G_t - G_s) = exp(G_t - G_r) exp(G_r - G_s) with
    r the left half's last step, and both factors are exps of non-positive segment sums. So the pairs that
    straddle a block's middle give one matmul, q_hat @ k_hat^T; the pairs inside a half belong to the next
    level, down to the diagonal (weight 1). Yields (block, q_hat, k_hat, q_hat / q, k_hat / k).
    """
    block = steps
    while block > 1:
        (_, q_right), (k_left, _), (g_left, g_right) = (_halves(x, block) for x in (q, k, log_decay))
        middle = g_left[..., -1:, :]
        q_scale, k_scale = (g_right - middle).float().exp(), (middle - g_left).float().exp()
        yield block, q_right * q_scale, k_left * k_scale, q_scale, k_scale
        block //= 2


def _carry_states(local: Tensor, chunk_decay: Tensor, state: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Pass a state through the chunks, forwards or backwards: state = chunk_decay * state + local.

    Returns the state entering each chunk, (batch, heads, chunk, key_dim, value_dim), and the one leaving the last.
    """
    entering = [state] * local.shape[2]
    for c in reversed(range(local.shape[2])) if reverse else range(local.shape[2]):
        entering[c] = state
        state = torch.addcmul(local[:, :, c], chunk_decay[:, :, c, :, None], state)
    return torch.stack(entering, dim=2), state


def _chunk_states(chunks: _Chunks, q, k, v, gk, scale, initial_state):
    """fp32 chunked q, k, v and G (gk's cumulative sum within each chunk), the chunk decay terms, every
    chunk's start state and the final state.

    G is accumulated in fp64, so that the differences G_t - G_s keep fp32 precision however large G grows.
    """
    q, k, v, gk = (chunks.split(x) for x in (q, k, v, gk))
    log_decay = gk.double().cumsum(-2)
    read, write, chunk_decay = _chunk_terms(log_decay, scale)
    if initial_state is None:
        initial_state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    starts, final_state = _carry_states((k * write).transpose(-1, -2) @ v, chunk_decay, initial_state.float())
    return (q, k, v, log_decay), (read, write, chunk_decay), starts, final_state


def _gla_chunked(q, k, v, gk, scale, initial_state, chunk_size):
    """Chunk-parallel GLA: states passed between chunks, pairs within a chunk by `_split_levels`."""
    chunks = _Chunks(q.shape[2], chunk_size)
    inputs, (read, _, _), starts, final_state = _chunk_states(chunks, q, k, v, gk, scale, initial_state)
    q32, k32, v32, log_decay = inputs
    o = (q32 * read) @ starts + (q32 * k32).sum(-1, keepdim=True) * scale * v32
    for block, q_hat, k_hat, _, _ in _split_levels(q32, k32, log_decay, chunks.steps):
        _, o_right = _halves(o, block)
        o_right += (q_hat @ k_hat.transpose(-1, -2) * scale) @ _halves(v32, block)[0]
    return chunks.merge(o).to(q.dtype).contiguous(), final_state


def _gla_chunked_backward(grad_o, grad_final_state, q, k, v, gk, scale, initial_state, chunk_size):
    """Analytic gradients of GLA, through the same decomposition as the forward.

    Across chunks, the state adjoint L_{c-1} = exp(G_end) L_c + (scale q exp(G))^T do flows back from the
    final state's gradient. Within a chunk, each matmul o_right += P v_left with P = scale q_hat k_hat^T
    gives dP = do_right v_left^T, dq_hat = scale dP k_hat, dk_hat = scale dP^T q_hat, dv_left = P^T do_right.
    G scales q by exp(G) and k by exp(-G), so dG_t = q_t dq_t - k_t dk_t, plus <dS_final, S_final> at the
    last step, and dgk is the reverse cumulative sum of dG.
    """
    chunks = _Chunks(q.shape[2], chunk_size)
    inputs, terms, starts, final_state = _chunk_states(chunks, q, k, v, gk, scale, initial_state)
    (q32, k32, v32, log_decay), (read, write, chunk_decay) = inputs, terms
    do = chunks.split(grad_o)

    adjoint = torch.zeros_like(final_state) if grad_final_state is None else grad_final_state.float()
    ends, grad_initial = _carry_states((q32 * read).transpose(-1, -2) @ do, chunk_decay, adjoint, reverse=True)

    diagonal = (do * v32).sum(-1, keepdim=True) * scale
    grad_q = read * (do @ starts.transpose(-1, -2)) + diagonal * k32
    grad_k = write * (v32 @ ends.transpose(-1, -2)) + diagonal * q32
    grad_v = (k32 * write) @ ends + (q32 * k32).sum(-1, keepdim=True) * scale * do
    for block, q_hat, k_hat, q_scale, k_scale in _split_levels(q32, k32, log_decay, chunks.steps):
        do_right, v_left = _halves(do, block)[1], _halves(v32, block)[0]
        grad_scores = do_right @ v_left.transpose(-1, -2) * scale
        _halves(grad_q, block)[1].add_((grad_scores @ k_hat) * q_scale)
        _halves(grad_k, block)[0].add_((grad_scores.transpose(-1, -2) @ q_hat) * k_scale)
        _halves(grad_v, block)[0].add_((q_hat @ k_hat.transpose(-1, -2) * scale).transpose(-1, -2) @ do_right)

    grad_q, grad_k, grad_v = (chunks.merge(x) for x in (grad_q, grad_k, grad_v))
    grad_log_decay = chunks.merge(q32) * grad_q - chunks.merge(k32) * grad_k
    grad_gk = grad_log_decay.flip(2).cumsum(2).flip(2)
    if grad_final_state is not None:
        grad_gk = grad_gk + (grad_final_state.float() * final_state).sum(-1)[:, :, None]
    grad_initial = grad_initial.to(initial_state.dtype) if initial_state is not None else q.new_empty(0)
    grads = grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_gk.to(gk.dtype), grad_initial
    return tuple(grad.contiguous() for grad in grads)


def _fla_kernel(q: Tensor):
    """The fla kernel to use for these inputs, or None for the chunked PyTorch form.

    fused_recurrent_gla (exact in fp32) for short sequences; chunk_gla, whose matmuls run in TF32 (about 1e-3
    relative error), only where that is within the inputs' own precision: half-precision inputs, or fp32
    with TF32 matmuls allowed (``torch.backends.cuda.matmul.allow_tf32``).
    """
    kernels = _fla_kernels() if q.is_cuda else None
    if kernels is None:
        return None
    chunk_gla, fused_recurrent_gla = kernels
    if q.shape[2] <= _FLA_RECURRENT_MAX_LENGTH:
        return fused_recurrent_gla
    if q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32:
        return chunk_gla
    return None


def _to_fla_layout(*tensors: Tensor) -> list[Tensor]:
    """(batch, heads, length, dim) to fla's contiguous (batch, length, heads, dim)."""
    return [x.transpose(1, 2).contiguous() for x in tensors]


@torch.library.custom_op("zoo::gated_linear_attention", mutates_args=())
def _gla_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor,
    scale: float,
    initial_state: Tensor | None,
    chunk_size: int,
    use_kernel: bool,
) -> tuple[Tensor, Tensor]:
    kernel = _fla_kernel(q) if use_kernel else None
    if kernel is not None:
        o, final_state = kernel(
            *_to_fla_layout(q, k, v, gk),
            scale=scale,
            initial_state=None if initial_state is None else initial_state.float(),
            output_final_state=True,
        )
        return o.transpose(1, 2).to(q.dtype).contiguous(), final_state.float()
    return _gla_chunked(q, k, v, gk, scale, initial_state, chunk_size)


@_gla_op.register_fake
def _(q, k, v, gk, scale, initial_state, chunk_size, use_kernel):
    state = q.new_empty(*q.shape[:2], q.shape[-1], v.shape[-1], dtype=torch.float32)
    return q.new_empty(*q.shape[:3], v.shape[-1]), state


@torch.library.custom_op("zoo::gated_linear_attention_backward", mutates_args=())
def _gla_backward_op(
    grad_o: Tensor,
    grad_final_state: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor,
    scale: float,
    initial_state: Tensor | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _gla_chunked_backward(grad_o, grad_final_state, q, k, v, gk, scale, initial_state, chunk_size)


@_gla_backward_op.register_fake
def _(grad_o, grad_final_state, q, k, v, gk, scale, initial_state, chunk_size):
    grad_initial = initial_state.new_empty(initial_state.shape) if initial_state is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), gk.new_empty(gk.shape), grad_initial


def _setup_context(ctx, inputs, output):
    q, k, v, gk, scale, initial_state, chunk_size, _ = inputs
    ctx.save_for_backward(q, k, v, gk, initial_state)
    ctx.scale = scale
    ctx.chunk_size = chunk_size


def _backward(ctx, grad_o, grad_final_state):
    q, k, v, gk, initial_state = ctx.saved_tensors
    grad_q, grad_k, grad_v, grad_gk, grad_initial = torch.ops.zoo.gated_linear_attention_backward(
        grad_o, grad_final_state, q, k, v, gk, ctx.scale, initial_state, ctx.chunk_size
    )
    return grad_q, grad_k, grad_v, grad_gk, None, grad_initial if initial_state is not None else None, None, None


_gla_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.zoo.gated_linear_attention)
def _(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, length, key_dim = q_shape
    return gated_linear_attention_flops(batch, heads, length, key_dim, v_shape[-1])


@register_flop_formula(torch.ops.zoo.gated_linear_attention_backward)
def _(grad_o_shape, grad_final_state_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, length, key_dim = q_shape
    return gated_linear_attention_backward_flops(batch, heads, length, key_dim, v_shape[-1])


def gated_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gk: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    *,
    backend: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor | None]:
    """Gated linear attention over a whole sequence (see the module docstring); returns ``(o, final_state)``.

    ``backend``:
      - ``"auto"``: the ``zoo::gated_linear_attention`` op. With fla importable and CUDA tensors, the forward
        runs fla's ``fused_recurrent_gla`` for sequences of at most 64 steps and its ``chunk_gla`` (TF32
        matmuls) for longer half-precision inputs, or fp32 ones with TF32 allowed; otherwise the chunked
        PyTorch form. Gradients always come from the chunked analytic backward. FlopCounterMode counts it.
      - ``"chunked"``: the same op, never fla.
      - ``"recurrent"``: `gated_linear_attention_recurrent`.
      - ``"fla"``: fla's ``chunk_gla`` itself, with its own backward (not counted by FlopCounterMode).
    """
    if backend not in BACKENDS:
        raise ValueError(f"gated_linear_attention: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "recurrent":
        return gated_linear_attention_recurrent(q, k, v, gk, scale, initial_state, output_final_state)
    _check_gla_inputs(q, k, v, gk, initial_state)
    scale = _default_scale(q, scale)
    if backend == "fla":
        kernels = _fla_kernels()
        if kernels is None or not q.is_cuda:
            raise RuntimeError("gated_linear_attention: backend='fla' needs flash-linear-attention and CUDA tensors")
        o, final_state = kernels[0](
            *_to_fla_layout(q, k, v, gk),
            scale=scale,
            initial_state=None if initial_state is None else initial_state.float(),
            output_final_state=output_final_state,
        )
        return o.transpose(1, 2), final_state
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"gated_linear_attention: chunk_size must be a power of two, got {chunk_size}")
    o, final_state = torch.ops.zoo.gated_linear_attention(
        q, k, v, gk, scale, initial_state, chunk_size, backend == "auto"
    )
    return o, final_state if output_final_state else None


__all__ = [
    "gated_linear_attention",
    "gated_linear_attention_recurrent",
    "gated_linear_attention_step",
]
