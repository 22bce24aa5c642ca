"""What `zoo bench` writes: a terminal report, CSV and JSON files, plots, and the README's benchmark table.

A result record (a dict, as `eval.bench.run_bench` returns it) holds:

    model, family, task, params, input, batch, device, dtype, config_overrides, new_tokens
    machine      cpu, cores, threads, gpu, torch, date, load_average (start), load_average_end
    ceilings     gemm_gflops (square fp matmul, 2 x MAC), copy_gbps (large copy, read + written)
    reference    None, or name, label, max_abs_diff (outputs of one call), max_abs_output, same_greedy_tokens
    timing       rounds, warmup, order, energy (its source, or None)
    implementations[name]   phases[phase]: wall_p50/p90/min/mean, cpu_p50 (seconds), runs, energy_j
                            flops[phase] (2 x MAC), macs[phase] (timm's convention); memory[phase]: peak_mib,
                            delta_mib, measure; headline (see bench.headline)
    ratios[phase]           wall, cpu, paired: reference / zoo (above 1: zoo is faster)

The JSON file holds {"records": [...]}; the CSV one row per (model, implementation) with the headline figures.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.registry import format_count

from .system import describe_machine

README_START, README_END = "<!-- bench -->", "<!-- /bench -->"
CSV_COLUMNS = (
    "model", "family", "task", "implementation", "device", "dtype", "batch", "threads", "input", "params", "phase",
    "latency_p50_ms", "latency_p90_ms", "cpu_p50_ms", "throughput", "throughput_unit", "ttft_ms", "tpot_ms",
    "s_per_step", "gflop", "gmac", "gflop_per_s", "peak_mem_mib", "peak_mem_delta_mib", "energy_j_per_sample",
    "ratio_wall", "ratio_cpu", "ratio_paired", "max_abs_diff", "date",
)


# ---------------------------------------------------------------------------------------------------
# terminal


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.2f}"


def format_record(record: dict[str, Any]) -> str:
    machine, ceilings = record["machine"], record.get("ceilings", {})
    reference = record.get("reference")
    title = f"{record['model']}" + (f" vs {reference['label']}" if reference else "")
    lines = [
        f"{title}: {record['device']} {record['dtype']}, batch {record['batch']}",
        (f"machine: {describe_machine(machine)} | GEMM {ceilings.get('gemm_gflops', '?')} GFLOP/s, copy "
         f"{ceilings.get('copy_gbps', '?')} GB/s | load average {_load(machine)}"),
        f"model: {format_count(record['params'])} params"
        + (f" ({', '.join(f'{k}={v}' for k, v in record['config_overrides'].items())})" if record["config_overrides"]
           else "")
        + f" | input: {record['input']}" + (f" | {record['new_tokens']} new tokens" if record.get("new_tokens") else ""),
    ]
    if record.get("token_reduction") or record.get("kv_cache_bytes"):
        lines.append(f"token reduction: {record.get('token_reduction') or 'none'} | KV cache after the prefill: "
                     f"{(record.get('kv_cache_bytes') or 0) / 2**20:.3f} MiB")
    if reference:
        parity = (f"parity: max |zoo - {reference['name']}| = {reference['max_abs_diff']:.2e} "
                  f"(outputs up to {reference['max_abs_output']:.2e})")
        if "same_greedy_tokens" in reference:
            same = "same" if reference["same_greedy_tokens"] else "DIFFERENT"
            parity += f"; {same} greedy tokens ({reference['greedy_tokens_checked']})"
        lines.append(parity)
    timing = record["timing"]
    lines.append(f"timing: {timing['rounds']} rounds after {timing['warmup']} warm-up, {timing['order']}; "
                 f"GFLOP = 2 x GMAC (FlopCounterMode; timm reports GMAC)")
    lines.append("")
    lines.append(f"{'phase':9s} {'implementation':14s} {'p50 ms':>9s} {'p90 ms':>9s} {'CPU p50 ms':>11s} "
                 f"{'GFLOP':>8s} {'GMAC':>8s} {'GFLOP/s':>8s} {'peak MiB':>9s} {'+call MiB':>9s}")
    for name, result in record["implementations"].items():
        for phase, stats in result["phases"].items():
            flops = result.get("flops", {}).get(phase)
            memory = result.get("memory", {}).get(phase, {})
            gflop = f"{flops / 1e9:8.3g} {flops / 2e9:8.3g}" if flops else f"{'-':>8s} {'-':>8s}"
            rate = f"{flops / stats['wall_p50'] / 1e9:8.3g}" if flops and stats["wall_p50"] > 0 else f"{'-':>8s}"
            peak = f"{memory['peak_mib']:9.0f} {memory['delta_mib']:9.1f}" if memory else f"{'-':>9s} {'-':>9s}"
            lines.append(f"{phase:9s} {name:14s} {_ms(stats['wall_p50'])} {_ms(stats['wall_p90'])} "
                         f"{stats['cpu_p50'] * 1e3:11.2f} {gflop} {rate} {peak}")
    lines.append("")
    for name, result in record["implementations"].items():
        h = result["headline"]
        figures = [f"{h['throughput']:.2f} {h['throughput_unit']}"]
        if "ttft_ms" in h:
            figures.append(f"TTFT {h['ttft_ms']:.1f} ms, TPOT {h['tpot_ms']:.2f} ms")
        if "s_per_step" in h:
            figures.append(f"{h['s_per_step']:.3f} s/step")
        if "energy_j_per_sample" in h:
            figures.append(f"{h['energy_j_per_sample']:.2f} J/sample")
        lines.append(f"{name}: " + ", ".join(figures))
    if record.get("ratios"):
        lines.append(f"ratio {reference['name']} / zoo (above 1: zoo is faster):")
        for phase, r in record["ratios"].items():
            lines.append(f"  {phase:9s} {r['wall']:5.2f}x wall  {r['cpu']:5.2f}x CPU  {r['paired']:5.2f}x paired")
    return "\n".join(lines)


def _load(machine: dict[str, Any]) -> str:
    start, end = machine.get("load_average"), machine.get("load_average_end")
    if not start:
        return "?"
    return f"{start[0]:.1f}" + (f" -> {end[0]:.1f}" if end else "")


# ---------------------------------------------------------------------------------------------------
# files


def csv_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        reference = record.get("reference") or {}
        for name, result in record["implementations"].items():
            h = result["headline"]
            row = {key: record.get(key) for key in ("model", "family", "task", "device", "dtype", "batch", "input",
                                                     "params")}
            row.update({key: h.get(key) for key in CSV_COLUMNS if key in h})
            row.update(implementation=name, threads=record["machine"]["threads"], date=record["machine"]["date"])
            ratio = (record.get("ratios") or {}).get("tpot" if "tpot" in result["phases"] else h["phase"])
            if name == "zoo" and ratio:
                row.update(ratio_wall=ratio["wall"], ratio_cpu=ratio["cpu"], ratio_paired=ratio["paired"],
                           max_abs_diff=reference.get("max_abs_diff"))
            rows.append({key: _round(row.get(key)) for key in CSV_COLUMNS})
    return rows


def _round(value: Any) -> Any:
    """Six significant digits: a tiny model's GFLOP stays above 0."""
    return float(f"{value:.6g}") if isinstance(value, float) and math.isfinite(value) else value


