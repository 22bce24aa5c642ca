"""Evaluation, metrics and the efficiency benchmark: `zoo eval` and `zoo bench`.

    eval.metrics      top-k, PSNR / SSIM (RGB and Y, border crop), Fréchet distance, CLIP score, VQA EM, ANLS
    eval.evaluate     the evaluation loop over zoo.data's datasets with train.tasks' tasks (`zoo eval`)
    eval.bench        params, FLOPs, latency, throughput, memory, TTFT/TPOT, s/step, energy (`zoo bench`)
    eval.references   reference implementations at the same config and weights (`zoo bench --compare`)
    eval.inputs       benchmark inputs: the registered default, a CPU-sized preset, or `--input` shapes
    eval.timing       the one timing harness: alternating contenders, warm-up, wall and CPU clocks, memory, energy
    eval.report       terminal report, CSV / JSON, plots and the README table
    eval.benchmarks   layer micro-benchmarks (`zoo bench --micro attention|ssm`)
"""
