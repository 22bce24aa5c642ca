"""UNIT's encoder against an oracle built here: timm's `VisionTransformer` blocks and norms, plus the official
patch generator's behaviour written independently (patches by `unfold`, the bilinear align_corners=True resizes as
interpolation matrices, the crop, the class and register tokens). Checkpoints are written in the official layout
(`config.json` with RADIO-style `args`, `unit_model.*` keys) and read through `zoo.from_pretrained`."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.testing import assert_close

import zoo
from tests.backbones.norms import randomize_biases, randomize_norms
from tests.hub_server import populate_cache
from zoo.backbones.unit import CLIP_MEAN, CLIP_STD, UnitConfig, UnitEncoder, config_from_official
from zoo.registry import count_parameters

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

FP32 = dict(rtol=0, atol=1e-4)


class Oracle(torch.nn.Module):
    """The official forward for a config, from timm's ViT (blocks, norm, fc_norm, head) and test-owned tensors."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        pooling = {} if config["gp"] is None else {"global_pool": config["gp"]}  # create_model drops None
        self.vit = VisionTransformer(
            img_size=config["img_size"], patch_size=config["patch"], embed_dim=config["dim"], depth=config["depth"],
            num_heads=config["heads"], num_classes=config["num_classes"], **pooling,
        )
        randomize_biases(randomize_norms(self.vit))
        generator = torch.Generator().manual_seed(3)
        dim, patch = config["dim"], config["patch"]
        self.side = int(round(config["cpe_max_size"] / patch))
        registers = (config["reg"] - config["cls"] % config["reg"]) if config["reg"] else 0
        self.skip = config["cls"] + registers
        self.embedder = torch.randn(dim, 3 * patch * patch, generator=generator) * 0.05
        self.pos_embed = torch.randn(1, self.side**2, dim, generator=generator)
        self.tokens = torch.randn(self.skip, dim, generator=generator)

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        grid = self.pos_embed[0].reshape(self.side, self.side, -1)
        if (rows, cols) == (self.side, self.side):
            return grid.reshape(-1, grid.shape[-1])
        if self.side * self.config["patch"] != self.config["img_size"]:  # CPE: resize to the larger side, crop
            larger = max(rows, cols)
            grid = _bilinear(grid, larger, larger)[:rows, :cols]
        else:
            grid = grid[:rows, :cols]
        if grid.shape[:2] != (rows, cols):
            grid = _bilinear(grid, rows, cols)
        return grid.reshape(-1, grid.shape[-1])

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patch = self.config["patch"]
        rows, cols = pixels.shape[2] // patch, pixels.shape[3] // patch
        x = (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
        patches = torch.nn.functional.unfold(x, patch, stride=patch).transpose(1, 2)  # (c, py, px) order
        x = patches @ self.embedder.T + self.positions(rows, cols)
        x = torch.cat((self.tokens.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.vit.norm(self.vit.blocks(x))
        return x[:, 0], x[:, self.skip:]

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        vit = {k: v for k, v in self.vit.state_dict().items()
               if k.startswith(("blocks.", "norm.", "fc_norm.", "head."))}
        return {
            **{f"unit_model.model.{k}": v for k, v in vit.items()},
            "unit_model.model.patch_generator.embedder.weight": self.embedder,
            "unit_model.model.patch_generator.pos_embed": self.pos_embed,
            "unit_model.model.patch_generator.cls_token.token": self.tokens,
            "unit_model.input_conditioner.norm_mean": torch.tensor(CLIP_MEAN).view(3, 1, 1),
            "unit_model.input_conditioner.norm_std": torch.tensor(CLIP_STD).view(3, 1, 1),
        }

    def official_config(self) -> dict:
        c = self.config
        return {
            "architectures": ["UNITModel"], "version": "v1",
            "args": {
                "model": "vit_base_patch16_224", "in_chans": None, "num_classes": c["num_classes"], "gp": c["gp"],
                "drop": 0.0, "drop_path": None, "drop_block": None, "pretrained": False, "initial_checkpoint": "",
                "cpe_max_size": c["cpe_max_size"], "num_cls_tokens": c["cls"], "register_multiple": c["reg"],
                "model_kwargs": {"embed_dim": c["dim"], "depth": c["depth"], "num_heads": c["heads"],
                                 "patch_size": c["patch"], "img_size": c["img_size"], "weight_init": "skip"},
            },
        }


def _bilinear(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(h, w, D) resized to (rows, cols, D) bilinearly with corners aligned, as two interpolation matrices."""
    def matrix(out: int, size: int) -> torch.Tensor:
        where = torch.arange(out, dtype=torch.float64) * ((size - 1) / (out - 1) if out > 1 else 0.0)
        low = where.floor().long().clamp(max=size - 1)
        high = (low + 1).clamp(max=size - 1)
        frac = where - low
        weights = torch.zeros(out, size, dtype=torch.float64)
        weights[torch.arange(out), low] += 1 - frac
        weights[torch.arange(out), high] += frac
        return weights.float()

    return torch.einsum("ih,hwd,jw->ijd", matrix(rows, grid.shape[0]), grid, matrix(cols, grid.shape[1]))


def _official_folder(tmp_path, oracle: Oracle, safetensors: bool = False):
    folder = tmp_path / "unit_official"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(oracle.official_config()))
    state = {k: v.contiguous() for k, v in oracle.official_state_dict().items()}
    if safetensors:
        save_file(state, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def _pixels(height: int, width: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width))


# Patch 8: CPE on (img 32 != grid 8 * 8) with 2 class tokens + 2 registers and pooling 'token'; pooling 'avg' without
# registers; CPE off (grid 8 * 8 = img 64). cpe_max_size 68 -> round(8.5) = 8 (Python rounds half to even).
CONFIGS = {
    "token-registers-cpe": dict(gp=None, cls=2, reg=4, img_size=32, cpe_max_size=64, num_classes=5),
    "avg-no-registers-cpe": dict(gp="avg", cls=1, reg=0, img_size=32, cpe_max_size=68, num_classes=0),
    "token-registers-no-cpe": dict(gp="token", cls=1, reg=2, img_size=64, cpe_max_size=64, num_classes=0),
}
# The stored grid (8 x 8), a wide grid larger than it (6 x 10) and a tall smaller one (5 x 3).
SIZES = [(64, 64), (48, 80), (40, 24)]


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    oracle = Oracle(dict(dim=64, depth=2, heads=4, patch=8, **CONFIGS[request.param])).eval()
    model = zoo.from_pretrained(_official_folder(tmp_path_factory.mktemp(request.param), oracle))
    return oracle, model


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tokens_match_the_oracle(pair, size):
    oracle, model = pair
    pixels = _pixels(*size)
    with torch.no_grad():
        expected = oracle(pixels)
        cls_tokens, spatial_tokens = model(pixels)
    assert spatial_tokens.shape == (2, size[0] // 8 * size[1] // 8, 64)
    assert_close(cls_tokens, expected[0], **FP32)
    assert_close(spatial_tokens, expected[1], **FP32)


def test_config_follows_timm_and_the_official_rounding():
    official = Oracle(dict(dim=64, depth=2, heads=4, patch=8, **CONFIGS["token-registers-cpe"])).official_config()
    config = config_from_official(official)
    assert (config.global_pool, config.num_classes, config.in_chans) == ("token", 5, 3)  # gp null -> 'token'
    assert (config.num_registers, config.num_prefix_tokens, config.grid, config.cpe_mode) == (2, 4, 8, True)
    official["args"].update(num_classes=None, cpe_max_size=68, register_multiple=0)
    config = config_from_official(official)
    assert (config.num_classes, config.grid, config.num_registers) == (1000, 8, 0)  # round(8.5) == 8
    assert UnitConfig(cpe_max_size=14 * 33 - 7).grid == 32  # round(32.5) == 32
    official["args"]["model"] = "vit_giant_patch14_224"
    with pytest.raises(zoo.ConfigError, match="vit_huge_patch14_224_1B"):
        config_from_official(official)


def test_avg_pooling_leaves_tokens_unnormalised_and_never_applies_fc_norm(pair):
    oracle, model = pair
    if model.config.global_pool != "avg":
        assert isinstance(model.fc_norm, torch.nn.Identity) and isinstance(model.norm, torch.nn.LayerNorm)
        return
    assert isinstance(model.norm, torch.nn.Identity) and isinstance(model.fc_norm, torch.nn.LayerNorm)
    pixels = _pixels(64, 64)
    with torch.no_grad():
        before = model(pixels)[1]
        model.fc_norm.weight.mul_(3)
        assert torch.equal(model(pixels)[1], before)
        model.fc_norm.weight.div_(3)


def test_safetensors_layout_and_bare_checkpoint_load(tmp_path):
    oracle = Oracle(dict(dim=64, depth=2, heads=4, patch=8, **CONFIGS["avg-no-registers-cpe"])).eval()
    pixels = _pixels(48, 80)
    with torch.no_grad():
        expected = oracle(pixels)[1]
        model = zoo.from_pretrained(_official_folder(tmp_path, oracle, safetensors=True))
        assert_close(model(pixels)[1], expected, **FP32)
        bare = zoo.create("unit-tiny", checkpoint_path=tmp_path / "unit_official" / "model.safetensors",
                          embed_dim=64, num_heads=4, image_size=32, cpe_max_size=68, register_multiple=0,
                          global_pool="avg")
        assert_close(bare(pixels)[1], expected, **FP32)


def test_wrong_checkpoint_is_refused_with_the_missing_keys(tmp_path):
    oracle = Oracle(dict(dim=64, depth=2, heads=4, patch=8, **CONFIGS["token-registers-cpe"]))
    folder = _official_folder(tmp_path, oracle)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["unit_model.model.patch_generator.pos_embed"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(zoo.CheckpointError, match="'official' ran.*missing.*patch_generator.pos_embed"):
        zoo.from_pretrained(folder)


def test_training_mode_random_position_crops_match_the_official_draws():
    """In training with CPE, RADIO samples each image's position grid from a random window and drops whole position
    encodings with probability pos_dropout; the same seed gives the official draws in the official order."""
    config = UnitConfig(embed_dim=16, depth=1, num_heads=2, patch_size=8, image_size=32, cpe_max_size=64,
                        pos_dropout=0.5)
    model = UnitEncoder(config).train()
    generator = model.patch_generator
    rows, cols, batch = 5, 7, 6
    torch.manual_seed(11)
    got = generator.positions(rows, cols, batch)
    torch.manual_seed(11)
    scale = torch.rand(batch, 1, 1) * (1 - 0.1**0.5) + 0.1**0.5
    aspect = torch.exp(torch.rand(batch, 1, 1) * (2 * torch.log(torch.tensor(4 / 3))) + torch.log(torch.tensor(3 / 4)))
    scale_xy = torch.stack([scale * aspect, scale / aspect], dim=-1).clamp(0, 1)
    corner = torch.rand(batch, 1, 1, 2) * (1 - scale_xy)
    grid = generator.pos_embed[0].detach().reshape(8, 8, -1)
    for b in range(batch):
        (sx, sy), (cx, cy) = scale_xy[b, 0, 0].tolist(), corner[b, 0, 0].tolist()
        ys = (torch.linspace(0, 1, rows) * sy + cy) * 7  # align_corners=True: [0, 1] spans the 8 grid points
        xs = (torch.linspace(0, 1, cols) * sx + cx) * 7
        y0, x0 = ys.floor().long().clamp(max=6), xs.floor().long().clamp(max=6)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        sample = ((1 - fy) * (1 - fx) * grid[y0][:, x0] + (1 - fy) * fx * grid[y0][:, x0 + 1]
                  + fy * (1 - fx) * grid[y0 + 1][:, x0] + fy * fx * grid[y0 + 1][:, x0 + 1])
        assert_close(got[b].detach(), sample.reshape(-1, 16), **FP32)
    # Position dropout: a whole sample's encoding, and only in training.
    pixels = _pixels(40, 56, batch=64)
    with torch.no_grad():
        model.eval()
        no_positions = model.patch_generator.cls_token(model.patch_generator.embedder(
            torch.nn.functional.unfold(model.input_conditioner(pixels), 8, stride=8).transpose(1, 2)))
        model.train()
        trained = model.patch_generator(model.input_conditioner(pixels))
    dropped = (trained - no_positions).abs().amax(dim=(1, 2)) == 0
    assert 10 < dropped.sum() < 54


def test_published_sizes_on_meta_match_timm_trunks():
    """600M and 1B: timm's blocks and norms (vit_huge_patch14_224 and the official 1B's 50 blocks), the stored
    position grid instead of timm's, the tokens, a bias-free embedder."""
    for name, depth, fc_norm in (("unit-600m", 32, False), ("unit-1b", 50, True)):
        with torch.device("meta"):
            model = zoo.create(name)
            reference = VisionTransformer(patch_size=14, embed_dim=1280, depth=depth, num_heads=16, num_classes=0,
                                          global_pool="avg" if fc_norm else "token")
        expected = (count_parameters(reference) - reference.pos_embed.numel() - reference.patch_embed.proj.bias.numel()
                    + model.config.grid**2 * 1280)  # timm's 1 cls token = UNIT's 1 cls token, no registers
        assert count_parameters(model) == expected
    assert 0.60e9 < zoo.model_info("unit-600m")["params"] < 0.64e9
    assert 0.98e9 < zoo.model_info("unit-1b")["params"] < 1.0e9


def test_offline_hub_loading(tmp_path, hf_cache, offline):
    oracle = Oracle(dict(dim=64, depth=2, heads=4, patch=8, **CONFIGS["avg-no-registers-cpe"])).eval()
    populate_cache(hf_cache, "yeeaa/UNIT_tiny_test", _official_folder(tmp_path, oracle))
    pixels = _pixels(40, 24)
    with torch.no_grad():
        assert_close(zoo.from_pretrained("yeeaa/UNIT_tiny_test")(pixels)[1], oracle(pixels)[1], **FP32)


def test_registered_source_loads_offline_through_create(tmp_path, hf_cache, offline):
    """`zoo.create("unit-1b", pretrained=True)` reads the official layout from the cache (here at a shrunk depth
    and width given as overrides, with the published position grid and pooling)."""
    config = dict(dim=64, depth=2, heads=4, patch=14, gp="avg", cls=1, reg=0, img_size=224, cpe_max_size=448,
                  num_classes=0)
    oracle = Oracle(config).eval()
    populate_cache(hf_cache, "yeeaa/UNIT_1B", _official_folder(tmp_path, oracle, safetensors=True))
    model = zoo.create("unit-1b", pretrained=True, embed_dim=64, depth=2, num_heads=4)
    pixels = _pixels(448, 308, batch=1)
    with torch.no_grad():
        assert_close(model(pixels)[1], oracle(pixels)[1], **FP32)


def test_bad_input_names_the_nearest_valid_size():
    model = zoo.create("unit-tiny")
    with pytest.raises(zoo.InputError, match=r"450x301 .* patch size 8.*nearest valid size, 448x304"):
        model(torch.rand(1, 3, 450, 301))
    with pytest.raises(zoo.InputError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))


def test_forward_features_and_intermediates_follow_timm():
    torch.manual_seed(0)
    model = zoo.create("unit-tiny").eval()
    pixels = _pixels(48, 32)
    with torch.no_grad():
        features = model.forward_features(pixels)
        cls_tokens, spatial_tokens = model(pixels)
        final, maps = model.forward_intermediates(pixels)
        only = model.forward_intermediates(pixels, indices=[0], intermediates_only=True)
    prefix = model.config.num_prefix_tokens
    assert prefix == 4 and features.shape == (2, prefix + 24, 64)
    assert torch.equal(features[:, 0], cls_tokens) and torch.equal(features[:, prefix:], spatial_tokens)
    assert torch.equal(final, features) and len(maps) == 2 and maps[0].shape == (2, 64, 6, 4)
    assert torch.equal(maps[-1].flatten(2).transpose(1, 2), model.blocks(model.embed(pixels))[:, prefix:])
    assert len(only) == 1 and torch.equal(only[0], maps[0])
    assert model.no_weight_decay() <= {name for name, _ in model.named_parameters()}


def test_published_processor_preprocessing_is_clip_without_normalisation():
    """The pixels the model takes: transformers' CLIPImageProcessor (shortest side 448, centre crop, 1/255) with
    do_normalize off, so the model's own input conditioner is the only normalisation."""
    from transformers import CLIPImageProcessor

    from zoo.backbones.unit import processor_transform

    image = Image.fromarray((torch.rand(300, 500, 3) * 255).byte().numpy())
    with torch.device("meta"):
        model = zoo.create("unit-600m")
    pixels = processor_transform(model.pretrained_cfg)(image)
    reference = CLIPImageProcessor(size={"shortest_edge": 448}, crop_size=448, do_normalize=False)
    assert torch.equal(pixels, torch.from_numpy(reference(image, return_tensors="np")["pixel_values"][0]))
    assert pixels.shape == (3, 448, 448) and 0 <= pixels.min() and pixels.max() <= 1
    assert model.pretrained_cfg["mean"] == (0.0, 0.0, 0.0) and model.pretrained_cfg["std"] == (1.0, 1.0, 1.0)


def test_zoo_run_prints_token_shapes_and_cls_norm(tmp_path, capsys):
    from zoo.cli import main

    torch.manual_seed(0)
    model = zoo.create("unit-tiny").eval()
    folder = model.save_pretrained(tmp_path / "model")
    Image.new("RGB", (90, 60), (30, 200, 90)).save(tmp_path / "x.png")
    assert main(["run", "unit-tiny", "--checkpoint", str(folder), "--image", str(tmp_path / "x.png"),
                 "--device", "cpu"]) in (0, None)
    printed = capsys.readouterr().out
    assert "pixels (1, 3, 48, 32) -> cls_tokens (1, 64), spatial_tokens (1, 24, 64)" in printed, printed
    pixels = torch.full((1, 3, 48, 32), 0.0)
    pixels[:, 0], pixels[:, 1], pixels[:, 2] = 30 / 255, 200 / 255, 90 / 255
    with torch.no_grad():
        assert f"cls norm {model(pixels)[0].norm().item():.4f}" in printed


def test_bench_reference_is_timm_vit_doing_the_same_work():
    """`zoo bench unit-600m --compare timm`: timm's VisionTransformer (the vit_huge_patch14_224 class) holding UNIT's
    weights gives UNIT's tokens at the stored grid, so the timing compares the same work."""
    from eval.references import get_reference

    reference = get_reference("unit", "timm")
    config = zoo.create("unit-tiny").config.replace(global_pool="avg", register_multiple=0)
    for config in (zoo.create("unit-tiny").config, config):
        timm_model, model = reference.build(config)
        randomize_biases(randomize_norms(timm_model))  # shared with zoo's model, but for the patch conv's bias:
        torch.nn.init.zeros_(timm_model.patch_embed.proj.bias)  # UNIT's embedder has none
        assert isinstance(timm_model, VisionTransformer)
        pixels = _pixels(64, 64)
        with torch.no_grad():
            ours, theirs = model(pixels), reference.call(timm_model, {"pixel_values": pixels})
        assert_close(ours[0], theirs[0], **FP32)
        assert_close(ours[1], theirs[1], **FP32)


def test_model_card_names_the_release_and_the_input_convention(tmp_path):
    from zoo import hub

    card = hub.render_model_card(zoo.create("unit-tiny"), repo_id="me/unit-tiny")
    assert "arXiv:2409.04095" in card and "yeeaa/UNIT_1B" in card and "pixels in [0, 1]" in card
    assert 'zoo.from_pretrained("me/unit-tiny")' in card


def test_zoo_run_unit_1b_on_an_official_folder(tmp_path, capsys):
    """`zoo run unit-1b --checkpoint FOLDER --image X` on a folder in the official layout (a shrunk 1B: its patch,
    grid and pooling, two blocks of width 64): the published processor's 448 x 448 pixels, 32 x 32 tokens."""
    from zoo.cli import main

    config = dict(dim=64, depth=2, heads=4, patch=14, gp="avg", cls=1, reg=0, img_size=224, cpe_max_size=448,
                  num_classes=0)
    folder = _official_folder(tmp_path, Oracle(config).eval())
    Image.new("RGB", (640, 480), (200, 40, 90)).save(tmp_path / "x.jpg")
    assert main(["run", "unit-1b", "--checkpoint", str(folder), "--image", str(tmp_path / "x.jpg"),
                 "--device", "cpu"]) in (0, None)
    printed = capsys.readouterr().out
    assert "pixels (1, 3, 448, 448) -> cls_tokens (1, 64), spatial_tokens (1, 1024, 64); cls norm" in printed, printed
