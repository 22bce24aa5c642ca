"""SmolVLM-256M on CPU, zoo vs transformers, same random weights, in one process.

Prefill: one 512x512 tile (64 image tokens) plus 32 text tokens. Decode: greedy tokens per second over 64
new tokens, from (time for 64 new tokens - time for 1) / 63 so that prefill is excluded. Runs alternate
between the two implementations after a warm-up; medians are reported.

    python -m eval.benchmarks.smolvlm [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import zoo
from zoo.registry import get_entry
from zoo.vlm.smolvlm import TRANSFORMERS


def _reference_model(config):
    import transformers

    vision = {k: getattr(config.vision, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                      "num_attention_heads", "image_size", "patch_size")}
    text = {k: getattr(config.text, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                  "rms_norm_eps", "max_position_embeddings")}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": config.text.rope_theta}
    reference_config = transformers.SmolVLMConfig(
        vision_config=vision, text_config=dict(model_type="llama", **text), scale_factor=config.scale_factor,
        image_token_id=config.image_token_id,
    )
    return transformers.SmolVLMForConditionalGeneration(reference_config).eval()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = get_entry("smolvlm-256m").config
    reference = _reference_model(config)
    model = zoo.registry.get_family("smolvlm").model_cls(config).eval()
    model.load_state_dict(TRANSFORMERS.convert_state_dict(reference.state_dict(), config))

    text = torch.randint(0, config.image_token_id, (1, 32))
    input_ids = torch.cat([text[:, :16], torch.full((1, config.image_seq_len), config.image_token_id), text[:, 16:]], 1)
    pixel_values = torch.randn(1, 1, 3, config.vision.image_size, config.vision.image_size)
    inputs = {"input_ids": input_ids, "pixel_values": pixel_values}

    def reference_generate(n: int):
        return reference.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)

    cases = {
        "prefill": (lambda: reference(**inputs), lambda: model(**inputs, logits_to_keep=1)),
        f"generate {args.new_tokens}": (lambda: reference_generate(args.new_tokens),
                                        lambda: model.generate(**inputs, max_new_tokens=args.new_tokens,
                                                               cache="static")),
        "generate 1": (lambda: reference_generate(1), lambda: model.generate(**inputs, max_new_tokens=1,
                                                                               cache="static")),
    }
    with torch.inference_mode():
        assert torch.equal(reference_generate(8), model.generate(**inputs, max_new_tokens=8, cache="static"))
        times = {case: ([], []) for case in cases}
        for repeat in range(args.repeats + 1):
            for case, (reference_fn, zoo_fn) in cases.items():
                ref_t, zoo_t = _timed(reference_fn), _timed(zoo_fn)
                if repeat:  # the first round is warm-up
                    times[case][0].append(ref_t)
                    times[case][1].append(zoo_t)
    median = {case: (statistics.median(r), statistics.median(z)) for case, (r, z) in times.items()}
    decode = [(median[f"generate {args.new_tokens}"][i] - median["generate 1"][i]) / (args.new_tokens - 1)
              for i in (0, 1)]
    print(f"SmolVLM-256M, random weights, fp32, CPU, {args.threads} threads, medians of {args.repeats}")
    print(f"{'':>12} {'transformers':>14} {'zoo':>10} {'ratio':>8}")
    ref_prefill, zoo_prefill = median["prefill"]
    print(f"{'prefill':>12} {ref_prefill * 1e3:>11.1f} ms {zoo_prefill * 1e3:>7.1f} ms {ref_prefill / zoo_prefill:>7.2f}x")
    print(f"{'decode':>12} {1 / decode[0]:>8.1f} tok/s {1 / decode[1]:>5.1f} tok/s {decode[0] / decode[1]:>7.2f}x")


if __name__ == "__main__":
    main()
