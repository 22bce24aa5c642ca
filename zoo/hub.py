"""Hub I/O: download through huggingface_hub, safe checkpoint reading, strict loading, saving and pushing.

No checkpoint can execute code: safetensors first; pickles only through `torch.load(weights_only=True)`,
or, for checkpoints that pickle whole modules, through a restricted unpickler that builds no foreign
objects (see `_ForeignObject`) and keeps only the tensors.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
import logging
import pickle
import tempfile
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError, HubError, UnknownModelError, shorten
from .registry import Converter, count_parameters, format_count, get_entry

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "params")


# ---------------------------------------------------------------------------------------------------
# Download


def download(
    hub_id: str,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    token: str | None = None,
) -> Path:
    """A local folder holding `allow_patterns` of the repo at `revision`, from the cache or the Hub.

    Honours HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE and HF_ENDPOINT; shows progress bars.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"'{hub_id}'" + (f" at revision '{revision}'" if revision else "")
    try:
        path = snapshot_download(
            hub_id, revision=revision, allow_patterns=list(allow_patterns) if allow_patterns else None,
            token=token, library_name="zoo", library_version=__version__,
        )
    except GatedRepoError as error:
        raise HubError(f"{where} is gated: accept its terms on the Hub and log in (`hf auth login` or HF_TOKEN).") from error
    except RepositoryNotFoundError as error:
        raise HubError(f"Repository {where} was not found, or it is private and no token was given (set HF_TOKEN).") from error
    except RevisionNotFoundError as error:
        raise HubError(f"Repository '{hub_id}' has no revision '{revision}'.") from error
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
        raise HubError(_unreachable_message(where, hub_id)) from error
    return Path(path)


def _unreachable_message(where: str, hub_id: str) -> str:
    from huggingface_hub import constants

    state = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} is unreachable"
    return (
        f"Could not get {where}: {state} and the files are not in the cache ({constants.HF_HUB_CACHE}). "
        f"Pre-download them on a connected machine with `zoo download {hub_id}` (or `hf download {hub_id}`) "
        f"and copy the cache, or pass a local folder: `zoo.from_pretrained('/path/to/folder')` or "
        f"`zoo.create(name, checkpoint_path='/path/to/weights')`."
    )


# ---------------------------------------------------------------------------------------------------
# Reading checkpoints