def run_id(records: Sequence[dict[str, Any]], all_models: bool = False) -> str:
    first = records[0]
    if all_models or len(records) > 1:
        head = "all"
    else:
        head = first["model"] + (f"--{first['reference']['name']}" if first.get("reference") else "")
    layers = first["config_overrides"].get("layers")
    compiled = "-compiled" if first.get("compile") else ""
    return f"{head}{f'-L{layers}' if layers else ''}{compiled}-{first['device']}-{first['dtype']}-b{first['batch']}"


def write_results(records: Sequence[dict[str, Any]], out_dir: str | Path, name: str,
                  plots: bool = True) -> dict[str, Path]:
    """`name`.json, `name`.csv and (with `plots`) the PNG plots in `out_dir`; returns the paths."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "csv": out / f"{name}.csv"}
    paths["json"].write_text(json.dumps({"records": list(records)}, indent=1, default=_json_default) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(records))
    if plots:
        paths.update(write_plots(records, out, name))
    return paths


def _json_default(value: Any) -> Any:
    return str(value)


def load_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Records from result JSON files, or from every *.json in the folders given that holds `zoo bench` records
    (the family benchmarks in eval/benchmarks write their own JSON beside them)."""
    files: list[tuple[Path, bool]] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += [(file, False) for file in sorted(path.glob("*.json"))]
        elif path.is_file():
            files.append((path, True))
        else:
            raise InputError(f"{path} is neither a results file nor a folder of them")
    records = []
    for file, named in files:
        try:
            content = json.loads(file.read_text())
            if not named and not (isinstance(content, dict) and "records" in content):
                continue
            records += content["records"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{file} is not a zoo bench results file ({error})") from error
    return records


# ---------------------------------------------------------------------------------------------------
# plots


def write_plots(records: Sequence[dict[str, Any]], out_dir: Path, name: str) -> dict[str, Path]:
    """Throughput against parameters per family (every record) and, for records with a reference, the ratio bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    units = sorted({r["implementations"]["zoo"]["headline"]["throughput_unit"] for r in records})
    figure, axes = plt.subplots(1, len(units), figsize=(6 * len(units), 4.5), squeeze=False)
    families = sorted({r["family"] for r in records})
    colours = {family: plt.cm.tab10(i % 10) for i, family in enumerate(families)}
    for axis, unit in zip(axes[0], units):
        chosen = [r for r in records if r["implementations"]["zoo"]["headline"]["throughput_unit"] == unit]
        for record in chosen:
            for impl, result in record["implementations"].items():
                h = result["headline"]
                hollow = impl != "zoo"
                axis.scatter(record["params"], h["throughput"], s=40, color=colours[record["family"]],
                             facecolors="none" if hollow else colours[record["family"]], zorder=3)
                if not hollow:  # the reference sits next to its model, named by the legend
                    axis.annotate(record["model"], (record["params"], h["throughput"]), fontsize=7, xytext=(4, 3),
                                  textcoords="offset points")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.set_ylabel(f"throughput ({unit})")
        axis.grid(True, which="both", alpha=0.3)
        for family in sorted({r["family"] for r in chosen}):
            axis.scatter([], [], color=colours[family], label=family)
        axis.legend(fontsize=7, title="family (hollow: its reference)", title_fontsize=7)
    machine = records[0]["machine"]
    dates = sorted({r["machine"]["date"][:10] for r in records})
    figure.suptitle(f"zoo bench: throughput vs parameters ({records[0]['device']}, {records[0]['dtype']}, "
                    f"{machine['threads']} thread(s), {' to '.join(dates[::max(1, len(dates) - 1)])})", fontsize=9)
    figure.tight_layout()
    paths["throughput_plot"] = out_dir / f"{name}-throughput.png"
    figure.savefig(paths["throughput_plot"], dpi=120)
    plt.close(figure)

    bars = [(f"{r['model']}\n{phase} vs {r['reference']['name']}\nbatch {r['batch']}, {r['machine']['threads']} thr",
             ratio) for r in records if r.get("ratios") for phase, ratio in r["ratios"].items()]
    if bars:
        figure, axis = plt.subplots(figsize=(max(5.0, 1.3 * len(bars) + 1), 4))
        positions = range(len(bars))
        axis.bar([p - 0.2 for p in positions], [b[1]["wall"] for b in bars], 0.4, label="wall-clock medians")
        axis.bar([p + 0.2 for p in positions], [b[1]["cpu"] for b in bars], 0.4, label="CPU-time medians")
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(list(positions), [b[0] for b in bars], fontsize=7)
        axis.set_ylabel("reference time / zoo time (above 1: zoo faster)")
        axis.legend(fontsize=7)
        axis.set_title(f"zoo vs reference implementations ({records[0]['device']}, {records[0]['dtype']})", fontsize=9)
        figure.tight_layout()
        paths["ratio_plot"] = out_dir / f"{name}-ratios.png"
        figure.savefig(paths["ratio_plot"], dpi=120)
        plt.close(figure)
    return paths


# ---------------------------------------------------------------------------------------------------
# README


def readme_table(records: Sequence[dict[str, Any]]) -> str:
    """The README's benchmark section: the machine, dtype and dates, then one row per compared phase."""
    compared = [r for r in records if r.get("ratios")]
    if not compared:
        return "No comparison results yet: run `zoo bench MODEL --compare REFERENCE --out eval/results`."
    machines = sorted({describe_machine(r["machine"], threads=False) for r in compared})
    dtypes = sorted({r["dtype"] for r in compared})
    dates = sorted({r["machine"]["date"] for r in compared})
    loads = [x for r in compared for x in (r["machine"].get("load_average") or [])[:1]]
    gemm = [r["ceilings"]["gemm_gflops"] for r in compared if r.get("ceilings")]
    lines = [
        f"Measured on {'; '.join(machines)}, {' and '.join(dtypes)}, on {dates[0]}"
        + (f" to {dates[-1]}" if len(dates) > 1 else "")
        + (f", on a shared machine (1-minute load average {min(loads):.1f} to {max(loads):.1f})" if loads else "")
        + (f"; this machine's fp32 GEMM ceiling measured {min(gemm):.0f} to {max(gemm):.0f} GFLOP/s per run" if gemm
           else "")
        + f". Random weights, shared by both implementations ({_agreement(compared)}); medians of alternating runs after "
        "warm-up. Ratio = reference time / zoo time (above 1: zoo is faster), from wall-clock and from process CPU "
        "time. TTFT: generate 1 token; TPOT: per further token; step: one denoiser forward. GMAC: multiply-accumulates "
        "of one call of zoo's model, as timm reports them; GFLOP/s counts 2 FLOPs per MAC (FLOPs = 2 x MACs).",
        "",
        "| Model | Setting | Input | Reference | Phase | zoo | reference | ratio (wall) | ratio (CPU) | GMAC | "
        "zoo GFLOP/s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for record in compared:
        reference = record["reference"]["name"]
        setting = f"{record['device']} {record['dtype']}, batch {record['batch']}, {record['machine']['threads']} thr"
        if record["config_overrides"].get("layers"):
            setting += f", {record['config_overrides']['layers']} layers"
        if record.get("compile"):
            setting += ", zoo decode compiled"
        zoo = record["implementations"]["zoo"]
        for phase, ratio in record["ratios"].items():
            ours = zoo["phases"][phase]["wall_p50"]
            theirs = record["implementations"][reference]["phases"][phase]["wall_p50"]
            flops = zoo.get("flops", {}).get(phase)
            rate = f"{flops / ours / 1e9:.1f}" if flops and ours > 0 else "-"
            gmac = f"{flops / 2e9:.3g}" if flops else "-"
            lines.append(f"| `{record['model']}` | {setting} | {record['input']} | {record['reference']['label']} | "
                         f"{phase} | {_human_time(ours)} | {_human_time(theirs)} | {ratio['wall']:.2f}x | "
                         f"{ratio['cpu']:.2f}x | {gmac} | {rate} |")
    lines += ["", ("Regenerate with `zoo bench --readme` (reads `eval/results/*.json`, writes the plots "
                   "`eval/results/summary-throughput.png` and `summary-ratios.png`).")]
    return "\n".join(lines)


def _agreement(records: Sequence[dict[str, Any]]) -> str:
    worst = max(r["reference"]["max_abs_diff"] / max(1.0, r["reference"]["max_abs_output"]) for r in records)
    return f"outputs agree to {worst:.0e} relative" if worst > 0 else "identical outputs"


def _human_time(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def update_readme(readme: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Rewrite the text between the README's bench markers; nothing else changes."""
    path = Path(readme)
    if not path.is_file():
        raise InputError(f"{path}: no such file (--readme takes the README to rewrite)")
    text = path.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise InputError(f"{path} has no {README_START} ... {README_END} section to fill")
    path.write_text(pattern.sub(lambda _: f"{README_START}\n{readme_table(records)}\n{README_END}", text, count=1))
    return path


__all__ = ["CSV_COLUMNS", "csv_rows", "format_record", "load_records", "readme_table", "run_id", "update_readme",
           "write_plots", "write_results"]
