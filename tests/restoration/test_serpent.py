"""Serpent (a reconstruction from the paper's description): the 4-direction unroll/roll-back, every scan path
against the sequential reference, the multi-direction mixer against an oracle written here, the model's contract,
and the refusal of the official release's names."""

import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import ConfigError, InputError, UnknownModelError
from zoo.layers.scan2d import IMAGE_DIRECTIONS, image_to_sequences, sequences_to_image
from zoo.restoration.serpent import SS2D, SerpentConfig

ODD_SIZES = [(1, 1), (1, 9), (7, 1), (3, 5), (9, 7)]


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter (norm weights and biases included) random, A_logs kept in a stable range."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=generator)
            if name.endswith("A_logs"):
                values = values.abs().clamp(max=2.0) * 0.5
            elif name.endswith("dt_projs_bias"):
                values = values * 0.5 - 2.0
            else:
                values = values * 0.3
            param.copy_(values)


# --- the 4-direction unroll and roll-back -------------------------------------------------------


@pytest.mark.parametrize("height,width", ODD_SIZES)
def test_unroll_is_the_four_raster_orders_and_rolls_back(height, width):
    x = torch.randn(2, 3, height, width)
    sequences = image_to_sequences(x, 4)
    assert sequences.shape == (2, 4, 3, height * width)
    # the four orders, written out independently: row-major, column-major, and each read backwards
    row = torch.stack([x[:, :, i, j] for i in range(height) for j in range(width)], dim=-1)
    column = torch.stack([x[:, :, i, j] for j in range(width) for i in range(height)], dim=-1)
    expected = {"row": row, "column": column, "row_reversed": row.flip(-1), "column_reversed": column.flip(-1)}
    for k, direction in enumerate(IMAGE_DIRECTIONS):
        assert torch.equal(sequences[:, k], expected[direction]), direction
        single = image_to_sequences(x, (direction,))
        assert torch.equal(sequences_to_image(single, height, width, (direction,)), x), direction
    # folding all four back sums four copies of the map
    assert torch.allclose(sequences_to_image(sequences, height, width, 4), 4 * x)


@pytest.mark.parametrize("height,width", ODD_SIZES)
def test_unroll_is_a_bijection_of_positions(height, width):
    positions = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width)
    for sequence in image_to_sequences(positions, 4)[0, :, 0]:
        assert torch.equal(sequence.sort().values, torch.arange(height * width, dtype=torch.float64))
    # roll-back of any sequence set is the inverse: unroll(roll_back(s)) == s for each direction
    s = torch.randn(1, 1, 2, height * width)
    for direction in IMAGE_DIRECTIONS:
        image = sequences_to_image(s, height, width, (direction,))
        assert torch.equal(image_to_sequences(image, (direction,)), s)


# --- the scans -----------------------------------------------------------------------------------


def _mixer(height_width=(5, 7), directions=IMAGE_DIRECTIONS, chunk=3, backend="chunked", seed=0):
    config = SerpentConfig(ssm_state=4, dt_rank=3, directions=directions, scan_backend=backend,
                           scan_chunk_size=chunk)
    torch.manual_seed(seed)
    mixer = SS2D(12, config)
    _randomize(mixer, seed)
    return mixer