def find_weight_files(folder: Path, patterns: Sequence[str] = ()) -> list[Path]:
    """The weight files to load from `folder`: those matching `patterns`, else the standard ones.

    Standard means, in order: a safetensors index with its shards, `model.safetensors`, a single
    safetensors file, a pickle index with its shards, a single pickle checkpoint.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(folder)))
    names = {p.relative_to(folder).as_posix(): p for p in files}
    if patterns:
        chosen = [p for n, p in names.items() if any(fnmatch.fnmatch(n, pat) for pat in patterns)]
        indexes = [p for p in chosen if p.name.endswith(".index.json")]
        if indexes:
            return _shards_of(indexes[0])
        chosen = [p for p in chosen if p.suffix in WEIGHT_SUFFIXES]
        if not chosen:
            raise CheckpointError(f"No weight file in {folder} matches {list(patterns)}. It holds: {shorten(names)}.")
        return chosen
    top = {p.name: p for p in files if p.parent == folder}
    for index_name in (SAFETENSORS_INDEX_NAME, "diffusion_pytorch_model.safetensors.index.json"):
        if index_name in top:
            return _shards_of(top[index_name])
    for name in (SAFETENSORS_NAME, "diffusion_pytorch_model.safetensors"):
        if name in top:
            return [top[name]]
    safetensors_files = [p for p in top.values() if p.suffix == ".safetensors"]
    if len(safetensors_files) == 1:
        return safetensors_files
    if "pytorch_model.bin.index.json" in top:
        return _shards_of(top["pytorch_model.bin.index.json"])
    pickles = [p for p in top.values() if p.suffix in _PICKLE_SUFFIXES]
    if len(pickles) == 1 and not safetensors_files:
        return pickles
    candidates = safetensors_files or pickles
    if candidates:
        raise CheckpointError(
            f"{folder} holds several weight files ({shorten(p.name for p in candidates)}); "
            f"say which to load (a file path, or the source's `files` patterns)."
        )
    raise CheckpointError(f"No weight file (*.safetensors, *.bin, *.pth, *.pt, *.ckpt) in {folder}.")


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _shards_of(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path} is not a valid shard index (no 'weight_map').") from error
    shards = [index_path.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{index_path.name} lists shards that are not in {index_path.parent}: {shorten(missing)}. "
            f"The download is incomplete; download the repo again."
        )
    return shards


def load_state_dict(path: str | Path, patterns: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file or folder (sharded or not), safely, on the CPU.

    Raises CheckpointError for a corrupt, truncated or unsafe file, never returning a partial result.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint path {path} does not exist.")
    files = find_weight_files(path, patterns) if path.is_dir() else [path]
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        part = _load_file(file)
        duplicates = state_dict.keys() & part.keys()
        if duplicates:
            raise CheckpointError(f"Key(s) {shorten(sorted(duplicates))} appear in more than one shard ({file.name}).")
        state_dict.update(part)
    return state_dict


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            # Tensors of a safetensors file are views at unaligned offsets of its mapping; copies are
            # aligned, so kernels take the same code paths (and give the same bits) as for fresh tensors.
            return {key: tensor.clone() for key, tensor in load_file(file).items()}
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{file} is corrupt or truncated ({error}). Delete it and download it again.") from error
    if file.suffix not in _PICKLE_SUFFIXES:
        raise CheckpointError(f"Unsupported checkpoint format '{file.suffix}' ({file}); zoo reads {', '.join(WEIGHT_SUFFIXES)}.")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = _load_restricted(file)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{file} is corrupt or truncated ({error}). Delete it and download it again.") from error
    return unwrap_state_dict(obj, source=str(file))


class _ForeignObject:
    """Stands in for any class or function the restricted unpickler refuses to import.

    Creating, calling or building it only records its arguments and state; no foreign code runs.
    """

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _ForeignObject:
        return _ForeignObject(*args)


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}
_SAFE_TORCH_NAMES = {
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Imports only torch's tensor-rebuilding globals; every other global becomes a `_ForeignObject` class.

    Subclasses made per load set `foreign`, the set that collects the names it stood in for.
    """

    foreign: set[str]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or (module == "torch" and name in _SAFE_TORCH_NAMES):
            return super().find_class(module, name)
        self.foreign.add(f"{module}.{name}")
        return type(name, (_ForeignObject,), {"qualname": f"{module}.{name}"})


def _load_restricted(file: Path) -> Any:
    """Read a checkpoint that pickles whole objects (e.g. an nn.Module) without running any of their code."""
    foreign: set[str] = set()
    unpickler = type("Unpickler", (_RestrictedUnpickler,), {"foreign": foreign})
    # torch.load reads legacy files' headers with `pickle_module.load`: it must be restricted too.
    pickle_module = types.SimpleNamespace(
        __name__="zoo_restricted_pickle", Unpickler=unpickler, load=lambda f, **kw: unpickler(f, **kw).load()
    )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    except Exception as error:  # any failure here means the file cannot be read safely
        raise CheckpointError(f"{file} could not be read safely ({type(error).__name__}: {error}).") from error
    if not _collect_tensors(obj):
        raise CheckpointError(
            f"{file} holds no tensors zoo can extract safely; it pickles {shorten(sorted(foreign), 5)}. "
            f"Convert it to safetensors in a trusted environment."
        )
    logger.warning("%s pickles foreign objects (%s); they were not built, only their tensors were kept.",
                   file, shorten(sorted(foreign), 5))
    return obj


