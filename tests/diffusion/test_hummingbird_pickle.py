"""Reading AMD-Hummingbird's whole-module pickles safely: zoo.safe_pickle on stand-in lvdm modules written here, the
release folder through zoo.from_pretrained and `zoo convert`, and hostile pickles, each refused before it runs."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types
import zipfile

import pytest
import torch
from torch import nn

import zoo
from zoo import safe_pickle
from zoo.cli import main
from zoo.diffusion.hummingbird import HummingbirdConfig, HummingbirdUNet
from zoo.errors import CheckpointError
from zoo.layers.norm import GroupNorm, LayerNorm
from zoo.safe_pickle import UnsafeCheckpointError

UNET_MODULE = "lvdm.modules.networks.openaimodel3d_t2v_jun_07B"
# Stand-in tiny U-Net: 32 norm groups and init_attn of 8 heads, as the release (neither is stored in the weights).
TINY = HummingbirdConfig(model_channels=32, channel_mult=(1, 2), attention_resolutions=(1,), num_head_channels=8,
                         context_dim=24, time_cond_proj_dim=16, norm_groups=32, has_middle_block=False)


def _fake_module(monkeypatch, name: str) -> types.ModuleType:
    """An importable module `name` (and its parents) for the duration of the test, so that pickle finds classes
    defined here under the release's paths."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        dotted = ".".join(parts[:i])
        if dotted not in sys.modules:
            monkeypatch.setitem(sys.modules, dotted, types.ModuleType(dotted))
    return sys.modules[name]


def native_forward(self, *args):
    """Stands for lvdm's CrossAttention.native_forward, which the release binds per instance as `forward`."""
    return type(self).__mro__[1].forward(self, *args)


def _stand_in_class(monkeypatch, cls: type, module_name: str) -> type:
    module = _fake_module(monkeypatch, module_name)
    if not hasattr(module, cls.__name__):
        namespace = {"__module__": module_name, "native_forward": native_forward}
        setattr(module, cls.__name__, type(cls.__name__, (cls,), namespace))
    return getattr(module, cls.__name__)


def _as_release_classes(monkeypatch, model: nn.Module) -> None:
    """Re-class zoo's modules as classes living under lvdm paths (zoo's fp32 norms as torch.nn's), and bind
    `forward = native_forward` on the attentions, as a pickle of the release holds them (plain attributes instead of
    zoo's config object)."""
    config = model.__dict__.pop("config")
    model.model_channels, model.channel_mult = config.model_channels, list(config.channel_mult)
    for module in model.modules():
        cls = type(module)
        if cls is GroupNorm:
            module.__class__ = nn.GroupNorm
        elif cls is LayerNorm:
            module.__class__ = nn.LayerNorm
        elif cls.__module__.startswith("zoo."):
            module.__class__ = _stand_in_class(monkeypatch, cls, UNET_MODULE)
            if cls.__name__ == "CrossAttention":
                module.forward = module.native_forward


def _latent_diffusion(monkeypatch, unet: nn.Module) -> nn.Module:
    """A stand-in lvdm LatentDiffusion: the U-Net in model.diffusion_model, a VAE, an open_clip text tower, and the
    attributes the release pickles (a set, torch.device, torch.float32, a module-level function)."""
    ddpm = _fake_module(monkeypatch, "lvdm.models.ddpm3d")
    basics = _fake_module(monkeypatch, "lvdm.basics")

    def disabled_train(self, mode=True):
        return self

    disabled_train.__module__, disabled_train.__qualname__ = "lvdm.basics", "disabled_train"
    basics.disabled_train = disabled_train
    for name in ("LatentDiffusion", "DiffusionWrapper"):
        setattr(ddpm, name, type(name, (nn.Module,), {"__module__": "lvdm.models.ddpm3d"}))
    vae_module = _fake_module(monkeypatch, "lvdm.models.autoencoder")
    vae_module.AutoencoderKL = type("AutoencoderKL", (nn.Module,), {"__module__": "lvdm.models.autoencoder"})
    clip_module = _fake_module(monkeypatch, "open_clip.zoo_test_model")
    clip_module.CLIP = type("CLIP", (nn.Module,), {"__module__": "open_clip.zoo_test_model"})

    wrapper = ddpm.DiffusionWrapper()
    wrapper.diffusion_model = unet
    vae = vae_module.AutoencoderKL()
    vae.post_quant_conv = nn.Conv2d(4, 4, 1)
    vae.train = disabled_train
    text = clip_module.CLIP()
    text.token_embedding = nn.Embedding(10, 24)
    text.register_buffer("attn_mask", torch.ones(5, 5))
    model = ddpm.LatentDiffusion()
    model.model, model.first_stage_model, model.cond_stage_model = wrapper, vae, text
    model.register_buffer("alphas_cumprod", torch.linspace(0.99, 0.01, 1000))
    model.register_buffer("scratch", torch.zeros(3), persistent=False)
    model.device, model.dtype, model.tags = torch.device("cuda", 0), torch.float32, {"t2v", "turbo"}
    return model


