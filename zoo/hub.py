"""Hub I/O: download through huggingface_hub, safe checkpoint reading, strict loading, saving and pushing.

No checkpoint can execute code: safetensors first; pickles only through `torch.load(weights_only=True)`,
or, for checkpoints that pickle whole modules, through a restricted unpickler that builds no foreign
objects (see `_ForeignObject`) and keeps only the tensors.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import itertools
import json
import logging
import math
import os
import pickle
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError, ConfigError, HubError, PushError, shorten
from .registry import Converter, count_parameters, format_count, published_source

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "params")


# ---------------------------------------------------------------------------------------------------
# Talking to the Hub

DEFAULT_HUB_TIMEOUT = 30.0
TIMEOUT_VARIABLE = "HF_HUB_DOWNLOAD_TIMEOUT"  # huggingface_hub's default timeout for its requests
_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)  # those huggingface_hub retries too


def hub_timeout() -> float:
    """Seconds a request to the Hub may wait for an answer where huggingface_hub sets no limit of its own:
    HF_HUB_DOWNLOAD_TIMEOUT when set, else 30."""
    value = os.environ.get(TIMEOUT_VARIABLE)
    if not value:
        return DEFAULT_HUB_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ConfigError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0, got {value!r}.")
    return seconds


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub repo id, else a HubError that says what one looks like."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(
            f"{repo_id!r} is not a valid Hub repo id: one is 'owner/name' or 'name', made of letters, digits, '-', "
            f"'_' and '.' (none at either end, no '--' or '..'), at most 96 characters, "
            f"e.g. 'HuggingFaceTB/SmolVLM-256M-Instruct'."
        ) from error
    return repo_id


class _Unanswered(Exception):
    """A request that huggingface_hub repeats after it timed out: zoo fails it at once instead of waiting again."""


_unanswered: dict[tuple[str, str], float] = {}  # (method, url) of requests sent -> when their wait ends
_unanswered_lock = threading.Lock()


def _on_request(request: Any) -> None:
    """Bound the request's timeouts by `hub_timeout()` (or huggingface_hub's HF_HUB_ETAG_TIMEOUT and
    HF_HUB_DOWNLOAD_TIMEOUT where they are longer), and refuse a request that repeats one that timed out."""
    from huggingface_hub import constants

    seconds = hub_timeout()
    limit = max(seconds, constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT)
    timeout = {kind: seconds if value is None else min(value, limit)
               for kind, value in request.extensions["timeout"].items()}
    request.extensions["timeout"] = timeout
    key, now = (request.method, str(request.url)), time.monotonic()
    with _unanswered_lock:
        if _unanswered.get(key, math.inf) <= now:
            raise _Unanswered(f"{request.method} {request.url} timed out")
        _unanswered[key] = now + timeout["read"]


def _on_response(response: Any) -> None:
    with _unanswered_lock:
        _unanswered.pop((response.request.method, str(response.request.url)), None)


def _begin_hub_call() -> None:
    """Bound the requests huggingface_hub's HTTP client makes from now on (see `_on_request`).

    zoo wraps the client factory in effect (huggingface_hub's, or one set with `set_client_factory`) once.
    """
    from huggingface_hub.utils import _http, set_client_factory

    factory = _http._GLOBAL_CLIENT_FACTORY
    if not getattr(factory, "zoo_bounded", False):

        def bounded() -> Any:
            client = factory()
            hooks = client.event_hooks
            client.event_hooks = {"request": [*hooks["request"], _on_request],
                                  "response": [*hooks["response"], _on_response]}
            return client

        bounded.zoo_bounded = True
        set_client_factory(bounded)
    with _unanswered_lock:
        _unanswered.clear()


def _network_errors() -> tuple[type[Exception], ...]:
    """What huggingface_hub raises when the Hub cannot be reached, does not answer or answers with an error."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    return HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError, _Unanswered, OSError


def _timed_out(error: BaseException | None) -> bool:
    import httpx2

    while error is not None:
        if isinstance(error, (httpx2.TimeoutException, _Unanswered)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _silence() -> str:
    return (f"did not answer within {hub_timeout():g} s "
            f"(set {TIMEOUT_VARIABLE} to the seconds to wait, e.g. {TIMEOUT_VARIABLE}=120)")


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

    Honours HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE and HF_ENDPOINT; shows progress bars. No request waits more than
    `hub_timeout()` seconds for an answer.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    check_repo_id(hub_id)
    where = f"'{hub_id}'" + (f" at revision '{revision}'" if revision else "")
    _begin_hub_call()
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
    except _network_errors() as error:
        raise HubError(_unreachable_message(where, hub_id, error)) from error
    return Path(path)


def download_modelscope(
    model_id: str, *, revision: str | None = None, allow_patterns: Sequence[str] | None = None
) -> Path:
    """A local folder holding `allow_patterns` of a ModelScope model repo, from its cache or modelscope.cn, through
    the `modelscope` package (an optional extra). Honours MODELSCOPE_CACHE."""
    try:
        from modelscope import snapshot_download
    except ImportError as error:
        raise HubError(
            f"'{model_id}' is hosted on ModelScope, which zoo reaches through the `modelscope` package: "
            f"`pip install mmzoo[modelscope]`, or download the repo on a connected machine "
            f"(`modelscope download --model {model_id} --local_dir DIR`) and pass the folder "
            f"(zoo.create(name, checkpoint_path=DIR) or zoo.from_pretrained(DIR))."
        ) from error
    check_repo_id(model_id)
    try:
        path = snapshot_download(model_id, revision=None if revision in (None, "main") else revision,
                                 allow_patterns=list(allow_patterns) if allow_patterns else None)
    except Exception as error:  # modelscope raises requests' and its own errors alike
        raise HubError(
            f"Could not get '{model_id}' from ModelScope ({type(error).__name__}: {error}). Download it on a "
            f"connected machine (`modelscope download --model {model_id} --local_dir DIR`) and pass the folder "
            f"(zoo.create(name, checkpoint_path=DIR) or zoo.from_pretrained(DIR))."
        ) from error
    return Path(path)


def _unreachable_message(where: str, hub_id: str, error: BaseException) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        state = "offline mode is on (HF_HUB_OFFLINE=1)"
    elif _timed_out(error):
        state = f"{constants.ENDPOINT} {_silence()}"
    else:
        state = f"{constants.ENDPOINT} is unreachable"
    return (
        f"Could not get {where}: {state} and the files are not in the cache ({constants.HF_HUB_CACHE}). "
        f"Pre-download them on a connected machine with `zoo download {hub_id}` (or `hf download {hub_id}`) "
        f"and copy the cache, or pass a local folder: `zoo.from_pretrained('/path/to/folder')` or "
        f"`zoo.create(name, checkpoint_path='/path/to/weights')`."
    )


def download_url(url: str) -> Path:
    """A local copy of a weights file published outside the Hub (e.g. in a GitHub repo), from zoo's cache
    (HF_HUB_CACHE/zoo-urls) or downloaded into it. Honours HF_HUB_OFFLINE; waits at most `hub_timeout()` s."""
    import hashlib
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    name = url.rstrip("/").rsplit("/", 1)[-1]
    path = Path(constants.HF_HUB_CACHE) / "zoo-urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if path.is_file():
        return path
    advice = (f"Download it on a connected machine and pass it as "
              f"`zoo.create(name, checkpoint_path='/path/to/{name}')`, or copy it to {path}.")
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"Could not get {url}: offline mode is on (HF_HUB_OFFLINE=1) and it is not cached. {advice}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(name + ".incomplete")
    try:
        with urllib.request.urlopen(url, timeout=hub_timeout()) as response, open(partial, "wb") as file:
            while chunk := response.read(1 << 20):
                file.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise HubError(f"Could not download {url} ({error}). {advice}") from error
    partial.replace(path)
    return path


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


def load_selected_tensors(folder: str | Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder whose keys `keep` accepts. Through a safetensors index only the shards
    holding such keys are opened, and only those tensors are read (the vision tower of a 12B BLIP-2, say)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    index = folder / SAFETENSORS_INDEX_NAME
    by_shard: dict[str, list[str] | None] = {}  # None: the file's keys that `keep` accepts
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a valid shard index (no 'weight_map').") from error
        for key, shard in weight_map.items():
            if keep(key):
                by_shard.setdefault(shard, []).append(key)
    else:
        files = find_weight_files(folder)
        if any(file.suffix != ".safetensors" for file in files):
            return {key: value for key, value in load_state_dict(folder).items() if keep(key)}
        by_shard = {file.name: None for file in files}
    tensors = {}
    for shard, keys in by_shard.items():
        path = folder / shard
        if not path.is_file():
            raise CheckpointError(f"{index.name} lists {shard}, which is not in {folder}; download the repo again.")
        try:
            with safe_open(path, framework="pt") as file:
                keys = [key for key in file.keys() if keep(key)] if keys is None else keys
                tensors.update({key: file.get_tensor(key) for key in keys})
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is corrupt or truncated ({error}); delete it and download it "
                                  "again.") from error
    return tensors


def download_selected(hub_id: str, keep: Callable[[str], bool], revision: str | None = None) -> Path:
    """A repo's snapshot folder with its JSON files and, of a sharded safetensors checkpoint, only the shards that
    hold the tensors whose keys `keep` accepts (all safetensors files when there is no index); read them with
    `load_selected_tensors`."""
    folder = download(hub_id, revision=revision, allow_patterns=["*.json"])
    index = folder / SAFETENSORS_INDEX_NAME
    if not index.is_file():
        return download(hub_id, revision=revision, allow_patterns=["*.safetensors"])
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index} is not a valid shard index (no 'weight_map').") from error
    shards = sorted({shard for key, shard in weight_map.items() if keep(key)})
    return download(hub_id, revision=revision, allow_patterns=shards) if shards else folder


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

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = _unshared(model.state_dict())
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=max_shard_size)
    for stale in [*folder.glob("model*.safetensors"), folder / SAFETENSORS_INDEX_NAME]:
        if stale.name not in split.filename_to_tensors:
            stale.unlink(missing_ok=True)
    for filename, keys in split.filename_to_tensors.items():
        save_safetensors({k: state_dict[k] for k in keys}, folder / filename)
    if split.is_sharded:
        index = {"metadata": {**split.metadata, "zoo_version": __version__}, "weight_map": split.tensor_to_filename}
        (folder / SAFETENSORS_INDEX_NAME).write_text(json.dumps(index, indent=2))
    config = {"zoo_family": model.family, "zoo_name": model.zoo_name, "zoo_tag": model.zoo_tag,
              "zoo_version": __version__, **model.config.to_dict()}
    if hasattr(model, "pretrained_cfg"):
        config["zoo_pretrained_cfg"] = model.pretrained_cfg
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (folder / "README.md").write_text(render_model_card(model, repo_id=repo_id, card_data=card_data))
    return folder


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write `tensors` to a safetensors file readable as the process's other new files are (its umask applies;
    safetensors alone leaves them 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without setting it (`os.umask` sets it, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


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
    retries: int = 3,
    backoff: float = 2.0,
) -> str:
    """Upload a saved model folder to `repo_id` (created if needed) in one commit; returns the commit URL.

    A push the network or the Hub fails (no connection, no answer within `hub_timeout()`, 429, 5xx) is tried again
    `retries` times, after `backoff`, 2 x `backoff`, ... seconds; then a PushError says how to push later. The folder
    is only read.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise HubError(f"{folder} is not a saved model folder (no {CONFIG_NAME}); write it with save_pretrained first.")
    api = HfApi(token=token)
    for attempt in itertools.count(1):
        _begin_hub_call()
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision,
                delete_patterns=["*.safetensors", "*.safetensors.index.json"],  # stale shards of an earlier push
            )
            return commit.commit_url
        except _network_errors() as error:
            reason, retry = _push_failure(error)
            if not retry or attempt > retries:
                later = f"{folder} is untouched; push it later with `zoo push {folder} {repo_id}`."
                raise _push_error(str(folder), repo_id, reason, attempt, later) from error
            wait = backoff * 2 ** (attempt - 1)
            logger.info("Push %d/%d to '%s' failed (%s); retrying in %g s.", attempt, retries + 1, repo_id, reason,
                        wait)
            time.sleep(wait)


def _push_failure(error: BaseException) -> tuple[str, bool]:
    """Why a push failed, in a few words, and whether trying again may help."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1)", False
    if _timed_out(error):
        return f"the Hub at {constants.ENDPOINT} {_silence()}", True
    first_line = next(iter(str(error).splitlines()), "")
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return f"{first_line}; check your token (HF_TOKEN or `hf auth login`)", False
        return first_line, status in _RETRY_STATUSES
    import httpx2

    if isinstance(error, httpx2.TransportError):
        return f"the Hub at {constants.ENDPOINT} is unreachable ({type(error).__name__}: {first_line})", True
    return f"{type(error).__name__}: {first_line}", False  # reading the folder failed


