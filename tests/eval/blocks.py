"""Test-only families holding one recurrent block each (a Mamba mixer, a gated-linear-attention block), so that
`zoo bench` can be checked to count their FLOPs. Registered by the `block_families` fixture."""

from __future__ import annotations

import dataclasses

import torch

from tests.layers.test_flops import TinyGLA
from zoo.config import ZooConfig
from zoo.layers.mamba import Mamba
from zoo.modeling import ZooModel
from zoo.registry import (
    InputSpec,
    ModelEntry,
    TensorSpec,
    register_family,
    register_model,
    unregister_family,
)

LENGTH, WIDTH = 11, 16


@dataclasses.dataclass
class MambaBlockConfig(ZooConfig):
    d_model: int = WIDTH
    d_state: int = 4
    bimamba_type: str = "none"


class MambaBlock(ZooModel):
    config_class = MambaBlockConfig

    def __init__(self, config: MambaBlockConfig):
        super().__init__(config)
        self.mixer = Mamba(config.d_model, d_state=config.d_state, d_conv=4, bimamba_type=config.bimamba_type)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mixer(hidden_states)


@dataclasses.dataclass
class GLABlockConfig(ZooConfig):
    dim: int = WIDTH
    heads: int = 2
    key_dim: int = 8
    value_dim: int = 4


class GLABlock(ZooModel):
    config_class = GLABlockConfig

    def __init__(self, config: GLABlockConfig):
        super().__init__(config)
        self.block = TinyGLA(config.dim, config.heads, config.key_dim, config.value_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.block(hidden_states)


SEQUENCE = InputSpec({"hidden_states": TensorSpec((LENGTH, WIDTH))})


def register() -> None:
    register_family("mambablock", MambaBlock)
    register_model(ModelEntry("mambablock-tiny", "mambablock", "backbone", MambaBlockConfig(), default_input=SEQUENCE))
    register_model(ModelEntry("mambablock-v2-tiny", "mambablock", "backbone", MambaBlockConfig(bimamba_type="v2"),
                              default_input=SEQUENCE))
    register_family("glablock", GLABlock)
    register_model(ModelEntry("glablock-tiny", "glablock", "backbone", GLABlockConfig(), default_input=SEQUENCE))


def unregister() -> None:
    unregister_family("mambablock")
    unregister_family("glablock")