@pytest.mark.parametrize("backend", ["auto", "chunked"])
@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("height,width", [(5, 7), (9, 3)])
def test_mixer_fast_scan_paths_equal_the_reference_scan(backend, chunk, height, width):
    fast = _mixer(backend=backend, chunk=chunk)
    ref = _mixer(backend="ref")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, height, width, 12, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = fast(x), ref(x_ref)
    assert (out - out_ref).abs().max() < 1e-4
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    assert (x.grad - x_ref.grad).abs().max() < 1e-4
    for (name, p), p_ref in zip(fast.named_parameters(), ref.parameters()):
        assert (p.grad - p_ref.grad).abs().max() < 1e-4 * max(1.0, p_ref.grad.abs().max()), name


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "chunked"])
def test_mixer_cuda_scan_paths_equal_the_reference_scan(backend):
    """On CUDA, "auto" is mamba-ssm's kernel where it is installed (the chunked scan otherwise)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fast = _mixer(backend=backend, chunk=16).cuda()
    ref = _mixer(backend="ref")
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 9, 11, 12)
    with torch.no_grad():
        assert (fast(x.cuda()).cpu() - ref(x)).abs().max() < 1e-4


def _oracle_ss2d(mixer: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D written out plainly: positions visited in each direction's order one at a time, in float64."""
    batch, height, width, _ = x.shape
    x, mixer = x.double(), mixer.double()
    d, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
    xz = x @ mixer.in_proj.weight.T
    u_map, z = xz[..., :d], xz[..., d:]
    u_map = F.silu(F.conv2d(u_map.permute(0, 3, 1, 2), mixer.conv2d.weight, mixer.conv2d.bias,
                            padding=mixer.conv2d.padding, groups=d)).permute(0, 2, 3, 1)
    orders = {
        "row": [(i, j) for i in range(height) for j in range(width)],
        "column": [(i, j) for j in range(width) for i in range(height)],
    }
    orders["row_reversed"], orders["column_reversed"] = orders["row"][::-1], orders["column"][::-1]
    total = torch.zeros(batch, height, width, d, dtype=torch.float64)
    A = -torch.exp(mixer.A_logs).view(len(mixer.directions), d, n)
    D = mixer.Ds.view(len(mixer.directions), d)
    for k, direction in enumerate(mixer.directions):
        h = torch.zeros(batch, d, n, dtype=torch.float64)
        for i, j in orders[direction]:
            u = u_map[:, i, j]  # (batch, d)
            proj = u @ mixer.x_proj_weight[k].T
            dt_low, B, C = proj[:, :r], proj[:, r:r + n], proj[:, r + n:]
            dt = F.softplus(dt_low @ mixer.dt_projs_weight[k].T + mixer.dt_projs_bias[k])
            h = torch.exp(dt[..., None] * A[k]) * h + (dt * u)[..., None] * B[:, None, :]
            total[:, i, j] += (h * C[:, None, :]).sum(-1) + D[k] * u
    y = F.layer_norm(total, (d,), mixer.out_norm.weight, mixer.out_norm.bias, mixer.out_norm.eps) * F.silu(z)
    return y @ mixer.out_proj.weight.T


@pytest.mark.parametrize("directions", [IMAGE_DIRECTIONS, ("column_reversed",), ("row", "column")])
def test_mixer_equals_an_independent_oracle(directions):
    mixer = _mixer(directions=directions, backend="auto", chunk=4)
    x = torch.randn(2, 5, 7, 12)
    with torch.no_grad():
        out = mixer(x)
        expected = _oracle_ss2d(mixer, x)
    assert (out.double() - expected).abs().max() < 1e-4


def test_model_scan_backends_agree_end_to_end():
    torch.manual_seed(0)
    fast = zoo.create("serpent-recon-tiny", scan_chunk_size=5)
    _randomize(fast)
    ref = zoo.create("serpent-recon-tiny", scan_backend="ref")
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(2, 3, 12, 20)
    with torch.no_grad():
        assert (fast(x) - ref(x)).abs().max() < 1e-4


# --- the model's contract ------------------------------------------------------------------------


def test_fresh_model_is_the_identity_or_the_resize():
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(zoo.create("serpent-recon-tiny")(x), x)
        sr = zoo.create("serpent-recon-tiny", upscale=4)(x)
    assert torch.allclose(sr, F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False))


def test_model_trains_every_parameter_and_keeps_shapes():
    model = zoo.create("serpent-recon-tiny", upscale=2, depths=(1, 2), decoder_depths=(2,))
    _randomize(model)
    out = model(torch.rand(2, 3, 8, 12))
    assert out.shape == (2, 3, 16, 24)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_config_fields_and_errors():
    with pytest.raises(ConfigError, match="directions"):
        SerpentConfig(directions=("row", "diagonal"))
    with pytest.raises(ConfigError, match="decoder_depths"):
        SerpentConfig(depths=(1, 1, 1), dim_multipliers=(1, 2, 2), decoder_depths=(1,))
    with pytest.raises(ConfigError, match="odd"):
        SerpentConfig(ssm_conv=4)
    model = zoo.create("serpent-recon-tiny", directions=("row", "row_reversed"), mlp_ratio=0.0, ssm_expand=1.0)
    assert model.encoder[0][0].mlp is None and model.encoder[0][0].mixer.x_proj_weight.shape[0] == 2
    with pytest.raises(InputError, match="multiples of 4"):
        model(torch.rand(1, 3, 10, 12))


