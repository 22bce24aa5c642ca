"""A test-only family: a small MLP classifier with a non-persistent buffer and a second published format.

The package registers no test models; the test suite registers this one (see conftest.py).
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from zoo.config import PositiveInt, ZooConfig
from zoo.modeling import ZooModel
from zoo.registry import Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model


@dataclasses.dataclass
class ToyConfig(ZooConfig):
    in_features: PositiveInt = 8
    hidden: PositiveInt = 16
    num_layers: PositiveInt = 2
    num_classes: PositiveInt = 3
    widths: tuple[PositiveInt, ...] = (1, 2)


class ToyModel(ZooModel):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        dims = [config.in_features] + [config.hidden] * config.num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norm = nn.LayerNorm(config.hidden)
        self.head = nn.Linear(config.hidden, config.num_classes)
        self.register_buffer("scale", torch.empty(config.hidden), persistent=False)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        self.scale = torch.linspace(0.5, 1.5, self.config.hidden)

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(self.norm(x) * self.scale)


def _original_to_zoo(state_dict: dict[str, torch.Tensor], config: ToyConfig) -> dict[str, torch.Tensor]:
    """The 'original' release names layers net.{i} and the head fc."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^net\.(\d+)\.", r"layers.\1.", key)
        renamed[key.replace("fc.", "head.").replace("ln.", "norm.")] = value
    return renamed


def _original_config(values: dict) -> ToyConfig:
    return ToyConfig(in_features=values["d_in"], hidden=values["d_hidden"], num_layers=values["depth"],
                     num_classes=values["n_classes"])


ORIGINAL = Converter(
    "original",
    convert_state_dict=_original_to_zoo,
    convert_config=_original_config,
    matches_config=lambda values: values.get("model_type") == "toy_original",
    matches_keys=lambda keys: any(k.startswith("net.") for k in keys),
)

TOY_INPUT = InputSpec({"x": TensorSpec((8,))})


def run(name: str, args) -> None:
    """`zoo run toy-*`: print the logits of a seeded random input."""
    import zoo

    model = zoo.create(name).eval()
    x = torch.randn(1, model.config.in_features, generator=torch.Generator().manual_seed(args.seed))
    print(" ".join(f"{v:.4f}" for v in model(x)[0].tolist()))


def register() -> None:
    register_family("toy", ToyModel, [ORIGINAL], runner=run)
    register_model(ModelEntry("toy-tiny", "toy", "backbone", ToyConfig(), description="A test MLP.",
                              default_input=TOY_INPUT))
    register_model(ModelEntry(
        "toy-base", "toy", "backbone", ToyConfig(hidden=32, num_layers=3), paper="2401.00001",
        description="A bigger test MLP with published weights.", default_input=TOY_INPUT,
        expected_params=8 * 32 + 32 + 2 * (32 * 32 + 32) + 2 * 32 + 32 * 3 + 3,
        sources=(
            PretrainedSource("zoo-test/toy-base", tag="zoo", license="mit", metrics={"top1": 99.0}),
            PretrainedSource("zoo-test/toy-original", tag="orig", format="original", license="mit",
                             files=("weights/toy.pth",)),
        ),
    ))
