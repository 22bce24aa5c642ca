"""`zoo.create` (a registered name) and `zoo.from_pretrained` (any checkpoint folder or Hub repo)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import hub
from .dtypes import FLOAT_DTYPES, parse_dtype
from .errors import CheckpointError, ConfigError
from .modeling import ZooModel
from .registry import Converter, Family, PretrainedSource, families, get_family, split_name

_CONFIG_FILES = ("config.json", "model_index.json")
_PICKLE_PATTERNS = ("*.bin", "*.pth", "*.pt", "*.ckpt")


def create(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    **overrides: Any,
) -> ZooModel:
    """Build a registered model; `overrides` change config fields (e.g. ``num_layers=2``).

    `pretrained=True` downloads the source selected by the name's tag (``name.tag``; the first source
    for a bare name), converts its keys and loads it strictly. `checkpoint_path` loads a local file or
    folder instead, its format recognised from its keys. `dtype` defaults to float32 for random weights
    and, for loaded ones, to the checkpoint's dominant floating dtype (every floating tensor is cast to
    one dtype). Loaded models are returned in eval mode.
    """
    entry, tag = split_name(name)
    family = get_family(entry.family)
    source_overrides = entry.source(tag).config_overrides if tag is not None or pretrained else {}
    config = entry.config.replace(**{**source_overrides, **overrides})
    target_dtype = _resolve_dtype(dtype)
    if pretrained and checkpoint_path is not None:
        raise ConfigError("Pass either pretrained=True (download the published weights) or checkpoint_path, not both.")
    if not pretrained and checkpoint_path is None:
        model = family.model_cls(config)
    elif pretrained and entry.source(tag).parts:
        model = family.model_cls.from_parts(entry.source(tag).parts, dtype=target_dtype, **overrides)
    else:
        with torch.device("meta"):
            model = family.model_cls(config)
        if checkpoint_path is not None:
            state_dict = hub.load_state_dict(checkpoint_path)
            converter = family.detect_converter(state_dict.keys())
        else:
            source = entry.source(tag)
            converter = family.converter(source.format)
            state_dict = (converter.read_weights or hub.load_state_dict)(fetch_source(source), source.files)
        hub.load_weights(model, converter.convert_state_dict(state_dict, config), converter, dtype=target_dtype)
        model.eval()
    model.zoo_name, model.zoo_tag = entry.name, tag
    return model.to(device=device, dtype=target_dtype)


def from_pretrained(
    repo_id_or_dir: str | Path | Mapping[str, str | Path],
    family: str | None = None,
    revision: str | None = None,
    dtype: torch.dtype | str | None = "auto",
    device: torch.device | str | None = None,
) -> ZooModel:
    """Load a checkpoint folder or Hub repo in any format a family reads, building the model from its config.

    The family and format are detected from the folder's config (zoo's own marker, `model_type`,
    `_class_name`, `architectures`, timm's `architecture`); `family=` forces the family. Any size loads,
    not only registered ones. `dtype="auto"` takes the checkpoint's dominant floating dtype (every floating
    tensor is cast to one dtype). Returned in eval mode.

    A model published in pieces is loaded from a dict of its parts (folders, files or Hub repos), e.g. TinyGPT-V's
    ``{"vision": BLIP2_DIR, "llm": PHI_DIR, "stage": STAGE_PTH}``; the family whose `part_names` they are reads them.
    """
    target_dtype = _resolve_dtype(dtype)
    if isinstance(repo_id_or_dir, Mapping):
        return _from_parts(repo_id_or_dir, family, target_dtype).to(device=device, dtype=target_dtype)
    local = Path(repo_id_or_dir).expanduser()
    if local.is_file():
        raise CheckpointError(
            f"{local} is a file; from_pretrained takes a folder or a Hub repo id. "
            f"For a bare weights file use zoo.create(name, checkpoint_path='{local}')."
        )
    is_local = local.is_dir()
    repo_id = str(repo_id_or_dir)
    if not is_local and (repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~"))):
        raise CheckpointError(f"'{repo_id}' is neither an existing folder nor a Hub repo id ('owner/name').")
    folder = local if is_local else hub.download(repo_id, revision=revision, allow_patterns=_CONFIG_FILES)
    if is_local and (release := _read_release(folder, family)) is not None:
        return _load_release(*release, target_dtype, device)
    published_config, _ = hub.folder_config(folder, _CONFIG_FILES)
    model_family, converter = _detect_format(published_config, family, origin=repo_id)

    weights_folder = folder / converter.subfolder
    if not is_local:
        weights_folder = _download_weights(repo_id, revision, converter.subfolder)
    if converter.subfolder or converter.config_file != "config.json":
        published_config, _ = hub.folder_config(weights_folder, (converter.config_file,))
    config_values = {k: v for k, v in published_config.items() if not k.startswith("zoo_")}
    config = converter.convert_config(config_values)

    with torch.device("meta"):
        model = model_family.model_cls(config)
    state_dict = hub.load_state_dict(weights_folder)
    hub.load_weights(model, converter.convert_state_dict(state_dict, config), converter, dtype=target_dtype)
    model.zoo_name, model.zoo_tag = published_config.get("zoo_name"), published_config.get("zoo_tag")
    if "zoo_pretrained_cfg" in published_config:
        model.pretrained_cfg = {k: tuple(v) if isinstance(v, list) else v
                                for k, v in published_config["zoo_pretrained_cfg"].items()}
    return model.eval().to(device=device, dtype=target_dtype)


def _read_release(folder: Path, family: str | None) -> tuple[Family, Converter, dict, dict] | None:
    """The family, converter, config values and state dict of a release folder with no config file (see
    `Converter.read_folder`), or None."""
    if any((folder / name).is_file() for name in _CONFIG_FILES):
        return None
    candidates = [get_family(family)] if family is not None else families()
    for fam in candidates:
        for converter in fam.converters.values():
            if converter.read_folder is not None and (found := converter.read_folder(folder)) is not None:
                return fam, converter, *found
    return None


def _load_release(
    family: Family, converter: Converter, values: dict, state_dict: dict, dtype: torch.dtype | None, device: Any
) -> ZooModel:
    config = converter.convert_config(values)
    with torch.device("meta"):
        model = family.model_cls(config)
    hub.load_weights(model, converter.convert_state_dict(state_dict, config), converter, dtype=dtype)
    return model.eval().to(device=device, dtype=dtype)


def _from_parts(parts: Mapping[str, str | Path], family: str | None, dtype: torch.dtype | None) -> ZooModel:
    """A model assembled by the family whose model class reads exactly these parts (`part_names`, `from_parts`)."""
    candidates = [get_family(family)] if family is not None else families()
    readers = [f for f in candidates if set(getattr(f.model_cls, "part_names", ())) == set(parts)]
    if len(readers) != 1:
        known = "; ".join(f"{f.name}: {', '.join(f.model_cls.part_names)}" for f in candidates
                          if getattr(f.model_cls, "part_names", ()))
        raise CheckpointError(f"No zoo family is assembled from the parts {', '.join(sorted(parts))}. "
                              f"Families published in parts — {known or 'none'}.")
    return readers[0].model_cls.from_parts(parts, dtype=dtype)


def _detect_format(published_config: dict, family: str | None, origin: str) -> tuple[Family, Converter]:
    """The family and converter a folder's config belongs to (forced to `family` when given)."""
    if "zoo_family" in published_config:
        found = get_family(published_config["zoo_family"])
        if family is not None and family != found.name:
            raise CheckpointError(f"{origin} holds a '{found.name}' model, not '{family}'.")
        return found, found.converter("zoo")
    candidates = [get_family(family)] if family is not None else families()
    matches = [
        (fam, conv) for fam in candidates for conv in fam.converters.values()
        if conv.matches_config is not None and conv.matches_config(published_config)
    ]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join(f"{f.name} ({c.name})" for f, c in matches)
        raise CheckpointError(f"{origin} could be any of: {options}. Pass family= to choose.")
    described = {k: published_config[k] for k in ("model_type", "_class_name", "architectures", "architecture")
                 if k in published_config}
    readable = "; ".join(
        f"{f.name}: {', '.join(c for c in f.converters)}" for f in candidates
    )
    raise CheckpointError(
        f"No zoo family reads {origin} (its config says {described or 'nothing about its architecture'}). "
        f"Formats zoo reads — {readable or 'none registered'}."
    )


