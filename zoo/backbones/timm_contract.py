"""The part of timm's model API that every vision backbone shares.

`TimmBackbone` gives a family `pretrained_cfg`/`default_cfg` (read by `timm.data.resolve_data_config`),
`set_grad_checkpointing`, `group_matcher` (timm's layer-wise LR decay), `no_weight_decay` and
`get_classifier`. A family supplies only its specifics as class attributes: its stem and block regexes, its
first conv and classifier, and how its published evaluation preprocessing differs from timm's defaults; its
forward runs its checkpointable units through `run_block`/`run_blocks`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import ZooConfig
from ..modeling import ZooModel

# timm's defaults (timm.data.constants), which timm's resolve_data_config falls back to.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_PREPROCESS: Mapping[str, Any] = {
    "input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
    "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
}


class TimmBackbone(ZooModel):
    """A `ZooModel` with timm's model API; subclasses set the class attributes below.

    `stem_pattern` matches the stem's parameter names, `block_pattern` (`coarse_block_pattern`) each block's
    (stage's), with the block's (stage's) position in its groups; unmatched parameters are the head's.
    `preprocess` holds what the family's evaluation preprocessing changes from timm's defaults; a published
    source's `preprocess` overrides both.
    """

    stem_pattern: ClassVar[str]
    block_pattern: ClassVar[str]
    coarse_block_pattern: ClassVar[str]
    first_conv: ClassVar[str]
    classifier_name: ClassVar[str]
    preprocess: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: ZooConfig):
        super().__init__(config)
        self.grad_checkpointing = False
        self._pretrained_cfg: dict[str, Any] | None = None

    # -- pretrained_cfg ---------------------------------------------------------------------------

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's pretrained_cfg: the evaluation preprocessing of the published weights the model was created
        for (`name.tag`, or the name's first source), else the family's; plus architecture, tag, Hub id,
        license, num_classes, first conv and classifier."""
        if self._pretrained_cfg is not None:
            return self._pretrained_cfg
        from ..registry import published_source

        cfg = {"architecture": self.zoo_name or self.family, "tag": None, **DEFAULT_PREPROCESS, **self.preprocess}
        entry, source = published_source(self.zoo_name, self.zoo_tag)
        if source is not None:
            cfg.update(tag=source.tag, hf_hub_id=source.hub_id, license=source.license, **source.preprocess)
        elif entry is not None and entry.default_input is not None and "pixel_values" in entry.default_input.tensors:
            cfg["input_size"] = entry.default_input.tensors["pixel_values"].shape
        cfg.update(num_classes=self.num_classes, first_conv=self.first_conv, classifier=self.classifier_name)
        return cfg

    @pretrained_cfg.setter
    def pretrained_cfg(self, cfg: dict[str, Any] | None) -> None:
        self._pretrained_cfg = cfg

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for `pretrained_cfg`."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict[str, Any] | None) -> None:
        self.pretrained_cfg = cfg

    # -- training helpers -------------------------------------------------------------------------

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups in timm's format, in depth order: the stem, then each block (stage with `coarse`);
        unmatched parameters (the head) come last. timm's layer-wise LR decay reads it."""
        blocks = self.coarse_block_pattern if coarse else self.block_pattern
        return {"stem": self.stem_pattern, "blocks": [(blocks, None)]}

    def no_weight_decay(self) -> set[str]:
        """Parameter names that get no weight decay beyond timm's own rule (1-D parameters and biases): none
        here; families with position embeddings or the like add theirs."""
        return set()

    def fsdp_units(self) -> list[nn.Module]:
        """The blocks `block_pattern` names: the modules `run_blocks` calls one by one (a stage is never called as a
        whole, so it cannot be a unit: FSDP gathers a unit's weights when it is called)."""
        pattern = re.compile(self.block_pattern)
        return [module for name, module in self.named_modules() if name and pattern.fullmatch(name)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        """`block(x)`, checkpointed when grad checkpointing is on and gradients are being recorded."""
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return block(x)
        return checkpoint(block, x, use_reentrant=False, context_fn=lambda: _recompute_contexts(block))

    def run_blocks(self, blocks: Iterable[nn.Module], x: Tensor) -> Tensor:
        """`x` through `blocks` in order, each one a checkpointed unit (see `run_block`)."""
        for block in blocks:
            x = self.run_block(block, x)
        return x

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)


def _recompute_contexts(block: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    """Checkpoint's (forward, recompute) contexts: the recomputation leaves batch-norm statistics as the forward
    left them, so that they are updated once per step, as without checkpointing."""
    return contextlib.nullcontext(), _kept_norm_statistics(block)


@contextlib.contextmanager
def _kept_norm_statistics(block: nn.Module) -> Iterator[None]:
    buffers = [
        buffer for module in block.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in module.buffers()
    ]
    kept = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, kept):
                buffer.copy_(value)