@pytest.fixture
def release_folder(tmp_path):
    """A folder holding 07B_merged_all.pt, a whole pickled stand-in LatentDiffusion saved from 'cuda:0', and the
    U-Net (as zoo's class) and full state dict it holds."""
    torch.manual_seed(0)
    unet = HummingbirdUNet(TINY).eval()
    reference = HummingbirdUNet(TINY).eval()
    reference.load_state_dict(unet.state_dict())
    folder = tmp_path / "release"
    folder.mkdir()
    path = folder / "07B_merged_all.pt"
    with pytest.MonkeyPatch.context() as monkeypatch:  # the fake lvdm modules go after: the reader must not need them
        _as_release_classes(monkeypatch, unet)
        model = _latent_diffusion(monkeypatch, unet)
        expected = {k: v.clone() for k, v in model.state_dict().items()}
        monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(model, path)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"cuda:0" in data and b"native_forward" in data and b"lvdm.basics" in data
    assert not any(name.startswith("lvdm") for name in sys.modules)
    return folder, reference, expected


def test_reads_the_whole_module_state_dict_without_lvdm(release_folder):
    folder, _, expected = release_folder
    state_dict = safe_pickle.load_module_state_dict(folder / "07B_merged_all.pt")
    assert state_dict.keys() == expected.keys()
    assert any(k.startswith("model.diffusion_model.input_blocks.1.0.temopral_conv.") for k in state_dict)
    assert "scratch" not in state_dict  # a non-persistent buffer
    for key, value in expected.items():
        assert state_dict[key].device.type == "cpu" and torch.equal(state_dict[key], value), key


def test_bound_methods_and_attributes_become_inert_records(release_folder):
    folder, _, _ = release_folder
    root = safe_pickle.load(folder / "07B_merged_all.pt")
    assert isinstance(root, safe_pickle.Stub) and root.qualname == "lvdm.models.ddpm3d.LatentDiffusion"
    assert root.state["device"] == torch.device("cuda", 0) and root.state["dtype"] is torch.float32
    assert root.state["tags"] == {"t2v", "turbo"}
    vae = root.state["_modules"]["first_stage_model"]
    disabled_train = vae.state["train"]
    assert issubclass(disabled_train, safe_pickle.Stub) and disabled_train.qualname == "lvdm.basics.disabled_train"
    unet = root.state["_modules"]["model"].state["_modules"]["diffusion_model"]
    attention = unet.state["_modules"]["init_attn"].state["_modules"]["0"].state["_modules"]["transformer_blocks"]
    attn1 = attention.state["_modules"]["0"].state["_modules"]["attn1"]
    bound = attn1.state["forward"]
    assert isinstance(bound, safe_pickle.BoundMethodStub) and bound.owner is attn1 and bound.name == "native_forward"
    with pytest.raises(TypeError):
        bound()


