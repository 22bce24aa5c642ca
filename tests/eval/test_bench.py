"""`zoo bench`: the records and files it writes, --compare against each reference on tiny configs, bench-level
FLOPs of recurrent blocks, the timing harness, and clear errors for bad input. Timings are never asserted."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys

import pytest
import torch
from torch._inductor import config as inductor_config

from eval import timing
from eval.bench import BenchOptions, headline, run_bench, with_layers
from eval.inputs import make_inputs, parse_input
from eval.references import REFERENCES, MissingPackageError, get_reference
from eval.report import CSV_COLUMNS, readme_table, update_readme
from tests.eval.blocks import LENGTH, WIDTH
from tests.layers.test_flops import depthwise_conv_flops, linear_flops
from zoo.cli import main
from zoo.errors import ConfigError, InputError
from zoo.layers.flops import gated_linear_attention_flops, selective_scan_flops
from zoo.registry import get_entry

QUICK = {"repeats": 2, "warmup": 0, "threads": 1}


def quick(model: str, **options) -> dict:
    return run_bench(BenchOptions(model, **{**QUICK, **options}))


# ---------------------------------------------------------------------------------------------------
# records and files


def test_cli_writes_json_csv_and_plots(tmp_path, capsys):
    assert main(["bench", "toy-tiny", "--repeats", "2", "--warmup", "0", "--batch", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "toy-tiny: cpu float32, batch 4" in out and "samples/s" in out
    stem = "toy-tiny-cpu-float32-b4"
    record = json.loads((tmp_path / f"{stem}.json").read_text())["records"][0]
    assert record["params"] == 8 * 16 + 16 + 16 * 16 + 16 + 2 * 16 + 16 * 3 + 3
    zoo = record["implementations"]["zoo"]
    assert zoo["phases"]["forward"]["runs"] == 2
    assert zoo["flops"]["forward"] == 2 * 4 * (8 * 16 + 16 * 16 + 16 * 3)  # three Linear layers, batch 4
    assert zoo["memory"]["forward"]["peak_mib"] > 0
    assert zoo["headline"]["throughput_unit"] == "samples/s"
    assert record["machine"]["cores"] >= 1 and record["ceilings"]["gemm_gflops"] > 0
    rows = list(csv.DictReader((tmp_path / f"{stem}.csv").open()))
    assert list(rows[0]) == list(CSV_COLUMNS) and rows[0]["model"] == "toy-tiny"
    assert (tmp_path / f"{stem}-throughput.png").stat().st_size > 0


def test_macs_are_reported_next_to_flops_and_labelled(tmp_path, capsys):
    """timm and most papers report MACs; zoo's FLOPs are 2 x MAC. Both are written, labelled, everywhere."""
    assert main(["bench", "toy-tiny", "--repeats", "1", "--warmup", "0", "--batch", "2", "--no-memory", "--no-plots",
                 "--out", str(tmp_path)]) == 0
    macs = 2 * (8 * 16 + 16 * 16 + 16 * 3)  # three Linear layers, batch 2
    out = capsys.readouterr().out
    assert "GFLOP = 2 x GMAC" in out
    header = next(line for line in out.splitlines() if line.startswith("phase"))
    row = next(line for line in out.splitlines() if line.startswith("forward"))
    assert header.split()[-7:-4] == ["GFLOP", "GMAC", "GFLOP/s"]
    gflop, gmac = map(float, row.split()[-5:-3])
    assert gflop == pytest.approx(2 * macs / 1e9, rel=1e-2) and gmac == pytest.approx(macs / 1e9, rel=1e-2)
    record = json.loads((tmp_path / "toy-tiny-cpu-float32-b2.json").read_text())["records"][0]
    zoo = record["implementations"]["zoo"]
    assert zoo["macs"] == {"forward": macs} and zoo["flops"] == {"forward": 2 * macs}
    assert zoo["headline"]["gmac"] == macs / 1e9 and zoo["headline"]["gflop"] == 2 * macs / 1e9
    row = next(csv.DictReader((tmp_path / "toy-tiny-cpu-float32-b2.csv").open()))
    assert float(row["gmac"]) * 2 == float(row["gflop"]) > 0
    record["reference"] = {"name": "ref", "label": "a reference", "max_abs_diff": 0.0, "max_abs_output": 1.0}
    record["implementations"]["ref"] = zoo
    record["ratios"] = {"forward": {"wall": 1.0, "cpu": 1.0, "paired": 1.0}}
    table = readme_table([record])
    assert "GMAC: multiply-accumulates" in table and "(FLOPs = 2 x MACs)" in table
    assert "| ratio (CPU) | GMAC | zoo GFLOP/s |" in table and f"| {macs / 1e9:.3g} |" in table


