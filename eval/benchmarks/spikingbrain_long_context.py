"""Long-context prefill and decoding: SpikingBrain's GLA/SWA hybrid against transformers' Qwen2 (full attention), at
the 7B layer width (hidden 3584, 28 query and 4 key/value heads, FFN 18944) with 2 layers, on the CPU.

Both models hold the same tensors (q/k/v/o, MLP, norms, embeddings): zoo's layer 0 is GLA (plus its gate and
g_norm), layer 1 SWA with the 4096-key window; transformers' are two full-attention Qwen2 layers. The vocabulary is
cut to 1024 tokens (the LM head is not what differs); `--ffn` narrows the MLP of both models alike, so that the
CPU time goes to the attention layers, which are what differs (the 7B FFN costs both models the same time per
token, linear in the context). Each context is prefilled in chunks of `--chunk` tokens through
each model's own cache (zoo's SpikingBrainCache, transformers' DynamicCache) so that the MLP's activations fit in
memory; then `--decode-steps` tokens are decoded one at a time. `--decode-only` contexts measure decoding alone, from
caches filled with random values as a prefill of that length would leave them (their values do not change the time
or memory of a step), so long contexts cost no prefill. The two models run alternately in one process
(order reversed every other round); times are medians (wall and process CPU), memory is the process's peak
resident set above the one before the call (`eval.timing.peak_memory`: the call's working memory, weights
excluded) and the bytes each cache holds. The machine is shared: read the ratios, not the absolute times.

    flock /tmp/zoo-heavy.lock python -m eval.benchmarks.spikingbrain_long_context --contexts 1024 4096 16384 65536
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from eval.benchmarks import header
from eval.timing import peak_memory
from zoo.backbones.spikingbrain import SpikingBrainConfig, SpikingBrainForCausalLM

RESULTS = Path(__file__).resolve().parents[1] / "results"
VOCAB = 1024


def build_models(
    layers: int = 2, window: int = 4096, ffn: int = 18944
) -> tuple[SpikingBrainForCausalLM, torch.nn.Module]:
    """transformers' Qwen2ForCausalLM at the 7B width (FFN width `ffn`) and a SpikingBrain model sharing its tensors."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    reference = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=3584, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, attn_implementation="sdpa",
    )).eval()
    config = SpikingBrainConfig(vocab_size=VOCAB, intermediate_size=ffn, num_hidden_layers=layers,
                                attn_layers=tuple(range(1, layers, 2)), sliding_window=window)
    with torch.device("meta"):
        model = SpikingBrainForCausalLM(config)
    shared = {}
    for key, tensor in reference.state_dict().items():
        key = key.replace("model.embed_tokens", "model.embeddings").replace(".self_attn.", ".attn.")
        key = key.replace(".input_layernorm.", ".attn_norm.").replace(".post_attention_layernorm.", ".mlp_norm.")
        shared[key] = tensor
    for key, tensor in model.state_dict().items():
        if key not in shared:  # the GLA gate and g_norm
            shared[key] = torch.randn(tensor.shape) * 0.02 if "gk_proj" in key else torch.ones(tensor.shape)
    model.load_state_dict(shared, assign=True)
    return model.eval(), reference


