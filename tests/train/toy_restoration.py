"""A test-only restoration family (zoo registers no restoration model yet): a small residual conv net, with an
optional pixel-shuffle upsampler for super-resolution. Registered by the `toy_restoration` fixture."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import ZooConfig
from zoo.modeling import ZooModel
from zoo.registry import InputSpec, ModelEntry, TensorSpec, register_family, register_model, unregister_family


@dataclasses.dataclass
class ToyRestorerConfig(ZooConfig):
    channels: int = 16
    num_layers: int = 3
    upscale: int = 1
    skip: bool = True  # add the (bilinear upsampled) input: the net starts as the identity and learns a residual


class ToyRestorer(ZooModel):
    """degraded (B, 3, h, w) in [0, 1] -> restored (B, 3, h * upscale, w * upscale): the bilinear upsampled input
    plus a learned residual (zero at initialisation), or without `skip` the learned output alone."""

    config_class = ToyRestorerConfig

    def __init__(self, config: ToyRestorerConfig):
        super().__init__(config)
        layers = [nn.Conv2d(3, config.channels, 3, padding=1), nn.GELU()]
        for _ in range(config.num_layers - 2):
            layers += [nn.Conv2d(config.channels, config.channels, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(config.channels, 3 * config.upscale**2, 3, padding=1))
        if config.skip:
            nn.init.zeros_(layers[-1].weight)  # starts as the identity (or bilinear upsampling)
            nn.init.zeros_(layers[-1].bias)
        self.body = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        residual = F.pixel_shuffle(self.body(pixel_values), self.config.upscale)
        if not self.config.skip:
            return residual
        if self.config.upscale == 1:
            return pixel_values + residual
        return F.interpolate(pixel_values, scale_factor=self.config.upscale, mode="bilinear") + residual


def register() -> None:
    register_family("toyrestore", ToyRestorer)
    register_model(ModelEntry("toyrestore-tiny", "toyrestore", "restoration", ToyRestorerConfig(),
                              description="A test restoration net.",
                              default_input=InputSpec({"pixel_values": TensorSpec((3, 32, 32))})))
    register_model(ModelEntry("toyrestore-sr-tiny", "toyrestore", "restoration", ToyRestorerConfig(upscale=2, skip=False),
                              description="A test 2x super-resolution net (no skip).",
                              default_input=InputSpec({"pixel_values": TensorSpec((3, 16, 16))})))


def unregister() -> None:
    unregister_family("toyrestore")