def _collect_tensors(obj: Any, prefix: str = "", seen: set[int] | None = None) -> dict[str, torch.Tensor]:
    """Tensors inside dicts, lists and stand-ins of pickled nn.Modules, keyed like a state dict."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return {}
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return {prefix.rstrip("."): obj.detach()}
    if isinstance(obj, _ForeignObject):
        state = getattr(obj, "state", None)
        if isinstance(state, dict) and ("_parameters" in state or "_modules" in state):
            found = {}
            for key in ("_parameters", "_buffers"):
                for name, value in (state.get(key) or {}).items():
                    if isinstance(value, torch.Tensor):
                        found[prefix + name] = value.detach()
            for name, child in (state.get("_modules") or {}).items():
                found.update(_collect_tensors(child, f"{prefix}{name}.", seen))
            return found
        return _collect_tensors(state, prefix, seen) if isinstance(state, dict) else {}
    if isinstance(obj, dict):
        found = {}
        for key, value in obj.items():
            found.update(_collect_tensors(value, f"{prefix}{key}.", seen))
        return found
    return {}


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat {key: tensor} dict inside a training checkpoint ({'state_dict': ...}, 'module.' prefixes,
    a pickled module's stand-in)."""
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), (dict, _ForeignObject))]
        if not wrapped:
            break
        obj = obj[wrapped[0]]
    state_dict = _collect_tensors(obj)
    if not state_dict:
        raise CheckpointError(f"{source} holds no state dict of tensors.")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


# ---------------------------------------------------------------------------------------------------
# Loading into a model


def load_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    converter: Converter | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load `state_dict` strictly into `model` (possibly built on the meta device), adopting its tensors.

    Missing, unexpected and wrongly shaped keys are an error listing the first ones and naming the
    converter that produced the keys. Buffers that checkpoints do not hold (rotary tables and the like)
    are rebuilt by the modules' `init_non_persistent_buffers()`. The model ends in one floating dtype:
    `dtype`, or else the checkpoint's dominant one (by element count).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {shorten(missing, 8)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {shorten(unexpected, 8)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {shorten(mismatched, 4)}")
        ran = f"converter '{converter.name}'" if converter else "no converter"
        raise CheckpointError(
            f"The checkpoint does not fit {type(model).__name__} ({ran} ran): " + "; ".join(problems) + ". "
            "Check that the model config matches the checkpoint (e.g. the right name or size), "
            "or that the checkpoint comes from a format this family reads."
        )
    dtype = dtype or _dominant_dtype(state_dict)
    model.load_state_dict(_cast_like(state_dict, expected, dtype), strict=True, assign=True)
    for module in model.modules():
        if any(b.is_meta for b in module.buffers(recurse=False)) and hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(model).__name__} left {shorten(left, 5)} on the meta device: "
                           "their module must define init_non_persistent_buffers().")
    if dtype is not None:
        model.to(dtype=dtype)  # the rebuilt buffers
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def _dominant_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The floating dtype holding most of the checkpoint's elements (None if it holds no floating tensor)."""
    counts: dict[torch.dtype, int] = {}
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.__getitem__, default=None)