def test_all_tiny_covers_every_family(tmp_path, capsys):
    from zoo.registry import families, list_models

    assert main(["bench", "--all", "--tiny", "--repeats", "1", "--warmup", "0", "--no-memory", "--no-plots",
                 "--threads", "1", "--new-tokens", "2", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "all-cpu-float32-b1.json").read_text())["records"]
    benched = {r["model"] for r in records}
    assert benched == set(list_models("*-tiny"))
    with_tiny = {get_entry(name).family for name in list_models("*-tiny")}
    assert {f.name for f in families()} - with_tiny <= {"toy"}  # every family registers a *-tiny model
    assert all(r["implementations"]["zoo"]["flops"] for r in records)


def test_generative_and_diffusion_phases():
    vlm = quick("smolvlm-tiny", new_tokens=4)
    zoo = vlm["implementations"]["zoo"]
    assert set(zoo["phases"]) == {"ttft", "generate", "tpot"}
    assert set(zoo["flops"]) == {"ttft", "tpot"} and zoo["flops"]["ttft"] > zoo["flops"]["tpot"] > 0
    assert {"ttft_ms", "tpot_ms"} <= set(zoo["headline"]) and zoo["headline"]["throughput_unit"] == "tokens/s"
    wan = quick("wan-tiny", memory=False)
    assert set(wan["implementations"]["zoo"]["phases"]) == {"step"}
    assert "s_per_step" in wan["implementations"]["zoo"]["headline"]


def test_compiled_decoding_is_benchmarked_and_labelled():
    record = quick("smolvlm-tiny", compare="transformers", new_tokens=4, compile=True, memory=False)
    assert record["compile"] and record["reference"]["same_greedy_tokens"]
    zoo = record["implementations"]["zoo"]
    assert zoo["flops"]["ttft"] > zoo["flops"]["tpot"] > 0  # counted eagerly: the counter cannot see compiled code
    assert "zoo decode compiled" in readme_table([record])
    with pytest.raises(ConfigError, match="--compile applies to the decoding of generative models"):
        quick("lowformer-tiny", compile=True)


# ---------------------------------------------------------------------------------------------------
# --compare


