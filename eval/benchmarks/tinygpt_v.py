"""TinyGPT-V at the published widths on CPU against the transformers-pieces oracle (the parity tests' reference).

Two phases, each timed by alternating the contenders in one process after warm-up (eval.timing), medians reported:

1. image encoding at 224 px: zoo's EVA ViT-g (39 layers) + ln_vision + Q-Former (32 queries) + the two projections
   against transformers' Blip2VisionModel + Blip2QFormerModel + two nn.Linear, sharing zoo's weight tensors;
2. prefill + 64 greedy tokens after a prompt of 32 image embeddings and text, with Phi-2's widths (2560, vocab
   51200) cut to 2 layers: zoo eager (static cache) and zoo compiled (`compile=True`) against transformers'
   PhiForCausalLM(qk_layernorm=True) with an RMSNorm wrapped around each attention output, `generate` with its KV
   cache, fed the same image embeddings and weights; every timed run's tokens are checked equal. The prompt alone
   (prefill and the first token) is timed too, so that the time per decoded token is the difference of the medians
   over the 63 later tokens.

Weights are random (zoo's initialisation, norms and biases perturbed); timings do not depend on their values.
Run under the shared lock:
    flock /tmp/zoo-heavy.lock python -m eval.benchmarks.tinygpt_v [--part image|decoding|all] [--repeats 9]
About 4.5 GB of memory at peak (the ViT-g in float32, shared by both contenders).
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
from torch import nn

from eval.benchmarks import header, report_pair
from eval.system import load_average, machine_info
from eval.timing import alternate, ratios
from zoo.vlm.tinygpt_v import TinyGPTV, TinyGPTVConfig

RESULTS = Path(__file__).resolve().parents[1] / "results"
NEW_TOKENS = 64


def _perturb(module: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name or name.endswith("bias") or "query_tokens" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def _assign(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """`module` (built on meta) holding the given tensors themselves: both contenders read one copy of the weights."""
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval()


@torch.inference_mode()
def bench_image_encoding(published: TinyGPTVConfig, repeats: int, warmup: int) -> dict:
    import transformers

    config = published.replace(vision={"image_size": 224}, text={"num_hidden_layers": 1, "vocab_size": 64},
                               image_token_id=1, pad_token_id=0)
    model = TinyGPTV(config).eval()
    _perturb(model)
    v = config.vision
    with torch.device("meta"):
        vision = transformers.Blip2VisionModel(transformers.Blip2VisionConfig(
            hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
            layer_norm_eps=v.layer_norm_eps))
        q = config.qformer
        qformer = transformers.Blip2QFormerModel(transformers.Blip2QFormerConfig(
            hidden_size=q.hidden_size, num_hidden_layers=q.num_hidden_layers, num_attention_heads=q.num_attention_heads,
            intermediate_size=q.intermediate_size, encoder_hidden_size=q.encoder_hidden_size,
            layer_norm_eps=q.layer_norm_eps, cross_attention_frequency=q.cross_attention_frequency))
        proj = nn.Linear(q.hidden_size, config.projection_size)
        proj2 = nn.Linear(config.projection_size, config.text.hidden_size)
    ours = model.vision_model.state_dict()
    hf_vision = {}
    for key, value in ours.items():
        key = key.replace("embeddings.patch_embedding.proj.", "embeddings.patch_embedding.")
        if key.endswith(".q_bias"):
            v_bias = ours[key.replace("q_bias", "v_bias")]
            hf_vision[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
        elif not key.endswith(".v_bias"):
            hf_vision[key] = value
    _assign(vision, hf_vision)
    renames = [(".self_attn_norm.", ".attention.output.LayerNorm."), (".self_attn.o_proj.", ".attention.output.dense."),
               (".self_attn.q_proj.", ".attention.attention.query."),
               (".self_attn.k_proj.", ".attention.attention.key."),
               (".self_attn.v_proj.", ".attention.attention.value."),
               (".cross_attn_norm.", ".crossattention.output.LayerNorm."),
               (".cross_attn.o_proj.", ".crossattention.output.dense."),
               (".cross_attn.q_proj.", ".crossattention.attention.query."),
               (".cross_attn.k_proj.", ".crossattention.attention.key."),
               (".cross_attn.v_proj.", ".crossattention.attention.value."),
               (".mlp.fc1.", ".intermediate_query.dense."), (".mlp.fc2.", ".output_query.dense."),
               (".mlp_norm.", ".output_query.LayerNorm."), ("layers.", "encoder.layer.")]
    hf_qformer = {}
    for key, value in model.qformer.state_dict().items():
        for old, new in renames:
            key = key.replace(old, new)
        hf_qformer[key] = value
    _assign(qformer, hf_qformer)
    _assign(proj, model.llama_proj.state_dict())
    _assign(proj2, model.llama_proj2.state_dict())
    pixels = torch.randn(1, 3, v.image_size, v.image_size, generator=torch.Generator().manual_seed(1))

    def reference() -> torch.Tensor:
        image = vision(pixels).last_hidden_state
        queries = qformer(query_embeds=model.query_tokens, encoder_hidden_states=image).last_hidden_state
        return proj2(proj(queries))

    difference = (reference() - model.image_features(pixels)).abs().max().item()
    samples = alternate({"zoo": lambda: model.image_features(pixels), "transformers": reference}, repeats, warmup)
    report_pair("image encoding 224 px (ViT-g, Q-Former)", samples)
    return {"max_abs_diff": difference, "zoo": samples["zoo"].summary(),
            "transformers": samples["transformers"].summary(),
            "speedup": ratios(samples["transformers"], samples["zoo"])}


class _AttentionRMSNorm(nn.Module):
    def __init__(self, attention: nn.Module, norm: nn.Module):
        super().__init__()
        self.attention, self.norm = attention, norm

    def forward(self, **kwargs):
        output, weights = self.attention(**kwargs)
        return self.norm(output), weights


def decoding_contenders(published: TinyGPTVConfig) -> tuple[dict, dict]:
    """zoo's TinyGPT-V (2 Phi layers at the published widths) and transformers' PhiForCausalLM holding the same
    weights, and the prompt: returns ({"transformers", "zoo", "zoo-compiled"}: prefill + decode callables giving the
    new tokens, {"model", "phi", "prompt"})."""
    import transformers

    config = published.replace(
        vision={"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1},
        qformer={"encoder_hidden_size": 64, "num_hidden_layers": 1}, text={"num_hidden_layers": 2})
    model = TinyGPTV(config).eval()  # the vision tower is unused: the contenders get the same image embeddings
    _perturb(model.language_model)
    text = config.text
    with torch.device("meta"):
        phi = transformers.PhiForCausalLM(transformers.PhiConfig(
            vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
            partial_rotary_factor=text.partial_rotary_factor, qk_layernorm=True, pad_token_id=config.pad_token_id))
    state = {}
    for key, value in model.language_model.state_dict().items():
        key = (key.replace(".self_attn.o_proj.", ".self_attn.dense.").replace(".q_norm.", ".q_layernorm.")
               .replace(".k_norm.", ".k_layernorm."))
        if ".post_layernorm." not in key:
            state[key] = value
    _assign(phi, state)
    phi.model.rotary_emb = type(phi.model.rotary_emb)(config=phi.config)  # its non-persistent table, off meta
    for layer, ours in zip(phi.model.layers, model.language_model.model.layers):
        layer.self_attn = _AttentionRMSNorm(layer.self_attn, ours.post_layernorm)  # zoo's RMSNorm: same formula
    phi.generation_config.eos_token_id = None
    generator = torch.Generator().manual_seed(2)
    queries = config.num_query_tokens
    image_embeds = torch.randn(1, queries, text.hidden_size, generator=generator)
    ids = torch.randint(0, min(config.image_token_id, config.pad_token_id), (1, queries + 8), generator=generator)
    ids[0, 4:4 + queries] = config.image_token_id
    prompt = {"input_ids": ids, "image_embeds": image_embeds}

    def reference(new_tokens: int | None = None) -> torch.Tensor:
        embeds = phi.model.embed_tokens(ids).masked_scatter((ids == config.image_token_id)[..., None], image_embeds)
        return phi.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                            max_new_tokens=new_tokens or NEW_TOKENS, do_sample=False)

    def eager(new_tokens: int | None = None) -> torch.Tensor:
        return model.generate(**prompt, max_new_tokens=new_tokens or NEW_TOKENS, cache="static")[:, ids.shape[1]:]

    def compiled() -> torch.Tensor:
        return model.generate(**prompt, max_new_tokens=NEW_TOKENS, cache="static", compile=True)[:, ids.shape[1]:]

    return ({"transformers": reference, "zoo": eager, "zoo-compiled": compiled},
            {"model": model, "phi": phi, "prompt": prompt,
             "prefill": {"transformers": lambda: reference(1), "zoo": lambda: eager(1)}})


@torch.inference_mode()
def bench_decoding(published: TinyGPTVConfig, repeats: int, warmup: int) -> dict:
    runs, parts = decoding_contenders(published)
    ids = parts["prompt"]["input_ids"]
    expected = runs["transformers"]()
    for name in ("zoo", "zoo-compiled"):  # the compiled one compiles here
        if not torch.equal(runs[name](), expected):
            raise RuntimeError(f"{name} decoding gave other tokens than transformers")
    checked = {}

    def checking(name, run):
        def timed():
            checked[name] = torch.equal(run(), expected)
        return timed

    samples = alternate({name: checking(name, runs[name]) for name in ("zoo-compiled", "zoo", "transformers")},
                        repeats, warmup)
    if not all(checked.values()):
        raise RuntimeError(f"a timed run gave other tokens: {checked}")
    # The prompt alone (prefill and the first token), so that the decoding share can be read off: the
    # difference of the medians over NEW_TOKENS - 1 steps is the time per decoded token.
    prefill = alternate({name: parts["prefill"][name] for name in ("zoo", "transformers")}, repeats, warmup)
    for ours in ("zoo", "zoo-compiled"):
        report_pair(f"prefill {ids.shape[1]} + decode {NEW_TOKENS} ({ours})", {ours: samples[ours],
                                                                  "transformers": samples["transformers"]})
    report_pair(f"prefill {ids.shape[1]} + 1 token", {"zoo": prefill["zoo"], "transformers": prefill["transformers"]})
    per_token = {name: (samples[name].p50 - prefill[name.removesuffix("-compiled")].p50) / (NEW_TOKENS - 1)
                 for name in samples}
    print(f"per decoded token (median total - median prefill) / {NEW_TOKENS - 1}: "
          + ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in per_token.items()))
    return {"tokens_equal": True, "new_tokens": NEW_TOKENS, **{name: s.summary() for name, s in samples.items()},
            "prefill_only": {name: s.summary() for name, s in prefill.items()},
            "per_token_s": per_token,
            "speedup_eager": ratios(samples["transformers"], samples["zoo"]),
            "speedup_compiled": ratios(samples["transformers"], samples["zoo-compiled"]),
            "speedup_per_token_eager": per_token["transformers"] / per_token["zoo"],
            "speedup_per_token_compiled": per_token["transformers"] / per_token["zoo-compiled"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--part", choices=("image", "decoding", "all"), default="all")
    parser.add_argument("--out", default=str(RESULTS / "tinygpt_v-cpu.json"), help="where to write the results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header())
    results = {"machine": machine_info("cpu"), "threads": torch.get_num_threads(), "repeats": args.repeats}
    if args.part in ("image", "all"):
        results["image_encoding"] = bench_image_encoding(TinyGPTVConfig(), args.repeats, warmup=1)
        gc.collect()
    if args.part in ("decoding", "all"):
        results["decoding"] = bench_decoding(TinyGPTVConfig(), args.repeats, warmup=1)
    results["load_average_end"] = load_average()
    print(f"load average at the end: {results['load_average_end']}")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