def test_from_pretrained_and_convert_the_release_folder(release_folder, tmp_path):
    folder, reference, _ = release_folder
    model = zoo.from_pretrained(folder)
    assert isinstance(model, HummingbirdUNet) and model.config == TINY
    generator = torch.Generator().manual_seed(0)
    inputs = dict(x=torch.randn(1, 4, 3, 8, 8, generator=generator), timesteps=torch.tensor([500]),
                  context=torch.randn(1, 5, 24, generator=generator), fps=8,
                  timestep_cond=torch.randn(1, 16, generator=generator))  # fmt: skip
    with torch.no_grad():
        expected = reference(**inputs)
        assert torch.equal(model(**inputs), expected)

    out = tmp_path / "converted"
    assert main(["convert", str(folder), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.pt"))
    with torch.no_grad():
        assert torch.equal(zoo.from_pretrained(out)(**inputs), expected)


def test_registered_source_loads_from_the_cache_offline(release_folder, hf_cache, offline):
    """`zoo.create("hummingbird-t2v-0.7b", pretrained=True)` reads the cached release file with the restricted
    unpickler (tiny sizes given as overrides); `zoo info` shows the release's GPL-3.0 license."""
    from tests.hub_server import populate_cache

    folder, reference, _ = release_folder
    populate_cache(hf_cache, "amd/AMD-Hummingbird-T2V", folder)
    overrides = {name: getattr(TINY, name) for name in ("model_channels", "channel_mult", "attention_resolutions",
                                                        "num_head_channels", "context_dim", "time_cond_proj_dim")}
    model = zoo.create("hummingbird-t2v-0.7b", pretrained=True, **overrides)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert zoo.model_info("hummingbird-t2v-0.7b")["license"] == "gpl-3.0"
    assert zoo.model_info("hummingbird-t2v-0.9b")["sources"][0]["files"] == ["09B_merged_all.pt"]


def test_a_folder_with_both_release_files_is_an_error(release_folder):
    folder, _, _ = release_folder
    (folder / "09B_merged_all.pt").write_bytes((folder / "07B_merged_all.pt").read_bytes())
    with pytest.raises(CheckpointError, match="keep one per folder"):
        zoo.from_pretrained(folder)


# ----------------------------------------------------------------------------------------------------
# Hostile pickles: each would create the sentinel file if anything in it ran.


class _Call:
    """Pickles as `fn(*args)`: the building block of a hostile payload."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):  # the pickler wants a callable; only the unpickled payload is ever called
        raise NotImplementedError


def _global_call(module: str, name: str, argument: str) -> bytes:
    """A protocol-0 pickle calling module.name(argument), spelled out (os.system pickles as posix.system)."""
    return f"c{module}\n{name}\n(V{argument}\ntR.".encode()


def _getattr_chain(command: str) -> _Call:
    """getattr(_rebuild_tensor_v2, '__globals__').get('__builtins__').get('__import__')('os').system(command)."""
    globals_ = _Call(getattr, torch._utils._rebuild_tensor_v2, "__globals__")
    builtins_ = _Call(_Call(getattr, globals_, "get"), "__builtins__")
    import_ = _Call(_Call(getattr, builtins_, "get"), "__import__")
    return _Call(_Call(getattr, _Call(import_, "os"), "system"), command)


def _hostile_payloads(sentinel) -> dict[str, bytes]:
    touch = f"touch {sentinel}"
    write = f"open({str(sentinel)!r}, 'w').close()"
    stub = "lvdm.models.ddpm3d\nLatentDiffusion\n"
    return {
        "os.system": _global_call("os", "system", touch),
        "posix.system": _global_call("posix", "system", touch),
        "getattr-chain": pickle.dumps(_getattr_chain(touch), protocol=2),
        "eval": pickle.dumps(_Call(eval, write), protocol=2),
        "exec": pickle.dumps(_Call(exec, write), protocol=2),
        "subprocess": pickle.dumps(_Call(subprocess.call, ["touch", str(sentinel)]), protocol=2),
        "subprocess-popen": _global_call("subprocess", "Popen", touch),
        # getattr on a stub reaches no real attribute: a private name is refused outright
        "stub-private-getattr": f"cbuiltins\ngetattr\n(c{stub}(tRV__init__\ntR.".encode(),
        # a lookalike module path is not under an allowed prefix
        "lookalike-prefix": _global_call("lvdm_evil", "run", touch),
    }


HOSTILE = ["os.system", "posix.system", "getattr-chain", "eval", "exec", "subprocess", "subprocess-popen",
           "stub-private-getattr", "lookalike-prefix"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_raw_pickles_are_refused_and_nothing_runs(kind, tmp_path):
    sentinel = tmp_path / "ran"
    path = tmp_path / "07B_merged_all.pt"
    path.write_bytes(_hostile_payloads(sentinel)[kind])
    with pytest.raises(UnsafeCheckpointError, match="refused.*Nothing in it was run"):
        safe_pickle.load(path)
    with pytest.raises(UnsafeCheckpointError):
        zoo.from_pretrained(tmp_path)
    assert not sentinel.exists()
    # the payloads are live: an ordinary unpickler would have run them (checked only for a harmless one)
    if kind == "eval":
        pickle.loads(path.read_bytes())
        assert sentinel.exists()


@pytest.mark.parametrize("kind", ["getattr-chain", "os.system-attribute"])
def test_hostile_objects_inside_a_torch_save_module_are_refused(kind, tmp_path, monkeypatch):
    """The payload sits in the state of an otherwise legitimate stand-in module saved by torch.save (zip format)."""
    sentinel = tmp_path / "ran"
    ddpm = _fake_module(monkeypatch, "lvdm.models.ddpm3d")
    ddpm.LatentDiffusion = type("LatentDiffusion", (nn.Module,), {"__module__": "lvdm.models.ddpm3d"})
    model = ddpm.LatentDiffusion()
    model.proj = nn.Linear(2, 2)
    model.hook = _getattr_chain(f"touch {sentinel}") if kind == "getattr-chain" else os.system
    torch.save(model, tmp_path / "09B_merged_all.pt")
    with pytest.raises(UnsafeCheckpointError):
        safe_pickle.load_module_state_dict(tmp_path / "09B_merged_all.pt")
    assert not sentinel.exists()


def test_a_state_dict_checkpoint_is_not_a_whole_module(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="does not pickle a whole"):
        safe_pickle.load_module_state_dict(tmp_path / "state.pt")
