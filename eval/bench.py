"""`zoo bench`: parameters, FLOPs, latency, throughput, memory and energy of a model, side by side with its
reference implementation.

    from eval.bench import BenchOptions, run_bench
    record = run_bench(BenchOptions("lowformer-b1", compare="timm", threads=2))

What is timed depends on the model's task:

    backbone, restoration   "forward": one forward of the batch; throughput in samples/s
    diffusion               "step": one denoiser forward = one sampling step without guidance (two with CFG);
                            seconds per step and samples/s
    vlm, language           "ttft": generate 1 token (prefill + first token); "generate": N tokens;
                            "tpot" = (generate - ttft) / (N - 1) paired by round; throughput in tokens/s

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one call (2 x multiply-accumulates; matmuls,
convolutions and attention, plus zoo's selective scan and gated linear attention through their registered
formulas; elementwise ops, norms and softmax count 0). For generative models, "ttft" counts the prefill and
"tpot" one decoding step. Records hold both conventions, labelled: `flops` (2 x MAC) and `macs` (what timm and
most papers report as "GMACs", often loosely called FLOPs).

With `compare`, zoo's model and the reference hold the same weights (see eval.references); one call of each
checks that they agree, then every (implementation, phase) pair is timed in alternation (eval.timing).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.cli import resolve_device
from zoo.config import ZooConfig
from zoo.dtypes import parse_dtype
from zoo.errors import ConfigError, InputError, ZooError
from zoo.registry import (
    ModelEntry,
    count_parameters,
    get_entry,
    get_family,
    list_models,
)

from .inputs import BenchInput, make_inputs, to_device
from .references import Reference, get_reference
from .system import ceilings, machine_info
from .timing import (
    Contender,
    EnergyMeter,
    Samples,
    alternate,
    auto_repeats,
    peak_memory,
    ratios,
)

GENERATIVE_TASKS = ("vlm", "language")
MAIN_PHASE = {"diffusion": "step", "vlm": "ttft", "language": "ttft"}


@dataclasses.dataclass
class BenchOptions:
    """One `zoo bench` run. `input`: `--input` items (see eval.inputs); `layers`: blocks per trunk (see
    `with_layers`); `model_options`: config overrides; `repeats` None: as many rounds as fit in `budget_s`."""

    model: str
    compare: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    input: list[str] | None = None
    layers: int | None = None
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    threads: int | None = None
    repeats: int | None = None
    warmup: int = 2
    budget_s: float = 20.0
    new_tokens: int = 32
    seed: int = 0
    channels_last: bool = False
    compile: bool = False
    flops: bool = True
    memory: bool = True
    token_reduction: str | None = None  # a VLM's visual token reduction, as `TokenReduction.parse` reads it


# ---------------------------------------------------------------------------------------------------
# configs


def with_layers(entry: ModelEntry, config: ZooConfig, layers: int) -> ZooConfig:
    """`config` with `layers` blocks: num_layers (Wan, Z-Image main blocks), depth (WaveMix), num_hidden_layers
    (language models), or both SmolVLM trunks (vision encoder and decoder). Families with stages of different
    depths refuse it (use --model-options)."""
    if layers < 1:
        raise ConfigError(f"--layers must be at least 1, got {layers}")
    fields = config.field_names()
    if entry.family == "smolvlm":
        return config.replace(vision=config.vision.replace(num_hidden_layers=layers),
                              text=config.text.replace(num_hidden_layers=layers))
    for name in ("num_layers", "depth", "num_hidden_layers"):
        if name in fields:
            return config.replace(**{name: layers})
    raise ConfigError(f"--layers does not apply to '{entry.family}' models (no single block count); change their "
                      f"depth with --model-options, e.g. '{{\"depths\": [...]}}'.")


def bench_config(entry: ModelEntry, options: BenchOptions) -> ZooConfig:
    config = entry.config.replace(**options.model_options) if options.model_options else entry.config
    return with_layers(entry, config, options.layers) if options.layers is not None else config


def resolve_dtype(name: str) -> torch.dtype:
    return parse_dtype(name, "--dtype")


# ---------------------------------------------------------------------------------------------------
# what to time


@dataclasses.dataclass
class Implementation:
    """One contender: a model and the calls to time, by phase."""

    name: str
    model: nn.Module
    calls: dict[str, Callable[[], Any]]
    forward: Callable[[], Any]  # the call whose output is compared and whose FLOPs are counted
    generate: Callable[[int], torch.Tensor] | None = None


def zoo_implementation(model: nn.Module, task: str, inputs: dict[str, Any], new_tokens: int,
                       compile: bool = False) -> Implementation:
    """compile: decode through `generate(compile=True)` (generative models only)."""
    forward = lambda: model(**inputs)
    if task in GENERATIVE_TASKS and hasattr(model, "generate"):
        def generate(n: int) -> torch.Tensor:
            return model.generate(**inputs, max_new_tokens=n, cache="static", compile=compile)

        return Implementation("zoo", model, _generation_calls(generate, new_tokens), forward, generate)
    return Implementation("zoo", model, {MAIN_PHASE.get(task, "forward"): forward}, forward)


def reference_implementation(reference: Reference, model: nn.Module, task: str, inputs: dict[str, Any],
                             new_tokens: int) -> Implementation:
    forward = lambda: reference.call(model, inputs)
    if task in GENERATIVE_TASKS and reference.generate is not None:
        def generate(n: int) -> torch.Tensor:
            return reference.generate(model, inputs, n)

        return Implementation(reference.name, model, _generation_calls(generate, new_tokens), forward, generate)
    return Implementation(reference.name, model, {MAIN_PHASE.get(task, "forward"): forward}, forward)


def _generation_calls(generate: Callable[[int], torch.Tensor], new_tokens: int) -> dict[str, Callable[[], Any]]:
    if new_tokens < 2:
        raise ConfigError(f"--new-tokens must be at least 2 to separate decoding from the first token, got {new_tokens}")
    return {"ttft": lambda: generate(1), "generate": lambda: generate(new_tokens)}


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest absolute difference between two outputs (tensors, or lists / tuples of them)."""
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return math.inf
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return math.inf
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def max_abs(a: Any) -> float:
    if isinstance(a, (list, tuple)):
        return max((max_abs(x) for x in a), default=0.0)
    return float(a.float().abs().max()) if isinstance(a, torch.Tensor) and a.numel() else 0.0


