"""Hulu-Med processor: NIfTI volumes and DICOM series written here, videos through PyAV, token budgets, the chat
template, the think suffix and decode, >5 images as a video, `zoo run`, and clear errors on bad input."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.cli import main
from zoo.errors import InputError
from zoo.vlm.hulumed_processing import (
    THINK_SUFFIX, HuluMedProcessor, build_tokenizer, load_video, read_volume, target_sizes, volume_slices,
)

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def processor():
    return HuluMedProcessor(build_tokenizer())


def _ct_volume(shape=(64, 92, 10), seed=0):
    rng = np.random.default_rng(seed)
    volume = rng.normal(40, 300, size=shape)
    volume[..., 3] = 7.0  # a flat slice
    return volume


def _expected_slice(plane: np.ndarray) -> np.ndarray:
    """The released rule written out: min-max to 0..255, truncated to uint8, black when flat."""
    if plane.max() == plane.min():
        return np.zeros(plane.shape, np.uint8)
    return ((plane - plane.min()) / (plane.max() - plane.min()) * 255.0).astype(np.uint8)


def _write_dicom_series(folder, volume: np.ndarray, slope=2.0, intercept=-1024.0, sizes=None):
    """One CT slice per file, written in reverse instance order, with a rescale slope and intercept."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    count = volume.shape[-1]
    for index in range(count):
        stored = np.round((volume[..., index] - intercept) / slope).astype(np.int16)
        if sizes is not None:
            stored = stored[: sizes[index][0], : sizes[index][1]]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{count - index:03d}.dcm"
        dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        dataset.Modality, dataset.InstanceNumber = "CT", index + 1
        dataset.Rows, dataset.Columns = stored.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
        dataset.PixelData = stored.tobytes()
        dataset.save_as(str(path), enforce_file_format=True)


def test_nifti_volume_gives_the_expected_slices_tokens_and_prompt(processor, tmp_path):
    volume = _ct_volume()
    nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    read = read_volume(tmp_path / "ct.nii.gz")
    assert read.shape == (64, 92, 10) and np.allclose(read, volume.astype(np.float32))

    frames = volume_slices(read, num_slices=4).frames
    assert frames.shape == (4, 3, 64, 92) and frames.dtype == torch.uint8
    for frame, index in zip(frames, [0, 3, 6, 9]):  # np.linspace(0, 9, 4) truncated
        assert torch.equal(frame[0], torch.from_numpy(_expected_slice(read[..., index])))
        assert torch.equal(frame[0], frame[2])
    assert int(frames[1].max()) == 0  # the flat slice is black
    coronal = volume_slices(read, num_slices=3, axis="coronal").frames
    assert coronal.shape == (3, 3, 64, 10) and torch.equal(coronal[2, 0], torch.from_numpy(_expected_slice(read[:, 91])))
    with pytest.raises(InputError, match="slice axis must be"):
        volume_slices(read, axis="oblique")

    conversation = [{"role": "user", "content": [
        {"type": "3d", "3d": {"image_path": str(tmp_path / "ct.nii.gz"), "nii_num_slices": 4, "nii_axis": 2}},
        {"type": "text", "text": "Any lesion?"}]}]
    inputs = processor(conversation=conversation)
    # 64x92 slices: below the 16-patch minimum at factor 28, so both sides grow by sqrt(12544 / 5888): 112 x 140
    assert inputs["grid_sizes"].tolist() == [[4, 8, 10]] and inputs["merge_sizes"].tolist() == [2]
    assert inputs["modals"] == ["video"] and inputs["pixel_values"].shape == (4 * 8 * 10, 3 * 14 * 14)
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    frame = "<image>" * 20
    assert text == f"<|im_start|>user\n{frame},{frame},{frame},{frame}\nAny lesion?<|im_end|>\n<|im_start|>assistant\n"