def _download_weights(repo_id: str, revision: str | None, subfolder: str = "") -> Path:
    """The local `subfolder` of a repo holding its configs and weights (safetensors first, pickles only when there are
    none)."""
    prefix = f"{subfolder}/" if subfolder else ""
    folder = hub.download(repo_id, revision=revision, allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors"])
    try:
        hub.find_weight_files(folder / subfolder)
    except CheckpointError:
        folder = hub.download(repo_id, revision=revision, allow_patterns=[prefix + p for p in _PICKLE_PATTERNS])
    return folder / subfolder


def fetch_source(source: PretrainedSource) -> Path:
    """The local folder holding a registered published source's files, from the cache or the Hub (ModelScope for its
    sources): its `files`, or else its configs and weights (safetensors first, pickles only when there are none).
    A `url` source is one file."""
    if source.url:
        return hub.download_url(source.url)
    if source.host == "modelscope":
        patterns = list(source.files) or ["*.json", "*.safetensors", "*.txt"]
        folder = hub.download_modelscope(source.hub_id, revision=source.revision, allow_patterns=patterns)
        if not source.files and not any(folder.glob("*.safetensors")):
            folder = hub.download_modelscope(source.hub_id, revision=source.revision,
                                             allow_patterns=["*.json", "*.txt", *_PICKLE_PATTERNS])
        return folder
    if not source.files:
        return _download_weights(source.hub_id, source.revision, source.subfolder)
    prefix = f"{source.subfolder}/" if source.subfolder else ""
    patterns = [prefix + f for f in source.files]
    return hub.download(source.hub_id, revision=source.revision, allow_patterns=patterns) / source.subfolder


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """None and "auto" keep what there is; anything else is a floating dtype, its name or an alias ("bf16")."""
    if dtype is None or dtype == "auto":
        return None
    return parse_dtype(dtype, allowed={**FLOAT_DTYPES, "float64": torch.float64})

