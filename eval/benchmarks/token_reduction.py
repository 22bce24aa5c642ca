"""Prefill FLOPs, KV-cache bytes and TTFT of each visual token reduction setting, side by side in one run.

    python -m eval.benchmarks.token_reduction --threads 2 --out eval/results/token_reduction-tiny-cpu.json

For each family (SmolVLM, LLaVA-Mini, Hulu-Med) and each method and budget it supports, with the same random weights
and inputs: the prefill FLOPs (`FlopCounterMode` on `generate(max_new_tokens=1)`, 2 x MAC, as `zoo bench`'s
"ttft"), the KV cache after the prefill (bytes, `eval.bench.prefill_cache_bytes`) and TTFT, every setting timed in
alternation with the unreduced one (`eval.timing.alternate`: medians and ratios, never a lone time). The models are
small random configs sized for a shared CPU (SmolVLM: 5 tiles of 64 tokens; LLaVA-Mini: 576 CLIP patches per image;
Hulu-Med: a 24 x 24-token image), so the numbers describe these configs, not the published sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from eval.bench import count_call_flops, prefill_cache_bytes
from eval.system import machine_info
from eval.timing import alternate, ratios
from zoo.backbones.clip import CLIPVisionConfig
from zoo.backbones.llama import LlamaConfig, LlamaLMConfig
from zoo.backbones.navit import NaViTSiglipConfig
from zoo.backbones.siglip import SiglipVisionConfig
from zoo.vlm.hulumed import HuluMed, HuluMedConfig
from zoo.vlm.llavamini import LlavaMini, LlavaMiniConfig
from zoo.vlm.smolvlm import SmolVLM, SmolVLMConfig
from zoo.vlm.token_reduction import TokenReduction

BUDGETS = (0.5, 0.25, 0.1)
DECODER = dict(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=4096)


def _smolvlm(generator: torch.Generator) -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    config = SmolVLMConfig(
        vision=SiglipVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=256, patch_size=16),
        text=LlamaConfig(**DECODER), scale_factor=2, image_token_id=500, pad_token_id=0)
    tiles, text = 5, torch.randint(1, 500, (16,), generator=generator)
    ids = torch.cat([text[:8], torch.full((tiles * config.image_seq_len,), 500), text[8:]])[None]
    inputs = dict(input_ids=ids, pixel_values=torch.randn(1, tiles, 3, 256, 256, generator=generator))
    return SmolVLM(config), inputs, ["pool", "bilinear", "attention", "merge", "fastv"]


def _llavamini(generator: torch.Generator) -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    config = LlavaMiniConfig(
        vision=CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                                image_size=336, patch_size=14),
        text=LlamaConfig(**DECODER), vision_tower="", compressor_size=1, prefusion_layer_num=4)
    text = torch.randint(1, 500, (16,), generator=generator)
    ids = torch.cat([text[:8], torch.tensor([-200]), text[8:]])[None]
    inputs = dict(input_ids=ids, images=torch.randn(1, 1, 3, 336, 336, generator=generator))
    return LlavaMini(config), inputs, ["pool", "bilinear", "attention", "merge"]


def _hulumed(generator: torch.Generator) -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    config = HuluMedConfig(
        vision=NaViTSiglipConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                 patch_size=14),
        text=LlamaLMConfig(**DECODER, qkv_bias=True), image_token_index=500, pad_token_id=0)
    text = torch.randint(1, 500, (16,), generator=generator)
    ids = torch.cat([text[:8], torch.full((24 * 24,), 500), text[8:]])[None]
    inputs = dict(input_ids=ids, pixel_values=torch.randn(24 * 24, 3 * 14 * 14, generator=generator),
                  grid_sizes=torch.tensor([[1, 24, 24]]), merge_sizes=torch.tensor([1]), modals=["image"])
    return HuluMed(config), inputs, ["fastv"]


FAMILIES = {"smolvlm": _smolvlm, "llavamini": _llavamini, "hulumed": _hulumed}


def _settings(methods: list[str]) -> dict[str, TokenReduction | None]:
    settings: dict[str, TokenReduction | None] = {"none": None}
    for method in methods:
        for budget in BUDGETS:
            reduction = TokenReduction(method, budget, layer=2 if method == "fastv" else None)
            settings[reduction.describe()] = reduction
    return settings


def run(family: str, repeats: int, seed: int = 0) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model, inputs, methods = FAMILIES[family](generator)
    # no parameter needs a gradient: FlopCounterMode's module tracker then hooks none (LLaVA-Mini's compressor
    # query otherwise trips it under inference mode)
    model.eval().requires_grad_(False)
    settings = _settings(methods)
    calls = {name: (lambda reduction=reduction: model.generate(**inputs, max_new_tokens=1, token_reduction=reduction))
             for name, reduction in settings.items()}
    rows: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        for name, reduction in settings.items():
            rows[name] = {"prefill_flops": count_call_flops(model, calls[name]),
                          "kv_cache_bytes": prefill_cache_bytes(model, {**inputs, "token_reduction": reduction})}
        samples = alternate(calls, repeats=repeats, warmup=1)
    for name, row in rows.items():
        row["ttft_p50_ms"] = samples[name].p50 * 1e3
        row["ttft_speedup_vs_none"] = ratios(samples["none"], samples[name])["paired"]
        row["flops_vs_none"] = row["prefill_flops"] / rows["none"]["prefill_flops"]
        row["kv_vs_none"] = row["kv_cache_bytes"] / rows["none"]["kv_cache_bytes"]
    return {"family": family, "params": sum(p.numel() for p in model.parameters()), "settings": rows}


def format_result(result: dict[str, Any]) -> str:
    lines = [f"{result['family']} ({result['params'] / 1e6:.1f}M params, random weights)",
             f"{'setting':24s} {'prefill GFLOP':>13s} {'x none':>7s} {'KV KiB':>8s} {'x none':>7s} "
             f"{'TTFT ms':>8s} {'speed-up':>8s}"]
    for name, row in result["settings"].items():
        lines.append(f"{name:24s} {row['prefill_flops'] / 1e9:13.3f} {row['flops_vs_none']:7.3f} "
                     f"{row['kv_cache_bytes'] / 1024:8.1f} {row['kv_vs_none']:7.3f} {row['ttft_p50_ms']:8.1f} "
                     f"{row['ttft_speedup_vs_none']:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run(family, args.repeats) for family in args.families]
    for result in results:
        print(format_result(result), end="\n\n", flush=True)
    if args.out:
        record = {"machine": machine_info("cpu"), "threads": torch.get_num_threads(), "results": results,
                  "timing": "TTFT medians; every setting alternated with 'none' in the same run (shared CPU)"}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        args.out.with_suffix(".txt").write_text("\n\n".join(format_result(r) for r in results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