# ---------------------------------------------------------------------------------------------------
# FLOPs


def count_call_flops(model: nn.Module, fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `model`; torch.compile'd code runs eagerly meanwhile (the counter cannot see into it).
    The parameters stop requiring gradients meanwhile: the counter hooks the gradients of every module input, which
    fails in inference mode for a parameter (or a view of one) passed to a submodule, as learned queries are."""
    from zoo.layers.flops import count_flops

    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    try:
        for parameter in trainable:
            parameter.requires_grad_(False)
        with torch.inference_mode(), torch.compiler.set_stance("force_eager"):
            return int(count_flops(fn))
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def implementation_flops(impl: Implementation, task: str) -> dict[str, int]:
    """FLOPs per phase: the forward, or for generative models the prefill ("ttft") and one decoding step ("tpot")."""
    if impl.generate is not None:
        first = count_call_flops(impl.model, lambda: impl.generate(1))
        second = count_call_flops(impl.model, lambda: impl.generate(2))
        return {"ttft": first, "tpot": second - first}
    return {next(iter(impl.calls)): count_call_flops(impl.model, impl.forward)}


def prefill_cache_bytes(model: nn.Module, inputs: dict[str, Any]) -> int | None:
    """Bytes of the KV cache after the prompt's prefill (one forward into a DynamicCache); None for a model whose
    forward takes no cache or brings its own."""
    from zoo.layers.attention import DynamicCache
    from zoo.vlm.token_reduction import kv_cache_bytes

    if "cache" not in inspect.signature(model.forward).parameters or hasattr(model, "make_cache"):
        return None
    cache = DynamicCache()
    with torch.inference_mode():
        model(**inputs, cache=cache, logits_to_keep=1)
    return kv_cache_bytes(cache)


def _token_reduction(entry: ModelEntry, options: BenchOptions) -> Any:
    if options.token_reduction is None:
        return None
    from zoo.vlm.token_reduction import TokenReduction

    if entry.task != "vlm":
        raise ConfigError(f"--token-reduction applies to vision-language models; {entry.name} is a {entry.task} model")
    if options.compare:
        raise ConfigError("--token-reduction is zoo's own; bench the unreduced model against --compare in a separate "
                          "run (or use eval/benchmarks/token_reduction.py, which times every setting side by side)")
    return TokenReduction.parse(options.token_reduction)


# ---------------------------------------------------------------------------------------------------
# the run


def _build(entry: ModelEntry, config: ZooConfig, reference: Reference | None) -> tuple[nn.Module, nn.Module | None]:
    if reference is None:
        model = get_family(entry.family).model_cls(config).eval()
        model.zoo_name = entry.name
        return model, None
    reference_model, model = reference.build(config)
    model.zoo_name = entry.name
    return model, reference_model


def _place(model: nn.Module, device: str, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    model = model.to(device, dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def fits_in_memory(name: str, device: str, dtype: torch.dtype, fraction: float = 0.5) -> tuple[bool, int]:
    """Whether a model's weights (counted on the meta device) take at most `fraction` of the device's memory
    (the GPU's, or the machine's RAM), and its parameter count."""
    from zoo.registry import model_info

    params = model_info(name)["params"]
    if torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(torch.device(device).index or 0).total_memory
    else:
        import os

        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return params * dtype.itemsize <= fraction * total, params


def _check_call(entry: ModelEntry, bench_input: BenchInput, fn: Callable[[], Any]) -> Any:
    """Run zoo's model once; a model that cannot take the input fails here with the input named."""
    try:
        with torch.inference_mode():
            return fn()
    except torch.OutOfMemoryError as error:
        raise ZooError(f"'{entry.name}' ran out of device memory on the input {bench_input.describe()}; try a smaller "
                       f"--batch, --input or --layers, or --dtype bfloat16.") from error
    except (ZooError, ValueError, RuntimeError, TypeError, IndexError, AssertionError) as error:
        raise InputError(
            f"'{entry.name}' cannot take the input {bench_input.describe()}: {type(error).__name__}: {error}"
        ) from error


def _quiet(message: str) -> None:
    pass


def run_bench(options: BenchOptions, log: Callable[[str], None] = _quiet) -> dict[str, Any]:
    """Benchmark one model (and its reference); returns the result record (see `eval.report` for its fields).
    `options.threads` sets torch's CPU threads for the run; the previous count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        return _run_bench(options, log)
    finally:
        torch.set_num_threads(threads)


def _run_bench(options: BenchOptions, log: Callable[[str], None]) -> dict[str, Any]:
    entry = get_entry(options.model)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype)
    if options.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {options.batch}")
    if options.compile and entry.task not in GENERATIVE_TASKS:
        raise ConfigError(f"--compile applies to the decoding of generative models; {entry.name} is a "
                          f"{entry.task} model")
    if options.threads:
        torch.set_num_threads(options.threads)
    reference = None
    if options.compare:
        reference = get_reference(entry.family, options.compare)
        reference.require()
    config = bench_config(entry, options)
    bench_input = make_inputs(entry, config, options.batch, options.input, device=device, seed=options.seed)
    inputs = to_device(bench_input.kwargs, device, dtype, channels_last=options.channels_last)
    reduction = _token_reduction(entry, options)
    if reduction is not None:
        inputs = {**inputs, "token_reduction": reduction}

    log(f"zoo bench: building {entry.name}" + (f" and its {reference.label} reference" if reference else ""))
    torch.manual_seed(options.seed)
    model, reference_model = _build(entry, config, reference)
    model = _place(model, device, dtype, options.channels_last)
    implementations = [zoo_implementation(model, entry.task, inputs, options.new_tokens, options.compile)]
    if options.compile:
        log("zoo bench: compiling zoo's decoding step (not timed)")
        with torch.inference_mode():
            implementations[0].generate(2)
    if reference is not None:
        reference_model = _place(reference_model, device, dtype, options.channels_last)
        implementations.append(reference_implementation(reference, reference_model, entry.task, inputs,
                                                        options.new_tokens))
    ours = _check_call(entry, bench_input, implementations[0].forward)

    record: dict[str, Any] = {
        "model": entry.name,
        "family": entry.family,
        "task": entry.task,
        "config_overrides": {**options.model_options, **({"layers": options.layers} if options.layers else {})},
        "params": count_parameters(model),
        "input": bench_input.describe(),
        "batch": options.batch,
        "device": device,
        "dtype": options.dtype,
        "channels_last": options.channels_last,
        "compile": options.compile,
        "new_tokens": options.new_tokens if entry.task in GENERATIVE_TASKS else None,
        "token_reduction": None if reduction is None else reduction.describe(),
        "kv_cache_bytes": prefill_cache_bytes(model, inputs) if entry.task in GENERATIVE_TASKS else None,
        "machine": machine_info(device),
        "reference": None,
    }
    record["ceilings"] = _ceilings(device, dtype, torch.get_num_threads())

    if reference is not None:
        with torch.inference_mode():
            theirs = implementations[1].forward()
        parity = {"name": reference.name, "label": reference.label, "max_abs_diff": max_abs_diff(ours, theirs),
                  "max_abs_output": max_abs(theirs)}
        if implementations[0].generate is not None and implementations[1].generate is not None:
            n = options.new_tokens  # the tokens the timed runs generate
            with torch.inference_mode():
                parity["same_greedy_tokens"] = bool(torch.equal(implementations[0].generate(n).cpu(),
                                                                implementations[1].generate(n).cpu()))
            parity["greedy_tokens_checked"] = n
        record["reference"] = parity

    contenders = {f"{impl.name}/{phase}": Contender(run=fn) for impl in implementations for phase, fn in impl.calls.items()}
    with torch.inference_mode():
        repeats = options.repeats or auto_repeats(contenders, options.budget_s, device=device)
        log(f"zoo bench: timing {len(contenders)} contender(s), {repeats} rounds after {options.warmup} warm-up")
        energy = EnergyMeter.open(device)
        samples = alternate(contenders, repeats=repeats, warmup=options.warmup, device=device, energy=energy)
    record["timing"] = {"rounds": repeats, "warmup": options.warmup, "order": "alternating, reversed every round",
                        "energy": "NVML total energy counter" if energy is not None else None}

    record["implementations"] = {}
    phase_samples: dict[str, dict[str, Samples]] = {}
    for impl in implementations:
        phases = phase_samples[impl.name] = {phase: samples[f"{impl.name}/{phase}"] for phase in impl.calls}
        if "generate" in phases:
            phases["tpot"] = _per_token(phases["generate"], phases["ttft"], options.new_tokens)
        result: dict[str, Any] = {"phases": {phase: s.summary() for phase, s in phases.items()}}
        if options.flops:
            with torch.inference_mode():
                result["flops"] = implementation_flops(impl, entry.task)
            result["macs"] = {phase: flops // 2 for phase, flops in result["flops"].items()}
        if options.memory:
            with torch.inference_mode():
                result["memory"] = {phase: peak_memory(fn, device) for phase, fn in impl.calls.items()}
        result["headline"] = headline(entry.task, result, options.batch)
        record["implementations"][impl.name] = result
    if reference is not None:
        record["ratios"] = {phase: ratios(phase_samples[reference.name][phase], ours)
                            for phase, ours in phase_samples["zoo"].items()}
    record["machine"]["load_average_end"] = machine_info(device)["load_average"]
    return record


@functools.cache
def _ceilings(device: str, dtype: torch.dtype, threads: int) -> dict[str, float]:
    """This machine's GEMM and copy rates, measured once per device, dtype and thread count."""
    try:
        return ceilings(device, dtype)
    except RuntimeError:  # a dtype this device's matmul does not take
        return ceilings(device, torch.float32)


def _per_token(generate: Samples, first: Samples, new_tokens: int) -> Samples:
    """Seconds per output token after the first, from the runs of one round: (generate - ttft) / (N - 1)."""
    per_token = Samples()
    for g, f in zip(generate.wall, first.wall):
        per_token.wall.append(max(g - f, 0.0) / (new_tokens - 1))
    for g, f in zip(generate.cpu, first.cpu):
        per_token.cpu.append(max(g - f, 0.0) / (new_tokens - 1))
    return per_token


def headline(task: str, result: dict[str, Any], batch: int) -> dict[str, Any]:
    """The figures a table shows: latency of the main phase (ms), throughput, TTFT / TPOT or s/step, memory,
    GFLOP and GMAC of one call (GFLOP = 2 x GMAC), achieved GFLOP/s, energy per sample."""
    phases = result["phases"]
    main = MAIN_PHASE.get(task, "forward") if MAIN_PHASE.get(task, "forward") in phases else next(iter(phases))
    p50 = phases[main]["wall_p50"]
    out: dict[str, Any] = {"phase": main, "latency_p50_ms": p50 * 1e3, "latency_p90_ms": phases[main]["wall_p90"] * 1e3,
                           "cpu_p50_ms": phases[main]["cpu_p50"] * 1e3}
    if "tpot" in phases:
        tpot = phases["tpot"]["wall_p50"]
        out.update(ttft_ms=p50 * 1e3, tpot_ms=tpot * 1e3, throughput=batch / tpot if tpot > 0 else math.nan,
                   throughput_unit="tokens/s")
    else:
        out.update(throughput=batch / p50, throughput_unit="samples/s")
        if task == "diffusion":
            out["s_per_step"] = p50
    flops = result.get("flops", {})
    flops_phase = "tpot" if "tpot" in phases else main
    if flops.get(flops_phase):
        out["gflop"] = flops[flops_phase] / 1e9
        out["gmac"] = flops[flops_phase] / 2e9
        seconds = phases[flops_phase]["wall_p50"]
        out["gflop_per_s"] = flops[flops_phase] / seconds / 1e9 if seconds > 0 else math.nan
    memory = result.get("memory", {}).get("generate" if "generate" in phases else main)
    if memory:
        out["peak_mem_mib"] = memory["peak_mib"]
        out["peak_mem_delta_mib"] = memory["delta_mib"]
    energy_phase = "generate" if "generate" in phases else main
    if "energy_j" in phases[energy_phase]:
        out["energy_j_per_sample"] = phases[energy_phase]["energy_j"] / batch
    return out


def tiny_models() -> list[str]:
    """Every family's `*-tiny` model (each family registers one)."""
    return list_models("*-tiny")


def run_many(names: list[str], options: BenchOptions, log: Callable[[str], None] = _quiet,
             keep_going: bool = True) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """`run_bench` for each name (with `options`' other fields); failures are collected when `keep_going`."""
    records, failures = [], []
    for name in names:
        try:
            records.append(run_bench(dataclasses.replace(options, model=name), log=log))
        except ZooError as error:
            if not keep_going:
                raise
            failures.append((name, str(error)))
    return records, failures


__all__ = [
    "BenchOptions",
    "count_call_flops",
    "fits_in_memory",
    "headline",
    "max_abs_diff",
    "run_bench",
    "run_many",
    "tiny_models",
    "with_layers",
]