def test_dicom_series_is_read_in_instance_order_with_rescale(processor, tmp_path):
    volume = np.round(_ct_volume(shape=(30, 44, 5), seed=1) / 2) * 2 - 1024
    _write_dicom_series(tmp_path / "series", volume)
    read = read_volume(tmp_path / "series")
    assert read.shape == (30, 44, 5) and np.allclose(read, volume)
    inputs = processor(conversation=[{"role": "user", "content": [
        {"type": "3d", "3d": str(tmp_path / "series")}, {"type": "text", "text": "?"}]}])
    assert inputs["grid_sizes"][0, 0] == 5 and inputs["modals"] == ["video"]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 5 * (inputs["grid_sizes"][0, 1] // 2) * (
        inputs["grid_sizes"][0, 2] // 2)


def test_bad_volumes_are_clear_errors(processor, tmp_path):
    (tmp_path / "notes.txt").write_text("not a scan")
    with pytest.raises(InputError, match="neither a NIfTI file .* nor a readable DICOM slice"):
        read_volume(tmp_path / "notes.txt")
    volume = _ct_volume(shape=(30, 44, 4))
    _write_dicom_series(tmp_path / "mixed", volume, sizes=[(30, 44), (30, 44), (20, 44), (30, 44)])
    with pytest.raises(InputError, match="mixes slice sizes"):
        read_volume(tmp_path / "mixed")
    with pytest.raises(InputError, match="NIfTI file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    with pytest.raises(InputError, match="volume not found"):
        read_volume(tmp_path / "no-such-folder")


def test_prompt_placeholders_must_match_the_visuals(processor):
    image = np.zeros((56, 84, 3), np.uint8)
    with pytest.raises(InputError, match="2 <image> placeholders but the visuals have 1 images and frames"):
        processor(text="<image><image> what?", images=[("image", image)])
    inputs = processor(text="<image> what?", images=[("image", image)])
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 4 * 6  # merge 1: one token per patch


def test_token_budget_is_shared_by_the_frames_of_a_call():
    # 10 frames of 448x448 at factor 28 within 160 tokens: 16 patches each -> 112 x 112
    assert target_sizes([(10, 448, 448)], [2], max_tokens=160) == [(112, 112)]
    assert target_sizes([(1, 300, 200)], [1]) == [(294, 196)]  # round to multiples of 14
    # mixed merge sizes: every side rounds, or all shrink together above the budget
    assert target_sizes([(1, 300, 200), (2, 100, 100)], [1, 2]) == [(294, 196), (112, 112)]
    assert target_sizes([(1, 1400, 1400), (2, 560, 560)], [1, 2], max_tokens=100) == [(126, 126), (28, 28)]


def test_chat_template_think_suffix_and_decode(processor):
    frames = np.zeros((3, 28, 28, 3), np.uint8)
    conversation = [{"role": "user", "content": [
        {"type": "video", "video": frames, "timestamps": [0.0, 0.5, 1.04]}, {"type": "text", "text": "Which phase?"}]}]
    inputs = processor(conversation=conversation, think=True, add_system_prompt=True)
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    frame = "<image>" * 16  # 28-px frames grow to the 16-patch minimum at factor 28: 112 x 112, 4 x 4 tokens
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        f"<|im_start|>user\nTime 0.0s:{frame},Time 0.5s:{frame},Time 1.0s:{frame}\nWhich phase?\n"
        f"{THINK_SUFFIX}<|im_end|>\n<|im_start|>assistant\n")
    answer = processor.tokenizer("<think>\nstep one\n\n\nstep two</think>\n\nArterial.<|im_end|>",
                                 add_special_tokens=False)["input_ids"]
    assert processor.decode(answer) == "Arterial."
    assert processor.decode(answer, use_think=True).startswith("<think>\nstep one")
    assert processor.batch_decode([answer]) == ["Arterial."]


def test_more_than_five_images_become_one_video(processor):
    images = [np.full((56, 56, 3), 10 * i, np.uint8) for i in range(6)]
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": "Compare."}]
    inputs = processor(conversation=[{"role": "user", "content": content}])
    assert inputs["modals"] == ["video"] and inputs["grid_sizes"].tolist() == [[6, 8, 8]]
    assert inputs["merge_sizes"].tolist() == [2]
    few = processor(conversation=[{"role": "user", "content": content[:5] + content[-1:]}])
    assert few["modals"] == ["image"] * 5 and few["merge_sizes"].tolist() == [1] * 5


def test_video_file_is_sampled_at_the_requested_rate(tmp_path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(12):
            array = np.full((48, 64, 3), 20 * index, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    sampled = load_video(path, fps=1)
    assert sampled.timestamps == [0.0, 1.0, 2.0] and sampled.frames.shape == (3, 3, 48, 64)
    brightness = sampled.frames.float().mean(dim=(1, 2, 3))
    assert torch.allclose(brightness, torch.tensor([0.0, 80.0, 160.0]), atol=6)  # frames 0, 4 and 8
    assert load_video(path, fps=4, max_frames=3).timestamps == [0.0, 1.25, 2.75]
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="cannot decode video"):
        load_video(tmp_path / "bad.mp4")


@pytest.fixture
def checkpoint(tmp_path):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = zoo.create("hulu-med-tiny").eval()
    assert model.config.image_token_index == tokenizer.convert_tokens_to_ids("<image>")
    folder = model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"patch_size": 4, "min_tokens": 4, "max_tokens": 64}))
    volume = _ct_volume(shape=(56, 56, 6))
    nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(tmp_path / "ct.nii"))
    return model, folder, tmp_path / "ct.nii"


def test_run_answers_about_a_volume(checkpoint, capsys):
    model, folder, scan = checkpoint
    code = main(["run", "hulu-med-tiny", "--checkpoint", str(folder), "--volume", str(scan), "--prompt", "Findings?",
                 "--max-new-tokens", "5", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out.strip()
    processor = HuluMedProcessor.from_pretrained(folder)
    assert processor.max_tokens == 64
    inputs = processor(conversation=[{"role": "user", "content": [
        {"type": "3d", "3d": str(scan)}, {"type": "text", "text": "Findings?"}]}])
    output = model.generate(**inputs, max_new_tokens=5, eos_token_id=[2])
    assert printed == processor.decode(output[0])
    image = folder.parent / "xray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    assert main(["run", "hulu-med-tiny", "--checkpoint", str(folder), "--image", str(image), "--think", "--prompt",
                 "Findings?", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    inputs = processor(conversation=[{"role": "user", "content": [
        {"type": "image", "image": str(image)}, {"type": "text", "text": "Findings?"}]}], think=True)
    assert THINK_SUFFIX in processor.tokenizer.decode(inputs["input_ids"][0])
    output = model.generate(**inputs, max_new_tokens=3, eos_token_id=[2])
    assert capsys.readouterr().out.strip() == processor.decode(output[0], use_think=True)
    assert main(["run", "hulu-med-tiny", "--checkpoint", str(folder), "--volume", str(folder / "config.json"),
                 "--prompt", "?"]) == 2
    assert "neither a NIfTI file" in capsys.readouterr().err


def test_missing_medical_extra_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "nibabel", None)
    (tmp_path / "scan.nii.gz").write_bytes(b"\0" * 352)
    with pytest.raises(zoo.ZooError, match=r"needs nibabel: pip install mmzoo\[medical\]"):
        read_volume(tmp_path / "scan.nii.gz")
