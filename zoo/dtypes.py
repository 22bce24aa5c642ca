"""Floating-point dtypes by name, for the `dtype` arguments of the API and the `--dtype` options of the CLIs."""

from __future__ import annotations

import torch

from .errors import ConfigError

FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def parse_dtype(
    value: torch.dtype | str, what: str = "dtype", allowed: dict[str, torch.dtype] = FLOAT_DTYPES
) -> torch.dtype:
    """`value` as one of the `allowed` dtypes: a torch.dtype, its name or an alias (fp32, bf16, fp16, half, float).

    Anything else is a ConfigError naming `what` and the dtypes it takes.
    """
    dtype = value if isinstance(value, torch.dtype) else allowed.get(ALIASES.get(value, value))
    if dtype not in allowed.values():
        raise ConfigError(f"{what} must be one of {', '.join(allowed)} (or fp32, bf16, fp16), got {value!r}")
    return dtype
