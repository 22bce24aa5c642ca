"""MLFSR: parity with an independent oracle at the published size, the release's checkpoint format, registry, errors."""

import re

import pytest
import torch

import zoo
from zoo.errors import CheckpointError, ConfigError, HubError, InputError
from zoo.registry import get_entry
from zoo.restoration.mlfsr import MLFSR, MLFSRConfig

from .oracle import OracleMLFSR, randomize

PUBLISHED = dict(channels=64, angular_resolution=5, num_blocks=3, d_state=8, expand=2, d_conv=4, dt_rank=4,
                 cab_compress=3, cab_squeeze=30)


def _published_keys() -> set[str]:
    """The release's 315 tensor names, spelled out from its module tree."""
    ss2d = ["gamma", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "conv.weight", "conv.bias"]
    ss2d += [f"ca.cab.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    ss2d += [f"ca.cab.3.attention.{i}.{p}" for i in (1, 3) for p in ("weight", "bias")]
    mamba = ["in_proj.weight", "out_proj.weight"]
    for s in ("", "_b"):
        mamba += [f"conv1d{s}.weight", f"conv1d{s}.bias", f"x_proj{s}.weight", f"dt_proj{s}.weight",
                  f"dt_proj{s}.bias", f"D{s}"]
    mamba += ["A_log", "A_b_log"]
    ss2d += [f"mamba.{k}" for k in mamba]
    convs = [f"conv.{i}.weight" for i in (0, 2, 4)]
    keys = {"conv_init0.0.weight", "upsampling.0.weight", "upsampling.3.weight"}
    keys |= {f"conv_init.{i}.weight" for i in (0, 2, 4)}
    for k in range(3):
        keys |= {f"altblock.{3 * k}.epi_trans.{n}" for n in ss2d} | {f"altblock.{3 * k}.{c}" for c in convs}
        keys |= {f"altblock.{3 * k + 1}.{t}.{n}" for t in ("spa_trans", "ang_trans") for n in ss2d}
        keys |= {f"altblock.{3 * k + 1}.{c}" for c in convs}
        keys |= {f"altblock.{3 * k + 2}.modulation{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    return keys


@pytest.mark.parametrize("name, params", [("mlfsr-x4", 1_406_863), ("mlfsr-x2", 1_357_711)])
def test_published_size_params_and_keys(name, params):
    with torch.device("meta"):
        model = zoo.create(name)
    assert sum(p.numel() for p in model.parameters()) == params == get_entry(name).expected_params
    keys = set(model.state_dict())
    assert len(keys) == 315 and keys == _published_keys()


def _oracle(scale: int, seed: int = 0) -> OracleMLFSR:
    oracle = OracleMLFSR(dict(PUBLISHED, scale=scale))
    randomize(oracle, torch.Generator().manual_seed(seed))
    return oracle.eval()


@pytest.mark.parametrize("scale", [4, 2])
def test_parity_with_oracle_at_published_size(scale, tmp_path):
    """Release-format checkpoint ({'epoch', 'state_dict'}, with and without `module.`) -> same SR and body feature."""
    oracle = _oracle(scale)
    assert set(oracle.state_dict()) == _published_keys()
    lr = torch.rand(2, 1, 5 * 8, 5 * 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, expected_feature = oracle(lr)
    state = oracle.state_dict()
    for prefix in ("", "module."):
        path = tmp_path / f"MLFSR_5x5_{scale}x{prefix}.pth"
        torch.save({"epoch": 150, "state_dict": {prefix + k: v for k, v in state.items()}}, path)
        model = zoo.create(f"mlfsr-x{scale}", checkpoint_path=path)
        with torch.no_grad():
            sr, feature = model.forward_features(lr)
            positional = model(lr, None)
        assert sr.shape == (2, 1, 5 * 8 * scale, 5 * 6 * scale)
        assert (sr - expected).abs().max() < 1e-4, (sr - expected).abs().max()
        assert (feature - expected_feature).abs().max() < 1e-4
        assert torch.equal(positional, sr)
    # Outputs of order 0.1-1, so 1e-4 is far below what a wrong wiring gives.
    assert expected_feature.abs().mean() > 0.05 and expected.std() > 0.1


def test_checkpoint_of_other_scale_is_refused(tmp_path):
    path = tmp_path / "MLFSR_5x5_2x.pth"
    torch.save({"epoch": 1, "state_dict": _oracle(2).state_dict()}, path)
    with pytest.raises(CheckpointError, match=re.escape("x2 super-resolution, the model is x4")) as error:
        zoo.create("mlfsr-x4", checkpoint_path=path)
    assert "mlfsr-x2" in str(error.value)


def test_bad_inputs_are_clear():
    model = zoo.create("mlfsr-tiny").eval()
    with pytest.raises(InputError, match="not divisible by the angular resolution 5"):
        model(torch.rand(1, 1, 5 * 6 + 2, 5 * 6))
    with pytest.raises(InputError, match="Y channel only: got 3 channels"):
        model(torch.rand(1, 3, 30, 30))
    with pytest.raises(InputError, match=r"\(B, 1, 5\*h, 5\*w\)"):
        model(torch.rand(30, 30))
    with pytest.raises(ConfigError, match="cab_squeeze"):
        MLFSRConfig(channels=16)


def test_tiny_trains_and_round_trips(tmp_path):
    model = zoo.create("mlfsr-tiny")
    lr = torch.rand(2, 1, 30, 25)
    out = model(lr)
    assert out.shape == (2, 1, 60, 50)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.save_pretrained(tmp_path / "saved")
    reloaded = zoo.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(reloaded(lr), model.eval()(lr))


def test_registered_sources_fetch_by_url(offline, tmp_path, monkeypatch):
    """The release's files live in the GitHub repo, fetched by URL: offline, a clear error naming checkpoint_path."""
    source = get_entry("mlfsr-x4").source()
    assert source.url.endswith("/pretrained_models/MLFSR_5x5_4x.pth") and source.format == "original"
    assert get_entry("mlfsr-x2").source().url.endswith("MLFSR_5x5_2x.pth")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE.*checkpoint_path"):
        zoo.create("mlfsr-x4", pretrained=True)


def test_url_download_is_cached_and_loads(tmp_path, monkeypatch):
    """A local HTTP server stands in for GitHub: the file is downloaded once, then read from the cache."""
    import functools
    import http.server
    import threading

    from zoo import registry

    served = tmp_path / "served"
    served.mkdir()
    oracle = _oracle(2, seed=3)
    torch.save({"epoch": 7, "state_dict": oracle.state_dict()}, served / "MLFSR_5x5_2x.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        entry = get_entry("mlfsr-x2")
        url = f"http://127.0.0.1:{server.server_address[1]}/MLFSR_5x5_2x.pth"
        moved = entry.sources[0].__class__(**{**entry.sources[0].__dict__, "url": url})
        monkeypatch.setitem(registry._MODELS, "mlfsr-x2", entry.__class__(**{**entry.__dict__, "sources": (moved,)}))
        model = zoo.create("mlfsr-x2", pretrained=True)
    finally:
        server.shutdown()
    lr = torch.rand(1, 1, 20, 20)
    with torch.no_grad():
        assert (model(lr) - oracle(lr)[0]).abs().max() < 1e-4
    model = zoo.create("mlfsr-x2", pretrained=True)  # the server is gone: from the cache
    assert model.zoo_name == "mlfsr-x2"


def _interior(mosaic: torch.Tensor, margin: int) -> torch.Tensor:
    views = mosaic.unflatten(-2, (5, -1)).unflatten(-1, (5, -1))  # (..., u, h, v, w)
    return views[..., margin:-margin, :, margin:-margin]


def test_patch_inference_equals_whole_on_the_interior():
    """BasicLFSR's patch mode (LFdivide, patches of 32 every 16, LFintegrate) gives the whole-image result wherever
    the patch border (8 px) covers the receptive field: exact for MLFSR's local path (the body taken out: convs,
    upsampler and bicubic skip see 5 LR pixels), away from the views' edges."""
    model = zoo.create("mlfsr-tiny").eval()
    model.altblock = torch.nn.Identity()
    lr = torch.rand(2, 1, 5 * 40, 5 * 36)
    whole = model.super_resolve(lr, "whole")
    patch = model.super_resolve(lr, "patch", patch_size=32, stride=16, batch_size=5)
    assert patch.shape == whole.shape == (2, 1, 5 * 80, 5 * 72)
    assert (_interior(patch, 16) - _interior(whole, 16)).abs().max() < 1e-5
    assert (patch - whole).abs().max() > 1e-3  # the edges differ: symmetric extension against zero padding


def test_mlfsr_sees_beyond_a_patch():
    """With the Mamba body the receptive field is the whole light field: patching changes the interior too, which is
    what full-light-field inference (the paper's point) avoids."""
    model = zoo.create("mlfsr-tiny").eval()
    lr = torch.rand(1, 1, 5 * 24, 5 * 24)
    whole, patch = model.super_resolve(lr), model.super_resolve(lr, "patch", patch_size=16, stride=8)
    assert patch.shape == whole.shape
    assert (_interior(patch, 8) - _interior(whole, 8)).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="'whole' or 'patch'"):
        model.super_resolve(lr, "tiles")
