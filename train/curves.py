"""Training logs: metrics as JSON Lines, and the training-curve PNG drawn from them (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                break
    return records


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def plot_curves(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Training loss (log scale) against the step, with the learning rate, and the evaluation metrics in a second
    panel when there are any. Records are the metrics.jsonl lines: {"step", "loss", "lr", ...} for training,
    {"step", "eval": {...}} for evaluations."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    train = [r for r in records if "loss" in r and "eval" not in r]
    evals = [r for r in records if "eval" in r]
    figure = Figure(figsize=(10 if evals else 6, 4), dpi=100)
    axes = figure.subplots(1, 2 if evals else 1, squeeze=False)[0]
    ax = axes[0]
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        ax.plot(steps, losses, color="tab:blue", label="train loss")
        if all(value > 0 for value in losses if math.isfinite(value)):
            ax.set_yscale("log")
        lr_axis = ax.twinx()
        lr_axis.plot(steps, [r.get("lr", float("nan")) for r in train], color="tab:gray", alpha=0.5, lw=1)
        lr_axis.set_ylabel("learning rate", color="tab:gray")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training")
    ax.grid(alpha=0.3)
    if evals:
        ax = axes[1]
        names = sorted({key for r in evals for key in r["eval"] if "/" not in key})
        for name in names:
            points = [(r["step"], r["eval"][name]) for r in evals if name in r["eval"]]
            ax.plot(*zip(*points), marker="o", label=name)
        ax.set_xlabel("step")
        ax.set_title("evaluation")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    figure.savefig(tmp, format="png")
    tmp.replace(path)
    return path