def _cast_like(
    state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Floating tensors in `dtype`, integer ones in the model's own integer dtype; a tensor of the other kind
    than the model's (e.g. int8 weights of a quantized checkpoint) is an error naming its key."""
    wrong = [
        f"{key} ({str(tensor.dtype).removeprefix('torch.')} for {str(expected[key].dtype).removeprefix('torch.')})"
        for key, tensor in state_dict.items() if tensor.is_floating_point() != expected[key].is_floating_point()
    ]
    if wrong:
        raise CheckpointError(
            f"The checkpoint holds {len(wrong)} tensor(s) of the wrong kind (integer for floating point or the other "
            f"way round): {shorten(wrong, 4)}. Quantized checkpoints are not supported: load a floating-point release "
            f"or dequantize it first."
        )
    return {
        key: tensor.to(dtype if tensor.is_floating_point() and dtype is not None else expected[key].dtype)
        for key, tensor in state_dict.items()
    }


# ---------------------------------------------------------------------------------------------------
# Saving and pushing


def save_pretrained(
    model: nn.Module,
    save_directory: str | Path,
    max_shard_size: int | str = "5GB",
    card_data: dict[str, Any] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write `config.json`, safetensors weights (sharded above `max_shard_size`) and a README model card."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = _unshared(model.state_dict())
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=max_shard_size)
    for stale in [*folder.glob("model*.safetensors"), folder / SAFETENSORS_INDEX_NAME]:
        if stale.name not in split.filename_to_tensors:
            stale.unlink(missing_ok=True)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state_dict[k] for k in keys}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {**split.metadata, "zoo_version": __version__}, "weight_map": split.tensor_to_filename}
        (folder / SAFETENSORS_INDEX_NAME).write_text(json.dumps(index, indent=2))
    config = {"zoo_family": model.family, "zoo_name": model.zoo_name, "zoo_tag": model.zoo_tag,
              "zoo_version": __version__, **model.config.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (folder / "README.md").write_text(render_model_card(model, repo_id=repo_id, card_data=card_data))
    return folder


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no two sharing memory (safetensors refuses shared storage)."""
    seen: set[tuple[int, int]] = set()
    result = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and ident in seen:
            tensor = tensor.clone()
        seen.add(ident)
        result[key] = tensor
    return result


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload model with zoo",
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a saved model folder to `repo_id` (created if needed) in one commit; returns the commit URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise HubError(f"{folder} is not a saved model folder (no {CONFIG_NAME}); write it with save_pretrained first.")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision,
            delete_patterns=["*.safetensors", "*.safetensors.index.json"],  # stale shards of an earlier push
        )
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as error:
        raise HubError(
            f"Could not push {folder} to '{repo_id}' at {constants.ENDPOINT} "
            f"({type(error).__name__}: {str(error).splitlines()[0]}). "
            f"Check the connection and your token (HF_TOKEN or `hf auth login`); the folder is untouched, "
            f"retry with `zoo push {folder} {repo_id}`."
        ) from error
    return commit.commit_url


def push_to_hub(model: nn.Module, repo_id: str, card_data: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """Save `model` to a temporary folder and upload it to `repo_id` in one commit (see `push_folder`)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, card_data=card_data, repo_id=repo_id)
        return push_folder(tmp, repo_id, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Model cards


def render_model_card(model: nn.Module, repo_id: str | None = None, card_data: dict[str, Any] | None = None) -> str:
    """The README.md for a saved model, from `hub_cards/<family>.md` (or `hub_cards/default.md`)."""
    import jinja2

    try:
        entry = get_entry(model.zoo_name) if model.zoo_name else None
    except UnknownModelError:  # saved by a zoo that registered a name this one does not
        entry = None
    source = entry.sources[0] if entry is not None and entry.sources else None
    params = count_parameters(model)
    context = {
        "name": model.zoo_name or model.family,
        "family": model.family,
        "task": entry.task if entry else "",
        "description": entry.description if entry else "",
        "paper": entry.paper if entry else "",
        "license": source.license if source and source.license else "other",
        "published_metrics": dict(source.metrics) if source else {},
        "preprocess": dict(source.preprocess) if source else {},
        "params": params,
        "params_human": format_count(params),
        "repo_id": repo_id,
        "zoo_version": __version__,
        **(card_data or {}),
    }
    templates = importlib.resources.files("hub_cards")
    template_file = templates / f"{model.family}.md"
    if not template_file.is_file():
        template_file = templates / "default.md"
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template_file.read_text()).render(**context)


def folder_config(folder: Path, names: Iterable[str] = (CONFIG_NAME, "model_index.json")) -> tuple[dict, str]:
    """The first config file found in `folder` and its name."""
    for name in names:
        path = folder / name
        if path.is_file():
            try:
                return json.loads(path.read_text()), name
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{path} is not valid JSON ({error}).") from error
    raise CheckpointError(f"{folder} has no {' or '.join(names)}; it is not a model folder zoo can read.")