@pytest.mark.parametrize("model, reference, phases", [
    ("smolvlm-tiny", "transformers", {"ttft", "generate", "tpot"}),
    ("wan-tiny", "diffusers", {"step"}),
    ("z-image-tiny", "diffusers", {"step"}),
    ("lowformer-tiny", "timm", {"forward"}),
    ("wavemix-tiny", "wavemix", {"forward"}),
    ("llama-tiny", "transformers", {"ttft", "generate", "tpot"}),
    ("qwen2.5-tiny", "transformers", {"ttft", "generate", "tpot"}),
    ("qwen3-tiny", "transformers", {"ttft", "generate", "tpot"}),
    ("phi-tiny", "transformers", {"ttft", "generate", "tpot"}),
])
def test_compare_prints_ratios(model, reference, phases, capsys, tmp_path):
    assert main(["bench", model, "--compare", reference, "--repeats", "2", "--warmup", "0", "--threads", "1",
                 "--new-tokens", "3", "--no-memory", "--no-plots", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"ratio {reference} / zoo (above 1: zoo is faster):" in out
    record = json.loads(next(tmp_path.glob("*.json")).read_text())["records"][0]
    assert set(record["ratios"]) == phases
    for ratio in record["ratios"].values():
        # positive, or NaN where a noisy TPOT estimate came out at zero: the structure, never the timings
        assert set(ratio) == {"wall", "cpu", "paired"} and all(isinstance(v, float) and not v <= 0 for v in ratio.values())
    assert record["reference"]["max_abs_diff"] <= 1e-4 * max(1.0, record["reference"]["max_abs_output"])
    assert record["reference"].get("same_greedy_tokens", True)
    assert set(record["implementations"]) == {"zoo", reference}
    # the same model, so about the same FLOPs: exactly where both run the same ops; diffusers' Z-Image also projects
    # padding (2.5% more here); zoo's WaveMix runs its stem's three convs as one in eval, and the wavemix package
    # computes its Haar transform as convolutions
    ours, theirs = (impl["flops"] for impl in record["implementations"].values())
    assert ours.keys() == theirs.keys()
    for phase, count in ours.items():
        if model == "z-image-tiny":
            assert 0 < count <= theirs[phase] < 1.05 * count
        elif model == "wavemix-tiny":
            assert 0 < count < theirs[phase]
        else:
            assert 0 < count == theirs[phase]


def test_compare_with_layers_builds_both_at_that_depth():
    record = quick("wan-tiny", compare="diffusers", layers=1, memory=False, flops=False)
    assert record["config_overrides"] == {"layers": 1}
    assert record["params"] < quick("wan-tiny", memory=False, flops=False)["params"]
    entry = get_entry("wan2.1-t2v-1.3b")
    assert with_layers(entry, entry.config, 2).num_layers == 2
    smolvlm = get_entry("smolvlm-256m")
    two = with_layers(smolvlm, smolvlm.config, 2)
    assert two.text.num_hidden_layers == two.vision.num_hidden_layers == 2
    qwen = get_entry("qwen2.5-0.5b")
    assert with_layers(qwen, qwen.config, 2).num_hidden_layers == 2


def test_readme_table_from_records(tmp_path):
    record = quick("lowformer-tiny", compare="timm", memory=False, flops=False)
    table = readme_table([record])
    assert "| `lowformer-tiny` |" in table and "timm lowformer" in table and "float32" in table
    assert record["machine"]["cpu"] in table and record["machine"]["date"] in table
    readme = tmp_path / "README.md"
    readme.write_text("# zoo\n\n<!-- models -->\nkeep me\n<!-- /models -->\n\n<!-- bench -->\nold\n<!-- /bench -->\nend\n")
    update_readme(readme, [record])
    text = readme.read_text()
    assert "keep me" in text and "old" not in text and text.endswith("<!-- /bench -->\nend\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "r.json").write_text(json.dumps({"records": [record]}))
    (results / "family-benchmark.json").write_text(json.dumps({"flops": {"256": 1.0}}))  # another benchmark's output
    assert main(["bench", "--readme", str(readme), "--results", str(results)]) == 0
    assert readme.read_text() == text
    assert main(["bench", "--readme", str(readme), "--results", str(results / "family-benchmark.json")]) == 2


@pytest.mark.parametrize("model, reference_class", [
    ("llama-tiny", "LlamaForCausalLM"), ("qwen2.5-tiny", "Qwen2ForCausalLM"), ("qwen3-tiny", "Qwen3ForCausalLM"),
    ("phi-tiny", "PhiForCausalLM"),
])
def test_language_models_against_transformers(model, reference_class):
    """The reference is transformers' class at the same config with zoo's weights; every timed token is checked."""
    record = quick(model, compare="transformers", new_tokens=6, layers=1, memory=False)
    assert record["task"] == "language" and record["input"] == "input_ids 64 (default)"
    assert record["config_overrides"] == {"layers": 1}
    reference = record["reference"]
    assert reference["label"] == f"transformers {reference_class}"
    assert reference["max_abs_diff"] <= 1e-5 * reference["max_abs_output"]
    assert reference["same_greedy_tokens"] and reference["greedy_tokens_checked"] == 6
    for impl in record["implementations"].values():
        assert set(impl["phases"]) == {"ttft", "generate", "tpot"} and impl["phases"]["tpot"]["runs"] == 2
        assert impl["headline"]["throughput_unit"] == "tokens/s" and {"ttft_ms", "tpot_ms"} <= set(impl["headline"])
        assert impl["flops"]["ttft"] > impl["flops"]["tpot"] > 0


def test_compiled_language_model_decodes_the_reference_tokens():
    """Compiled decoding of Qwen2.5 (tied LM head, q/k/v biases; its one-row projections run as fused reductions,
    tests/layers/test_norm_mlp_embed.py) gives transformers' token at every timed step."""
    with inductor_config.patch(fx_graph_cache=False):  # compile here rather than reuse a cached graph
        record = quick("qwen2.5-tiny", compare="transformers", new_tokens=5, layers=1, compile=True, memory=False,
                       flops=False)
    assert record["compile"] and record["reference"]["same_greedy_tokens"]


def test_language_model_reference_refuses_what_transformers_cannot_build():
    with pytest.raises(ConfigError, match="transformers cannot build this config: attention_rms_norm: zoo True"):
        quick("phi-tiny", compare="transformers", model_options={"attention_rms_norm": True})
    with pytest.raises(ConfigError, match="transformers cannot build this config: attention_bias: zoo True"):
        quick("qwen2.5-tiny", compare="transformers", model_options={"attention_bias": True})


def test_greedy_token_check_sees_a_different_token(monkeypatch):
    """same_greedy_tokens compares zoo's tokens with the reference's: one changed token turns it False."""
    reference = get_reference("qwen2", "transformers")

    def generate(model, inputs, new_tokens):
        tokens = reference.generate(model, inputs, new_tokens)
        tokens[0, -1] = (tokens[0, -1] + 1) % model.config.vocab_size
        return tokens

    monkeypatch.setitem(REFERENCES["qwen2"], "transformers", dataclasses.replace(reference, generate=generate))
    record = quick("qwen2.5-tiny", compare="transformers", new_tokens=3, layers=1, memory=False, flops=False)
    assert record["reference"]["same_greedy_tokens"] is False


# ---------------------------------------------------------------------------------------------------
# FLOPs of recurrent blocks, counted by the bench as the analytic formulas give them


@pytest.mark.parametrize("model, directions", [("mambablock-tiny", 1), ("mambablock-v2-tiny", 2)])
def test_bench_flops_of_a_mamba_block(block_families, model, directions):
    batch = 2
    record = quick(model, batch=batch, memory=False)
    mixer = torch.nn.Module()
    from tests.eval.blocks import MambaBlock

    mixer = MambaBlock(get_entry(model).config).mixer
    tokens = batch * LENGTH
    scan = selective_scan_flops(batch, mixer.d_inner, LENGTH, mixer.d_state, has_D=True, has_z=True,
                                has_delta_bias=True, delta_softplus=True)
    linear = linear_flops(tokens, mixer.in_proj) + linear_flops(tokens, mixer.out_proj)
    linear += directions * (linear_flops(tokens, mixer.x_proj) + linear_flops(tokens, mixer.dt_proj))
    conv = directions * depthwise_conv_flops(batch, LENGTH, mixer.conv1d)
    counted = record["implementations"]["zoo"]["flops"]["forward"]
    assert scan > 0 and counted == directions * scan + linear + conv


def test_bench_flops_of_a_gla_block(block_families):
    batch = 3
    record = quick("glablock-tiny", batch=batch, memory=False)
    config = get_entry("glablock-tiny").config
    tokens = batch * LENGTH
    projections = 2 * tokens * WIDTH * config.heads * (3 * config.key_dim + config.value_dim)  # q, k, g; v
    output = 2 * tokens * config.heads * config.value_dim * WIDTH
    gla = gated_linear_attention_flops(batch, config.heads, LENGTH, config.key_dim, config.value_dim)
    assert gla > 0 and record["implementations"]["zoo"]["flops"]["forward"] == gla + projections + output


# ---------------------------------------------------------------------------------------------------
# bad input


def test_unknown_reference_lists_the_families_references():
    with pytest.raises(ConfigError, match="'lowformer' models have no reference 'diffusers'. References for "
                                          "lowformer: timm"):
        quick("lowformer-tiny", compare="diffusers")
    with pytest.raises(ConfigError, match="References for toy: none yet"):
        quick("toy-tiny", compare="timm")


@pytest.mark.parametrize("family, reference, package", [("lowformer", "timm", "timm"),
                                                        ("wan", "diffusers", "diffusers"),
                                                        ("wavemix", "wavemix", "wavemix.classification")])
def test_missing_reference_package(monkeypatch, family, reference, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(MissingPackageError, match=f"pip install {reference}"):
        get_reference(family, reference).require()


def test_missing_package_is_one_line_on_the_cli(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main(["bench", "lowformer-tiny", "--compare", "timm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo bench: error: --compare timm runs timm lowformer") and "\n" not in err


@pytest.mark.parametrize("spec, message", [
    (["nope=3x4"], "'toy-tiny' has no input 'nope'; its inputs: x \\(B, 8\\) float32"),
    (["x=8x8"], "input x has 1 dimensions besides the batch"),
    (["x=9"], "'toy-tiny' cannot take the input x 9 \\(custom\\): RuntimeError"),
    (["3x0"], "give NAME=SHAPE"),
    (["x=big"], "give NAME=SHAPE"),
])
def test_input_the_model_cannot_take(spec, message):
    with pytest.raises(InputError, match=message):
        quick("toy-tiny", input=spec)


def test_input_errors_of_families_with_several_inputs():
    with pytest.raises(InputError, match="takes several inputs"):
        quick("wan-tiny", input=["16x2x8x8"])
    with pytest.raises(InputError, match="cannot hold the 8 <image> tokens of 2 tile"):
        quick("smolvlm-tiny", input=["pixel_values=2x3x64x64", "input_ids=6"])
    with pytest.raises(InputError, match="'smolvlm-tiny' cannot take the input"):
        quick("smolvlm-tiny", input=["pixel_values=1x3x48x48", "input_ids=12"])


def test_other_bad_options():
    with pytest.raises(ConfigError, match="--layers does not apply to 'lowformer'"):
        quick("lowformer-tiny", layers=2)
    with pytest.raises(ConfigError, match="--dtype must be one of float32, bfloat16, float16 .*got 'float64'"):
        quick("toy-tiny", dtype="float64")
    with pytest.raises(ConfigError, match="no field"):
        quick("toy-tiny", model_options={"nope": 1})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            quick("toy-tiny", device="cuda")


def test_cli_argument_errors(capsys):
    assert main(["bench"]) == 2
    assert main(["bench", "toy-tiny", "--all"]) == 2
    assert main(["bench", "toy-tiny", "--tiny"]) == 2
    assert main(["bench", "toy-tiny", "--model-options", "[1]"]) == 2
    err = capsys.readouterr().err
    assert "Give a model to benchmark" in err and "takes a JSON mapping" in err


# ---------------------------------------------------------------------------------------------------
# inputs and the timing harness


def test_input_presets_and_overrides():
    wan = get_entry("wan2.1-t2v-1.3b")
    small = make_inputs(wan, wan.config, 1, device="cpu")
    assert small.preset == "small" and small.shapes["hidden_states"] == (16, 5, 16, 24)
    assert small.shapes["encoder_hidden_states"] == (512, 4096)
    assert 0 <= float(small.kwargs["timestep"]) < 1000
    assert make_inputs(wan, wan.config, 1, ["default"], device="cpu").shapes["hidden_states"] == (16, 21, 60, 104)
    tiny = get_entry("wan-tiny")
    assert make_inputs(tiny, tiny.config, 1, device="cpu").preset == "default"  # already small
    custom = make_inputs(wan, wan.config, 2, ["hidden_states=16x1x4x4"])
    assert custom.preset == "custom" and custom.kwargs["hidden_states"].shape == (2, 16, 1, 4, 4)
    vlm = get_entry("smolvlm-tiny")
    ids = make_inputs(vlm, vlm.config, 2, ["pixel_values=2x3x64x64", "input_ids=20"]).kwargs["input_ids"]
    assert ids.shape == (2, 20) and int((ids == vlm.config.image_token_id).sum()) == 2 * 2 * vlm.config.image_seq_len
    assert parse_input(["small", "x=1x2", "5"]) == ("small", {"x": (1, 2), "": (5,)})


def test_alternate_runs_in_turn_and_reverses():
    calls = []
    samples = timing.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(s.wall) for s in samples.values()] == [3, 3] and all(len(s.cpu) == 3 for s in samples.values())
    capped = timing.alternate({"fast": lambda: None, "slow": timing.Contender(run=lambda: None, repeats=1)}, repeats=4,
                              warmup=0)
    assert len(capped["fast"].wall) == 4 and len(capped["slow"].wall) == 1
    setups = []
    timing.alternate({"s": timing.Contender(setup=lambda: setups.append(1) or (lambda: None))}, repeats=2, warmup=1)
    assert len(setups) == 3


def test_statistics_and_ratios():
    assert timing.percentile([1, 2, 3, 4, 5], 50) == 3 and timing.percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    slow = timing.Samples(wall=[2.0, 4.0, 6.0], cpu=[1.0, 1.0, 1.0])
    fast = timing.Samples(wall=[1.0, 2.0, 2.0], cpu=[0.5, 0.5, 0.5])
    assert timing.ratios(slow, fast) == {"wall": 2.0, "cpu": 2.0, "paired": 2.0}
    assert slow.summary()["wall_p50"] == 4.0


def test_peak_memory_sees_a_large_allocation():
    size_mib = 256
    result = timing.peak_memory(lambda: torch.ones(size_mib * 1024 * 1024 // 4).sum(), "cpu")
    assert result["peak_mib"] > 0 and "RSS" in result["measure"]
    if "reset" in result["measure"]:
        assert result["delta_mib"] > 0.9 * size_mib


def test_micro_benchmarks_use_the_harness(capsys):
    from eval.benchmarks import run_micro

    run_micro("ssm", ["--lengths", "16", "--dim", "4", "--state", "2", "--heads", "1", "--key-dim", "4"])
    out = capsys.readouterr().out
    assert "scan B1 D4 N2 L16" in out and "gla B1 H1 K=V4 L16" in out and "x CPU" in out
    with pytest.raises(ConfigError, match="Unknown micro-benchmark"):
        run_micro("nope")


def test_every_registered_reference_names_its_family():
    from zoo.registry import get_family

    for family, references in REFERENCES.items():
        get_family(family)
        for name, reference in references.items():
            assert reference.name == name and reference.family == family


class _FakeNVML:
    """Stands in for pynvml: a GPU whose energy counter (mJ) advances 250 mJ per read."""

    def __init__(self):
        self.millijoules = 1_000_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        assert handle == "gpu0"
        self.millijoules += 250
        return self.millijoules


def test_energy_per_run_from_the_nvml_counter():
    """The NVML path needs a GPU to run for real; here a stand-in counter checks the bookkeeping: each timed run
    gets the counter's difference in joules, warm-up runs none, and the headline divides by the batch."""
    meter = timing.EnergyMeter(_FakeNVML(), "gpu0")
    samples = timing.alternate({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1, energy=meter)
    assert [s.energy for s in samples.values()] == [[0.25] * 3, [0.25] * 3]
    assert samples["a"].summary()["energy_j"] == 0.25
    assert timing.EnergyMeter.open("cpu") is None
    phases = {"forward": {**samples["a"].summary()}}
    assert headline("backbone", {"phases": phases}, batch=4)["energy_j_per_sample"] == pytest.approx(0.0625)
