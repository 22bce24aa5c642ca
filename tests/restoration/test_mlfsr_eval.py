"""The BasicLFSR-style evaluation: per-view PSNR/SSIM averaged over views, then scenes, per dataset folder."""

import json

import h5py
import numpy as np
import torch

import zoo
from eval.benchmarks.mlfsr_eval import evaluate_scenes, main
from eval.metrics import light_field_psnr_ssim
from zoo.data.lightfield import SyntheticLightFields


def test_evaluates_basiclfsr_test_folders(tmp_path):
    scenes = SyntheticLightFields(3, image_size=5 * 24, scale=2, split="test")
    for i, dataset in enumerate(["EPFL", "EPFL", "HCI_new"]):
        (tmp_path / "SR_5x5_2x" / dataset).mkdir(parents=True, exist_ok=True)
        item = scenes[i]
        with h5py.File(tmp_path / "SR_5x5_2x" / dataset / f"scene{i}.h5", "w") as file:
            file.create_dataset("Lr_SAI_y", data=item["degraded"][0].numpy().T)
            file.create_dataset("Hr_SAI_y", data=item["clean"][0].numpy().T)
            file.create_dataset("Sr_SAI_cbcr", data=np.zeros((2, 120, 120), dtype="single"))
    out = tmp_path / "results.json"
    main(["mlfsr-tiny", "--data", str(tmp_path / "SR_5x5_2x"), "--output", str(out)])
    results = json.loads(out.read_text())["results"]
    assert results["EPFL"]["scenes"] == 2 and results["HCI_new"]["scenes"] == 1
    torch.manual_seed(0)
    model = zoo.create("mlfsr-tiny").eval()
    psnrs = []
    for i in (0, 1):
        with torch.no_grad():
            sr = model(scenes[i]["degraded"][None]).clamp(0, 1)
        psnrs.append(float(light_field_psnr_ssim(sr, scenes[i]["clean"][None], 5)[0]))
    direct = evaluate_scenes(model, [scenes[0], scenes[1]])
    assert abs(direct["psnr"] - np.mean(psnrs)) < 1e-4
    # main built the same random model (the test's seed): the same numbers, the bicubic row included
    assert abs(results["EPFL"]["psnr"] - direct["psnr"]) < 1e-4
    assert abs(results["EPFL"]["bicubic_psnr"] - direct["bicubic_psnr"]) < 1e-4
