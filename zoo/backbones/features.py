"""Helpers shared by the vision backbones' feature-map API (`forward_intermediates`, `feature_info`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..errors import ConfigError


def take_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """Which of `count` feature maps to return, as timm reads `indices`.

    None takes all of them, an int `n` the last `n`, a sequence those positions (negative ones count
    from the end). Returns sorted non-negative positions.
    """
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ConfigError(f"indices={indices} asks for the last {indices} of {count} feature maps.")
        return list(range(count - indices, count))
    wrong = [i for i in indices if not -count <= i < count]
    if wrong:
        raise ConfigError(f"Feature indices {wrong} are out of range for {count} feature maps (0..{count - 1}).")
    return sorted({i % count for i in indices})


def run_stages(
    x: Tensor,
    stages: Sequence[nn.Module],
    indices: int | Sequence[int] | None,
    intermediates_only: bool,
    output: Callable[[Tensor], Tensor] = lambda t: t,
    run: Callable[[nn.Module, Tensor], Tensor] = lambda stage, t: stage(t),
) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
    """The body of `forward_intermediates`: run `x` through `stages` (each by `run(stage, x)`), keeping `output(x)`
    after those in `indices`.

    Returns the kept maps alone with `intermediates_only` (stopping after the last one asked for), otherwise
    `(output of the last stage, maps)`.
    """
    wanted = take_indices(len(stages), indices)
    last = wanted[-1] if intermediates_only else len(stages) - 1
    maps = []
    for index, stage in enumerate(stages[: last + 1]):
        x = run(stage, x)
        if index in wanted:
            maps.append(output(x))
    return maps if intermediates_only else (output(x), maps)