def _cache_bytes(cache) -> int:
    if hasattr(cache, "memory_bytes"):
        return cache.memory_bytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def _prefill(name: str, model, input_ids: torch.Tensor, chunk: int):
    """Prefill `input_ids` chunk by chunk; returns the cache and the last logits."""
    if name == "zoo":
        cache = model.make_cache()
        for start in range(0, input_ids.shape[1], chunk):
            logits = model(input_ids[:, start:start + chunk], cache=cache, logits_to_keep=1)
        return cache, logits
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for start in range(0, input_ids.shape[1], chunk):
        logits = model(input_ids[:, start:start + chunk], past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits
    return cache, logits


def _filled_cache(name: str, model, context: int):
    """The cache a prefill of `context` tokens leaves, filled with random keys, values and states: what they hold does
    not change the time or the memory of a decoding step, and no prefill has to run."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    if name == "zoo":
        cache = model.make_cache()
        for index, layer in enumerate(model.model.layers):
            if layer.is_swa:
                keys = torch.randn(1, kv_heads, min(context, config.sliding_window - 1), head_dim)
                cache.keys[index], cache.values[index] = keys, torch.randn_like(keys)
            else:
                cache.states[index] = torch.randn(1, heads, head_dim, head_dim) * 0.01
        cache.seen = context
        return cache
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for index in range(config.num_hidden_layers):
        keys = torch.randn(1, kv_heads, context, head_dim)
        cache.update(keys, torch.randn_like(keys), index)
    return cache


def _decode_row(name: str, model, cache, steps: int) -> dict:
    """Median wall and CPU time of `steps` decoding steps after a warm-up one, the working memory of one step and the
    bytes the cache holds."""
    token = torch.randint(0, VOCAB, (1, 1))
    _decode(name, model, cache, token)
    memory = peak_memory(lambda: _decode(name, model, cache, token))
    timed = [_timed(lambda: _decode(name, model, cache, token)) for _ in range(steps)]
    return {"decode_wall": [t[1] for t in timed], "decode_cpu": [t[2] for t in timed],
            "decode_delta_mib": memory["delta_mib"], "cache_mib": _cache_bytes(cache) / 2**20}


def _decode(name: str, model, cache, token: torch.Tensor):
    if name == "zoo":
        return model(token, cache=cache, logits_to_keep=1)
    return model(token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


@torch.inference_mode()
def run(contexts: list[int], chunk: int, decode_steps: int, prefill_repeats: int, ffn: int,
        decode_only: list[int] = (), save: Callable[[dict], None] = lambda results: None) -> dict:
    """Measure every context in turn, then decoding alone at the `decode_only` contexts (from filled caches);
    `save(results)` is called after each (a long run keeps what it measured)."""
    models = dict(zip(("zoo", "transformers"), build_models(ffn=ffn)))
    results = {"contexts": {}, "setup": {
        "hidden_size": 3584, "heads": 28, "kv_heads": 4, "ffn": ffn, "layers": 2, "window": 4096, "vocab": VOCAB,
        "chunk": chunk, "decode_steps": decode_steps, "dtype": "float32", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average_start": os.getloadavg()}}
    warm = torch.randint(0, VOCAB, (1, 64))
    for name, model in models.items():
        _prefill(name, model, warm, chunk)
    for context in contexts:
        input_ids = torch.randint(0, VOCAB, (1, context), generator=torch.Generator().manual_seed(context))
        rows = {name: {"prefill_wall": [], "prefill_cpu": [], "prefill_delta_mib": []} for name in models}
        caches = {}
        order = list(models)
        for round_ in range(prefill_repeats):
            for name in order if round_ % 2 == 0 else order[::-1]:
                caches.pop(name, None)
                box = {}
                memory = peak_memory(lambda: box.update(zip(("out", "wall", "cpu"), _timed(
                    lambda: _prefill(name, models[name], input_ids, chunk)))))
                rows[name]["prefill_wall"].append(box["wall"])
                rows[name]["prefill_cpu"].append(box["cpu"])
                rows[name]["prefill_delta_mib"].append(memory["delta_mib"])
                caches[name] = box["out"][0]
        for name in order:
            rows[name].update(_decode_row(name, models[name], caches[name], decode_steps))
        caches.clear()
        summary = {}
        for name, row in rows.items():
            summary[name] = {
                "prefill_s": statistics.median(row["prefill_wall"]),
                "prefill_cpu_s": statistics.median(row["prefill_cpu"]),
                "prefill_delta_mib": max(row["prefill_delta_mib"]),
                "decode_ms": statistics.median(row["decode_wall"]) * 1e3,
                "decode_cpu_ms": statistics.median(row["decode_cpu"]) * 1e3,
                "decode_delta_mib": row["decode_delta_mib"], "cache_mib": row["cache_mib"],
                "prefill_runs": len(row["prefill_wall"]), "raw": row}
        zoo_row, hf_row = summary["zoo"], summary["transformers"]
        summary["ratio"] = {"prefill": hf_row["prefill_s"] / zoo_row["prefill_s"],
                            "prefill_cpu": hf_row["prefill_cpu_s"] / zoo_row["prefill_cpu_s"],
                            "decode": hf_row["decode_ms"] / zoo_row["decode_ms"],
                            "decode_cpu": hf_row["decode_cpu_ms"] / zoo_row["decode_cpu_ms"]}
        results["contexts"][str(context)] = summary
        print(f"{context:6d} tokens: prefill zoo {zoo_row['prefill_s']:8.2f} s  transformers "
              f"{hf_row['prefill_s']:8.2f} s "
              f"({summary['ratio']['prefill']:.2f}x, CPU {summary['ratio']['prefill_cpu']:.2f}x) | peak +MiB zoo "
              f"{zoo_row['prefill_delta_mib']:7.0f} transformers {hf_row['prefill_delta_mib']:7.0f} | decode zoo "
              f"{zoo_row['decode_ms']:7.1f} ms transformers {hf_row['decode_ms']:7.1f} ms "
              f"({summary['ratio']['decode']:.2f}x) | cache MiB zoo {zoo_row['cache_mib']:.1f} transformers "
              f"{hf_row['cache_mib']:.1f} | decode +MiB zoo {zoo_row['decode_delta_mib']:.0f} transformers "
              f"{hf_row['decode_delta_mib']:.0f}", flush=True)
        save(results)
    results["decode_only"] = {}
    for context in decode_only:
        row = {name: _decode_row(name, model, _filled_cache(name, model, context), decode_steps)
               for name, model in models.items()}
        for value in row.values():
            value["decode_ms"] = statistics.median(value["decode_wall"]) * 1e3
            value["decode_cpu_ms"] = statistics.median(value["decode_cpu"]) * 1e3
        row["ratio"] = {"decode": row["transformers"]["decode_ms"] / row["zoo"]["decode_ms"],
                        "decode_cpu": row["transformers"]["decode_cpu_ms"] / row["zoo"]["decode_cpu_ms"]}
        results["decode_only"][str(context)] = row
        print(f"{context:6d} tokens (decode only, filled cache): decode zoo {row['zoo']['decode_ms']:7.1f} ms "
              f"transformers {row['transformers']['decode_ms']:7.1f} ms ({row['ratio']['decode']:.2f}x, CPU "
              f"{row['ratio']['decode_cpu']:.2f}x) | cache MiB zoo {row['zoo']['cache_mib']:.1f} transformers "
              f"{row['transformers']['cache_mib']:.1f} | decode +MiB zoo {row['zoo']['decode_delta_mib']:.0f} "
              f"transformers {row['transformers']['decode_delta_mib']:.0f}", flush=True)
        save(results)
    results["setup"]["load_average_end"] = os.getloadavg()
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = [int(c) for c in results["contexts"]]
    rows = [results["contexts"][str(c)] for c in contexts]
    figure, axes = plt.subplots(1, 4, figsize=(20, 4))
    panels = (("prefill_s", "prefill time (s)"), ("prefill_delta_mib", "prefill peak memory above weights (MiB)"),
              ("decode_ms", "decode time per token (ms)"), ("cache_mib", "cache held while decoding (MiB)"))
    decode_only = {int(c): row for c, row in results.get("decode_only", {}).items()}
    for axis, (key, label) in zip(axes, panels):
        for name, style in (("zoo", "o-"), ("transformers", "s--")):
            shown = "SpikingBrain (zoo, GLA + SWA)" if name == "zoo" else "Qwen2 (transformers, full attention)"
            axis.plot(contexts, [row[name][key] for row in rows], style, label=shown)
            if key in ("decode_ms", "cache_mib") and decode_only:
                axis.plot(list(decode_only), [row[name][key] for row in decode_only.values()], style[0],
                          fillstyle="none", color=axis.lines[-1].get_color(),
                          label=f"{shown.split(' (')[0]}, filled cache (no prefill)")
        axis.set_xscale("log", base=2)
        if key == "prefill_s":
            axis.set_yscale("log")
        axis.set_xlabel("context (tokens)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    if decode_only:
        axes[2].legend(fontsize=7)
    setup = results["setup"]
    figure.suptitle(f"hidden 3584, 28/4 heads, FFN {setup['ffn']}, 2 layers, fp32, CPU, {setup['threads']} threads "
                    f"(shared machine)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--decode-steps", type=int, default=5)
    parser.add_argument("--prefill-repeats", type=int, default=1)
    parser.add_argument("--decode-only", type=int, nargs="*", default=[],
                        help="contexts at which only decoding is measured, from caches filled with random values")
    parser.add_argument("--ffn", type=int, default=18944,
                        help="MLP width (the same in both models; a narrow one leaves the attention layers' costs)")
    parser.add_argument("--out", type=Path, default=RESULTS / "spikingbrain-long-context-cpu-float32.json")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="measure nothing: write --out and its plot from these runs' results (later runs win)")
    args = parser.parse_args(argv)
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        merged = {"setup": {**runs[0]["setup"], "runs": {str(p): r["setup"] for p, r in zip(args.merge, runs)}},
                  "contexts": {}, "decode_only": {}}
        for run_results in runs:
            merged["contexts"].update(run_results["contexts"])
            merged["decode_only"].update(run_results.get("decode_only", {}))
        merged["contexts"] = dict(sorted(merged["contexts"].items(), key=lambda item: int(item[0])))
        args.out.write_text(json.dumps(merged, indent=1))
        plot(merged, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
        return
    print(header())
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(results: dict) -> None:
        args.out.write_text(json.dumps(results, indent=1))
        plot(results, args.out.with_suffix(".png"))

    save(run(args.contexts, args.chunk, args.decode_steps, args.prefill_repeats, args.ffn, args.decode_only, save))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