def _push_error(what: str, repo_id: str, reason: str, attempts: int, later: str) -> PushError:
    return PushError(f"Could not push {what} to '{repo_id}' after {attempts} attempt(s): {reason}. {later}",
                     reason=reason, attempts=attempts)


def push_to_hub(model: nn.Module, repo_id: str, card_data: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """Save `model` to a temporary folder and upload it to `repo_id` in one commit (see `push_folder`)."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, card_data=card_data, repo_id=repo_id)
        try:
            return push_folder(tmp, repo_id, **kwargs)
        except PushError as error:
            raise _push_error("the model", repo_id, error.reason, error.attempts,
                              f"Nothing local changed; to push later, save it with `model.save_pretrained(DIR)` "
                              f"and run `zoo push DIR {repo_id}`.") from error.__cause__


# ---------------------------------------------------------------------------------------------------
# Model cards


def render_model_card(model: nn.Module, repo_id: str | None = None, card_data: dict[str, Any] | None = None) -> str:
    """The README.md for a saved model: a metadata header built with huggingface_hub's `ModelCardData`, and a body
    rendered from `hub_cards/<family>.md` (or `hub_cards/default.md`).

    `card_data` adds to the template's context (`results`, `efficiency`, `training`, ...); its `datasets`, the data
    a trained model was trained on, replace those the published weights were trained on.
    """
    import jinja2
    from huggingface_hub import ModelCard

    import hub_cards

    entry, source = published_source(model.zoo_name, model.zoo_tag)
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
    family = hub_cards.metadata(model.family, context["name"])
    if "datasets" in context:
        datasets = _hub_datasets(context["datasets"])
    else:
        datasets = list(source.datasets) if source else []
    tags = ["zoo", model.family, context["task"], *family.get("tags", []),
            f"arxiv:{context['paper']}" if context["paper"] else ""]
    header = _card_data(library_name="zoo", license=context["license"], tags=list(dict.fromkeys(filter(None, tags))),
                        pipeline_tag=family.get("pipeline_tag"), datasets=datasets or None)
    templates = importlib.resources.files("hub_cards")
    template_file = templates / f"{model.family}.md"
    if not template_file.is_file():
        template_file = templates / "default.md"
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     trim_blocks=True, lstrip_blocks=True)
    body = environment.from_string(template_file.read_text()).render(**context)
    return str(ModelCard(f"---\n{header.to_yaml(original_order=_CARD_ORDER)}\n---\n\n{body}"))


_CARD_ORDER = ["library_name", "license", "pipeline_tag", "tags", "datasets"]


def _card_data(**fields: Any) -> Any:
    """`ModelCardData(**fields)`, checked: every field a string or a list of non-empty strings without line breaks."""
    from huggingface_hub import ModelCardData

    for key, value in fields.items():
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(v, str) and v.strip() and "\n" not in v for v in values):
            raise ConfigError(f"Model card metadata '{key}' must be a string or a list of strings, got {value!r}.")
    return ModelCardData(**fields)


def _hub_datasets(names: Iterable[str]) -> list[str]:
    """The Hub ids of training data named as `zoo train --data` names it: an embedded set by its name, `hf:NAME[:SPLIT]`
    as NAME; local files and folders have none."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .data import EMBEDDED

    ids = []
    for name in names:
        name = str(name)
        if name in EMBEDDED:
            ids.append(name)
        elif name.startswith("hf:") and not Path(name[3:]).exists():
            hub_id = name[3:].split(":")[0]
            try:
                validate_repo_id(hub_id)
            except HFValidationError:
                continue
            ids.append(hub_id)
    return ids


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
