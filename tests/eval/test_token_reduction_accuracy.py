"""The accuracy-vs-FLOPs benchmark's summaries: curves start at the unreduced model, the best method per budget and
its drop, the plot, and the `zoo train` command it runs (the sweep itself is a benchmark: eval/benchmarks)."""

from __future__ import annotations

from pathlib import Path

from eval.benchmarks import token_reduction_accuracy as bench


def _row(accuracy, gflops):
    return {"metrics": {"exact_match": accuracy}, "prefill_flops": gflops * 1e9}


RESULT = {"token_reduction": {
    "none": _row(0.9, 1.0),
    "pool:0.5": _row(0.8, 0.7), "pool:0.25": _row(0.5, 0.5),
    "merge:0.5": _row(0.85, 0.72), "merge:0.25": _row(0.4, 0.52),
    "fastv:0.5:layer=1": _row(0.88, 0.9), "fastv:0.25:layer=1": _row(0.3, 0.8),
}, "chance": 0.25, "model_name": "smolvlm-tiny", "num_samples": 10}


def test_curves_and_best_method_per_budget(tmp_path):
    curves = bench.curves(RESULT)
    assert list(curves) == ["pool", "merge", "fastv"]
    assert curves["pool"] == [(1.0, 1.0, 0.9), (0.5, 0.7, 0.8), (0.25, 0.5, 0.5)]
    best = bench.best_per_budget(RESULT)
    assert best["0.5"]["method"] == "fastv" and abs(best["0.5"]["drop"] - 0.02) < 1e-9
    assert best["0.25"]["method"] == "pool" and abs(best["0.25"]["drop"] - 0.4) < 1e-9
    path = tmp_path / "plot.png"
    bench.plot({"smolvlm": RESULT, "hulumed": RESULT}, path)
    assert path.stat().st_size > 10_000


def test_each_family_sweeps_five_methods_at_three_budgets_through_zoo_train():
    for family in bench.FAMILIES:
        specs = bench.specs(family)
        assert len(specs) == 15 and len({spec.split(":")[0] for spec in specs}) == 5
        args = bench.train_args(family, Path("runs/x"), seed=0, steps=10)
        assert args[:2] == ["train", bench.FAMILIES[family]["model"]] and "shapes-vqa-small" in args
