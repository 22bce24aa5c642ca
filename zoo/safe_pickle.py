"""Reading checkpoints that pickle whole modules (AMD-Hummingbird's lvdm LatentDiffusion) without running their code.

A pickle is a program: each GLOBAL it names is imported and may be called with arguments, which is how a hostile
file reaches `os.system`. This unpickler imports nothing but the few torch functions that rebuild tensors and a
handful of harmless builtins (`ALLOWED`). Classes under the module prefixes of `STUB_PREFIXES` (`lvdm`,
`open_clip`, `torch.nn`) become inert `Stub` classes: creating one runs no code, its pickled state is only stored.
`getattr` is answered only for a public name of a `Stub` (the published modules pickle bound methods such as
`native_forward` that way) and returns another inert value. Any other global refuses the whole file with an
`UnsafeCheckpointError` before anything is called.

`load_module_state_dict(path)` then walks the stubs' `_parameters`, `_buffers` and `_modules` into a flat state
dict, as `nn.Module.state_dict` names it. Storages saved on a GPU (`cuda:0`) are read onto the CPU.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from pathlib import Path
from typing import Any

import torch

from zoo.errors import CheckpointError

STUB_PREFIXES = ("lvdm", "open_clip", "torch.nn")
ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    **{("torch", name): getattr(torch, name) for name in (
        "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
    )},
}  # fmt: skip


class UnsafeCheckpointError(CheckpointError):
    """A pickle that names something the restricted unpickler does not allow; nothing in it was run."""


class Stub:
    """An inert stand-in for a pickled object of an allowed class: no code of the real class runs.

    `qualname` is the real class's dotted name; `state` is what the pickle stored (for an nn.Module, its
    `__dict__`, holding `_parameters`, `_buffers` and `_modules`).
    """

    qualname = "?"
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub of {self.qualname}>"


class BoundMethodStub:
    """What `getattr(stub, name)` gives: records the name, cannot be called."""

    def __init__(self, owner: Stub, name: str):
        self.owner, self.name = owner, name


def _safe_getattr(obj: Any, name: Any) -> BoundMethodStub:
    """`getattr` for pickles: a public attribute of a stub only, answered by a record (never a real attribute)."""
    if not isinstance(obj, Stub) or not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise UnsafeCheckpointError(
            f"the pickle calls getattr({type(obj).__name__}, {name!r}); zoo only allows getattr of a public name on "
            f"a stubbed lvdm/open_clip/torch.nn object."
        )
    return BoundMethodStub(obj, name)


class RestrictedUnpickler(pickle.Unpickler):
    """Imports only `ALLOWED`; stubs classes under `STUB_PREFIXES`; refuses every other global."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stubs: dict[str, type[Stub]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell Python 3 names the Python 2 way (__builtin__.set); the allowlist still applies.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if (module, name) == ("builtins", "getattr"):
            return _safe_getattr
        if any(module == prefix or module.startswith(prefix + ".") for prefix in STUB_PREFIXES) \
                and name.isidentifier():
            qualname = f"{module}.{name}"
            if qualname not in self._stubs:
                self._stubs[qualname] = type(name, (Stub,), {"qualname": qualname})
            return self._stubs[qualname]
        raise UnsafeCheckpointError(
            f"the pickle refers to {module}.{name}, which zoo's restricted unpickler does not allow "
            f"(only lvdm/open_clip/torch.nn classes, stubbed, and torch's tensor rebuilding)."
        )


def _pickle_module() -> types.SimpleNamespace:
    """What torch.load takes as `pickle_module`: our Unpickler, and a `load` that uses it (legacy files' headers)."""
    return types.SimpleNamespace(
        __name__="zoo_safe_pickle", Unpickler=RestrictedUnpickler,
        load=lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load(),
    )  # fmt: skip


def load(path: str | Path) -> Any:
    """The object pickled in a torch checkpoint, with allowed classes stubbed; tensors on the CPU.

    Raises UnsafeCheckpointError for a file that names anything outside the allowed set (nothing has run),
    CheckpointError for one that cannot be read.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module())
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f"{path} was refused: {error} Nothing in it was run.") from None
    except Exception as error:  # noqa: BLE001 - anything else means the file cannot be read safely
        raise CheckpointError(f"{path} could not be read ({type(error).__name__}: {error}).") from error


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a stubbed nn.Module tree, keyed as its `state_dict()` would key them."""
    if not isinstance(obj, Stub) or not isinstance(obj.state, dict) or "_modules" not in obj.state:
        raise CheckpointError(f"'{prefix.rstrip('.') or 'the pickled object'}' is not a pickled nn.Module.")
    state = obj.state
    found = {}
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if isinstance(value, torch.Tensor) and not (kind == "_buffers" and name in non_persistent):
                found[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            found.update(module_state_dict(child, f"{prefix}{name}."))
    return found


def load_module_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a whole nn.Module pickled in `path`, read without running any of the file's code."""
    obj = load(path)
    if not isinstance(obj, Stub):
        raise CheckpointError(f"{path} does not pickle a whole lvdm/open_clip/torch.nn module (it holds a "
                              f"{type(obj).__name__}); read state-dict checkpoints with zoo.hub.load_state_dict.")
    state_dict = module_state_dict(obj)
    if not state_dict:
        raise CheckpointError(f"{path} pickles a {obj.qualname} that holds no tensors.")
    return state_dict
