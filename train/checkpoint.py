"""Checkpoints written atomically, and the training state that makes a resumed run continue exactly.

A checkpoint is the folder `checkpoint-<step>/`. It is written as `checkpoint-<step>.tmp/` and renamed into place
once every file is on disk (the rename is the commit: a folder without `.tmp` is always complete); then the
`latest` file is replaced (write `latest.tmp`, fsync, rename) to name it. A process killed at any moment leaves
`latest` naming a complete checkpoint, plus at worst a `.tmp` folder that the next run deletes.

Inside a checkpoint:

    config.json, model.safetensors, README.md, ...   the model as `save_pretrained` writes it (what is deployed:
                                                     EMA weights with EMA, LoRA merged with LoRA), plus the
                                                     task's extras (processor, tokenizer)
    training_weights.safetensors                     the trained module's own state dict, when it differs from the
                                                     deployed one (EMA, LoRA)
    training_state.pt                                optimizer, scheduler, grad scaler, EMA count, step, and the
                                                     metrics of the log window not yet written to metrics.jsonl
    rng_state_<rank>.pt                              Python, NumPy and torch (CPU and CUDA) generator states
    trainer_state.json                               step, metrics and config, for people and tools (written last)

Everything loads with `torch.load(weights_only=True)` or safetensors: resuming executes no pickled code. A resume
takes the newest checkpoint whose files read back whole (`load_resume_state`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.errors import CheckpointError

PREFIX = "checkpoint-"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
TRAINING_STATE = "training_state.pt"
TRAINING_WEIGHTS = "training_weights.safetensors"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX}{step}"


def temporary_path(output_dir: str | Path, step: int) -> Path:
    """Where checkpoint `step` is written before `commit` renames it into place."""
    return Path(output_dir) / f"{PREFIX}{step}.tmp"


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and _NAME.match(folder.name) is not None and (folder / STATE_FILE).is_file() \
        and (folder / TRAINING_STATE).is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for folder in output_dir.iterdir():
        match = _NAME.match(folder.name)
        if match and is_complete(folder):
            found.append((int(match.group(1)), folder))
    return sorted(found)


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete `.tmp` folders and files left by a run killed while writing; returns what was removed."""
    output_dir = Path(output_dir)
    removed = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if path.name.endswith(".tmp") and (path.name.startswith(PREFIX) or path.name == f"{LATEST}.tmp"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
    return removed


def begin(output_dir: str | Path, step: int) -> Path:
    """Create the empty temporary folder of checkpoint `step` (main process) and return it."""
    tmp = temporary_path(output_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, keep_last: int | None = None, protected: Iterable[Path] = ()) -> Path:
    """Make the written temporary folder the checkpoint: fsync its files, rename it, point `latest` at it, and
    delete the oldest checkpoints beyond `keep_last` (never the newest, nor `protected` ones)."""
    if not (tmp / STATE_FILE).is_file():
        raise CheckpointError(f"{tmp} is incomplete (no {STATE_FILE}); it was not committed")
    output_dir = tmp.parent
    final = output_dir / tmp.name.removesuffix(".tmp")
    for path in tmp.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync_dir(tmp)
    if final.exists():  # a run resumed from an earlier checkpoint saves this step again
        stale = output_dir / f"{final.name}.old.tmp"
        os.replace(final, stale)
        shutil.rmtree(stale)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    write_latest(output_dir, final.name)
    if keep_last is not None:
        rotate(output_dir, keep_last, protected)
    return final


def write_latest(output_dir: Path, name: str) -> None:
    pointer_tmp = output_dir / f"{LATEST}.tmp"
    with open(pointer_tmp, "w") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(pointer_tmp, output_dir / LATEST)
    _fsync_dir(output_dir)


def rotate(output_dir: Path, keep_last: int, protected: Iterable[Path] = ()) -> list[Path]:
    """Delete complete checkpoints older than the newest `keep_last`."""
    keep = {Path(p).resolve() for p in protected}
    checkpoints = list_checkpoints(output_dir)
    removed = []
    for _, folder in checkpoints[: max(len(checkpoints) - keep_last, 0)]:
        if folder.resolve() not in keep:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


def link_tree(source: Path, target: Path, exclude: Callable[[Path], bool] | None = None) -> None:
    """Fill `target` with the files under `source` as hard links (copies where linking fails), leaving out those
    whose path relative to `source` `exclude` accepts."""
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_dir() or (exclude is not None and exclude(relative)):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------
# state


def rng_state() -> dict[str, Any]:
    """This process's generator states, as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_torch(obj: Any, path: Path) -> None:
    torch.save(obj, path)


def load_torch(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete or from another zoo version.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports a cut or damaged file as any of several error types
        raise CheckpointError(f"{path} is truncated or corrupt ({type(error).__name__}).") from error


def load_resume_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`trainer_state.json` and `training_state.pt` of checkpoint `folder`, after checking that the other files a
    resume reads (generator states, safetensors weights) are whole; CheckpointError names the first broken file."""
    from safetensors import SafetensorError, safe_open

    saved = read_state_file(folder)
    state = load_torch(folder / TRAINING_STATE)
    for rank in range(saved.get("num_processes", 1)):
        load_torch(folder / f"rng_state_{rank}.pt")
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt"):  # reads the header and checks that the file holds every tensor it lists
                pass
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is truncated or corrupt ({error}).") from error
    return saved, state


def write_state_file(folder: Path, values: dict[str, Any]) -> None:
    (folder / STATE_FILE).write_text(json.dumps(values, indent=2, default=str) + "\n")


def read_state_file(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"Cannot read {path}: {error}") from error
