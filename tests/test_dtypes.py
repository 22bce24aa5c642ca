"""`zoo.dtypes.parse_dtype`, behind every `dtype` argument and `--dtype` option."""

import pytest
import torch

from zoo.dtypes import FLOAT_DTYPES, parse_dtype
from zoo.errors import ConfigError


@pytest.mark.parametrize(
    "value, expected",
    [("float32", torch.float32), ("fp32", torch.float32), ("float", torch.float32), ("bf16", torch.bfloat16),
     ("bfloat16", torch.bfloat16), ("fp16", torch.float16), ("half", torch.float16), (torch.float16, torch.float16)],
)  # fmt: skip
def test_names_aliases_and_dtypes(value, expected):
    assert parse_dtype(value) is expected


@pytest.mark.parametrize("value", ["float64", "int8", torch.int8, torch.float64, "bf 16"])
def test_anything_else_names_the_option_and_what_it_takes(value):
    with pytest.raises(ConfigError, match=rf"--dtype must be one of float32, bfloat16, float16 .*got {value!r}"):
        parse_dtype(value, "--dtype")


def test_a_wider_set_of_allowed_dtypes():
    assert parse_dtype("float64", allowed={**FLOAT_DTYPES, "float64": torch.float64}) is torch.float64
