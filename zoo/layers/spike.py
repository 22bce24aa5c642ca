"""Spike coding (SpikingBrain's W8ASpike): activations as integer spike counts, spike-coded linear layers with
group-quantised INT8 weights, and the expansion of counts into binary, ternary or bitwise spike trains.

An adaptive-threshold integrate-and-fire neuron with soft reset, collapsed to one step, turns an activation x into
the count ``s = round(x / V_th)`` with ``V_th = clamp(mean|x| / k, 1e-5, 1e4)`` per token (the last dimension),
k = 3; the layer then sees ``s * V_th``. A spike train of T steps carries the count for event-driven hardware:
binary {0, 1} (T = count), ternary {-1, 0, 1} (T = |count|) or bitwise (one bit per step, most significant
first, as sign and magnitude or two's complement).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import InputError

SPIKE_THRESHOLD_DIVISOR = 3.0
WEIGHT_GROUP_SIZE = 128
CODINGS = ("binary", "ternary", "bitwise", "twos_complement")


def spike_counts(x: Tensor, k: float = SPIKE_THRESHOLD_DIVISOR) -> tuple[Tensor, Tensor]:
    """Integer spike counts (fp32, x's shape) and the threshold V_th (fp32, (..., 1)) of x, per last-dim row."""
    threshold = (x.abs().mean(-1, keepdim=True).float() / k).clamp(1e-5, 1e4)
    return (x / threshold).round(), threshold


def spike_fake_quantize(x: Tensor, k: float = SPIKE_THRESHOLD_DIVISOR) -> Tensor:
    """x as the next layer sees it after spike coding: counts * V_th, in x's dtype."""
    counts, threshold = spike_counts(x, k)
    return (counts * threshold).to(x.dtype)


def symmetric_int8_fake_quantize(x: Tensor) -> Tensor:
    """x rounded to 255 symmetric levels per last-dim row (scale = clamp(amax / 127, 1e-5, 1e4)), in x's dtype."""
    scale = (x.abs().amax(-1, keepdim=True).float() / 127).clamp(1e-5, 1e4)
    return ((x / scale).round().clamp(-128, 127) * scale).to(x.dtype)


def fake_quantize_weight(weight: Tensor, scales: Tensor) -> Tensor:
    """round(W / scale) * scale per group of input channels; weight (out, in), scales (out, in / group, 1)."""
    grouped = weight.unflatten(-1, (scales.shape[1], -1))
    return ((grouped / scales).round() * scales).flatten(-2).to(weight.dtype)


class WeightQuantizer(nn.Module):
    """Holds the per-group weight scales of a quantised linear layer: buffer `scales` (out, in / group, 1)."""

    def __init__(self, in_features: int, out_features: int, group_size: int = WEIGHT_GROUP_SIZE):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features ({in_features}) must be a multiple of the quantiser group ({group_size})")
        self.register_buffer("scales", torch.ones(out_features, in_features // group_size, 1))

    def forward(self, weight: Tensor) -> Tensor:
        return fake_quantize_weight(weight, self.scales)


class SpikeLinear(nn.Linear):
    """A linear layer on spike-coded inputs with group-quantised weights (W8ASpike's QuantLinear).

    spike_input=False feeds the input as it is, quantize_weight=False uses the raw weight (W8ASpike's down_proj
    keeps both, though its checkpoint stores the scales). Keys: `weight`, `bias`, `weight_quantizer.scales`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, spike_input: bool = True,
                 quantize_weight: bool = True, group_size: int = WEIGHT_GROUP_SIZE):
        super().__init__(in_features, out_features, bias)
        self.weight_quantizer = WeightQuantizer(in_features, out_features, group_size)
        self.spike_input = spike_input
        self.quantize_weight = quantize_weight

    def forward(self, x: Tensor) -> Tensor:
        if self.spike_input:
            x = spike_fake_quantize(x)
        weight = self.weight_quantizer(self.weight) if self.quantize_weight else self.weight
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, spike_input={self.spike_input}, quantize_weight={self.quantize_weight}"


# ---------------------------------------------------------------------------------------------------
# Spike trains


def _check_counts(counts: Tensor, coding: str) -> Tensor:
    if coding not in CODINGS:
        raise InputError(f"spike coding must be one of {', '.join(CODINGS)}, got {coding!r}")
    if counts.is_floating_point():
        if not torch.isfinite(counts).all() or not torch.equal(counts, counts.round()):
            raise InputError("spike trains encode integer counts: round the activations first (see spike_counts)")
        counts = counts.long()
    if coding == "binary" and bool((counts < 0).any()):
        raise InputError("binary spike trains encode non-negative counts; use coding='ternary' or 'bitwise' for "
                         "signed ones")
    return counts.long()


def spike_steps(counts: Tensor, coding: str) -> int:
    """The number of time steps T a coding needs for `counts`: max count (binary, ternary), bits of the largest
    magnitude (bitwise), one more bit for the sign and at least 2 (two's complement)."""
    counts = _check_counts(counts, coding)
    largest = int(counts.abs().max()) if counts.numel() else 0
    if coding in ("binary", "ternary"):
        return largest
    bits = math.ceil(math.log2(largest + 1))
    return max(2, bits + 1) if coding == "twos_complement" else max(1, bits)


def encode_spikes(counts: Tensor, coding: str = "bitwise", steps: int | None = None) -> Tensor:
    """A spike train (T, *counts.shape) in fp32 that carries integer `counts`.

    binary: 1 at each of the first `count` steps. ternary: sign(count) at each of the first |count| steps.
    bitwise: the bits of |count|, most significant first, carrying the count's sign. twos_complement: the
    T-bit two's complement, most significant (sign) bit first. `steps` defaults to `spike_steps`; too few steps
    for a count is an InputError.
    """
    counts = _check_counts(counts, coding)
    needed = spike_steps(counts, coding)
    steps = needed if steps is None else steps
    if steps < needed:
        raise InputError(f"{coding} spike trains need {needed} steps for counts up to {int(counts.abs().max())}, "
                         f"got steps={steps}")
    t = torch.arange(steps, device=counts.device).view(-1, *([1] * counts.dim()))
    if coding == "binary":
        return (t < counts).float()
    if coding == "ternary":
        return (t < counts.abs()).float() * counts.sign()
    shifts = steps - 1 - t
    if coding == "bitwise":
        return ((counts.abs() >> shifts) & 1).float() * counts.sign()
    return (((counts & ((1 << steps) - 1)) >> shifts) & 1).float()


def decode_spikes(train: Tensor, coding: str = "bitwise") -> Tensor:
    """The integer counts (int64) a spike train (T, ...) from `encode_spikes` carries."""
    if coding not in CODINGS:
        raise InputError(f"spike coding must be one of {', '.join(CODINGS)}, got {coding!r}")
    steps = train.shape[0]
    if coding in ("binary", "ternary"):
        return train.sum(0).round().long()
    weights = (2 ** torch.arange(steps - 1, -1, -1, device=train.device, dtype=torch.float64))
    value = (train.double() * weights.view(-1, *([1] * (train.dim() - 1)))).sum(0)
    if coding == "twos_complement":
        value = value - train[0].double() * 2.0 ** steps
    return value.round().long()


# ---------------------------------------------------------------------------------------------------
# Statistics


@torch.no_grad()
def spike_stats(model: nn.Module, inputs: dict[str, Tensor] | Tensor, small: int = 7) -> dict[str, float]:
    """Spike statistics of the inputs of every spike-coded layer (SpikeLinear with spike_input) while
    `model(**inputs)` (or `model(inputs)`) runs, pooled over layers, tokens and channels:

    zero_share: share of channel values with no spike (count 0); spikes_per_channel: mean |count| (spikes per
    channel per token in ternary coding); small_share: share of |count| <= `small` (7: three bits);
    bitwise_sparsity: share of zero steps in the sign-and-magnitude bitwise trains, each layer input coded with
    the bits of its largest count (as `encode_spikes` does); max_count; layers: the number of layer calls counted;
    values: the channel values counted.
    """
    totals = {"zero": 0, "abs": 0.0, "small": 0, "bits_set": 0.0, "bit_slots": 0, "values": 0, "max": 0, "layers": 0}

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        counts = spike_counts(args[0])[0].abs().flatten(0, -2)
        totals["layers"] += 1
        totals["values"] += counts.numel()
        totals["zero"] += int((counts == 0).sum())
        totals["abs"] += float(counts.sum())
        totals["small"] += int((counts <= small).sum())
        totals["max"] = max(totals["max"], int(counts.max()))
        totals["bit_slots"] += max(1, math.ceil(math.log2(int(counts.max()) + 1))) * counts.numel()
        ones = counts.long()
        set_bits = torch.zeros_like(ones)
        while bool(ones.any()):
            set_bits += ones & 1
            ones = ones >> 1
        totals["bits_set"] += float(set_bits.sum())

    layers = [m for m in model.modules() if isinstance(m, SpikeLinear) and m.spike_input]
    if not layers:
        raise InputError(f"{type(model).__name__} has no spike-coded layer (build its W8ASpike variant)")
    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    values = max(totals["values"], 1)
    return {
        "zero_share": totals["zero"] / values,
        "spikes_per_channel": totals["abs"] / values,
        "small_share": totals["small"] / values,
        "bitwise_sparsity": 1 - totals["bits_set"] / max(totals["bit_slots"], 1),
        "max_count": totals["max"],
        "layers": totals["layers"],
        "values": totals["values"],
    }


__all__ = [
    "CODINGS", "SpikeLinear", "WeightQuantizer", "decode_spikes", "encode_spikes", "fake_quantize_weight",
    "spike_counts", "spike_fake_quantize", "spike_stats", "spike_steps", "symmetric_int8_fake_quantize",
]
