"""The base class of every zoo model: a config, save_pretrained and push_to_hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from .config import ZooConfig


class ZooModel(nn.Module):
    """An `nn.Module` built from a `ZooConfig`, which saves and pushes itself in zoo's format.

    Subclasses set `config_class`; `register_family` sets `family`. `zoo_name` is the registered name
    the model was created from, when there is one (it picks the model card's facts), and `zoo_tag` the tag of
    its published source (None: the name's first one).
    """

    config_class: ClassVar[type[ZooConfig]]
    family: ClassVar[str]

    def __init__(self, config: ZooConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.zoo_name: str | None = None
        self.zoo_tag: str | None = None

    def fsdp_units(self) -> list[nn.Module]:
        """The submodules that FSDP shards as units of their own, each all-gathered only while it runs: the family's
        repeated blocks. The parameters outside them are sharded with the whole model (all of them, by default)."""
        return []

    def save_pretrained(
        self, save_directory: str | Path, max_shard_size: int | str = "5GB", card_data: dict[str, Any] | None = None
    ) -> Path:
        """Write config.json, safetensors weights (sharded above `max_shard_size`) and a model card README.md.

        `card_data` adds sections to the card: `results` ({metric: value}), `efficiency` ({figure: value}),
        `training` (free text or a dict of settings).
        """
        from .hub import save_pretrained

        return save_pretrained(self, save_directory, max_shard_size=max_shard_size, card_data=card_data)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        commit_message: str = "Upload model with zoo",
        revision: str | None = None,
        token: str | None = None,
        card_data: dict[str, Any] | None = None,
    ) -> str:
        """Upload what `save_pretrained` writes to `repo_id` in one commit; returns the commit URL."""
        from .hub import push_to_hub

        return push_to_hub(
            self, repo_id, private=private, commit_message=commit_message, revision=revision, token=token,
            card_data=card_data,
        )