def test_official_release_names_fail_with_the_explanation():
    with pytest.raises(UnknownModelError, match="reconstruction") as error:
        zoo.create("serpent-tiny-deblur-256", pretrained=True)
    assert "shahab7899/Serpent" in str(error.value) and "serpent-recon-deblur-256" in str(error.value)
    with pytest.raises(UnknownModelError, match="reconstruction"):
        zoo.create("serpent-tiny-superres-512")
    for name in zoo.list_models("serpent*"):
        assert name.startswith("serpent-recon-")
        assert "Reconstructed from the Serpent paper" in zoo.model_info(name)["description"]


def test_published_sizes_are_reported():
    info = zoo.model_info("serpent-recon-deblur-256")
    assert info["paper"] == "arXiv:2403.17902"
    assert info["params"] == zoo.model_info("serpent-recon-sr8-512")["params"]
    assert math.isclose(info["params"], 2.06e6, rel_tol=0.01)


# --- the task data -------------------------------------------------------------------------------


def test_embedded_8x_bicubic_super_resolution_and_fixed_deblurring_sets():
    from zoo.data import load_dataset

    sr = load_dataset("shapes-restoration", "restoration", "eval", image_size=256, scale=8, downsample="bicubic",
                      blur=[0.0, 0.0], noise=[0.0, 0.0], eval_samples=2)
    area = load_dataset("shapes-restoration", "restoration", "eval", image_size=256, scale=8, blur=[0.0, 0.0],
                        noise=[0.0, 0.0], eval_samples=2)
    sample = sr[0]
    assert sample["degraded"].shape == (3, 32, 32) and sample["clean"].shape == (3, 256, 256)
    expected = F.interpolate(sample["clean"][None], scale_factor=1 / 8, mode="bicubic", antialias=True,
                             align_corners=False)[0].clamp(0, 1)
    assert torch.allclose(sample["degraded"], expected, atol=1e-6)
    assert not torch.allclose(sample["degraded"], area[0]["degraded"], atol=1e-3)
    deblur = load_dataset("shapes-restoration", "restoration", "eval", image_size=64, blur=[2.0, 2.0],
                          noise=[0.0, 0.0], eval_samples=2)
    # a fixed kernel: the same blur of each clean image, whatever the item
    from zoo.data.shapes import gaussian_blur

    for item in (deblur[0], deblur[1]):
        assert torch.allclose(item["degraded"], gaussian_blur(item["clean"], 2.0).clamp(0, 1), atol=1e-6)
    with pytest.raises(ConfigError, match="downsample"):
        load_dataset("shapes-restoration", "restoration", "train", image_size=64, scale=8, downsample="lanczos")


@pytest.mark.parametrize("name", ["serpent-deblur-256", "serpent-sr8-512"])
def test_training_configs_read_and_their_data_fits_the_model(name):
    from pathlib import Path

    from train.config import TrainConfig, read_yaml
    from train.tasks import get_task
    from zoo.data import load_dataset
    from zoo.registry import get_entry

    config = TrainConfig(**read_yaml(Path(__file__).parents[2] / "train" / "configs" / f"{name}.yaml"))
    entry = get_entry(config.model)
    task = get_task(config.task)
    options = {**task.data_defaults(entry, entry.config), **config.data_options}
    sample = load_dataset(config.data, "restoration", "eval", eval_samples=1, **options)[0]
    assert tuple(sample["degraded"].shape[1:]) == entry.default_input.tensors["pixel_values"].shape[1:]
    # the task's forward on the real data with a same-layout tiny model (the published-size one is slow on CPU)
    model = zoo.create("serpent-recon-tiny", upscale=entry.config.upscale)
    with torch.no_grad():
        restored = task.forward(model, task.collate([sample]))
    assert restored.shape == (1, *sample["clean"].shape)


def test_model_card_and_info_say_reconstruction(tmp_path):
    model = zoo.create("serpent-recon-tiny")
    card = (model.save_pretrained(tmp_path) / "README.md").read_text()
    assert "This is a reconstruction, not the official Serpent" in card
    assert "cannot load the official checkpoints" in card
    assert "Reconstructed from the Serpent paper" in card  # the registry description
