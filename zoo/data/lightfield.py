"""Light fields for super-resolution: BasicLFSR's data files, its preprocessing, and a synthetic dataset.

A light field of U x V views of H x W pixels is handled as its sub-aperture image (SAI) mosaic (U*H, V*W), view
(u, v) at rows u*H:(u+1)*H and columns v*W:(v+1)*W, and only its Y channel is super-resolved.

- `rgb_to_ycbcr`: MATLAB's rgb2ycbcr for RGB in [0, 1] (Y in [16, 235] / 255), as BasicLFSR prepares its data.
- `imresize`: MATLAB's bicubic imresize (Keys cubic a = -0.5, antialiased when shrinking, symmetric borders),
  which makes BasicLFSR's LR inputs; it differs from torch's bicubic (no antialiasing, other borders).
- `read_mat_light_field`: a raw dataset file (`LF` of (U, V, H, W, 3), MATLAB v5 via scipy or v7.3 via h5py),
  its central views cropped as BasicLFSR does; `prepare_light_field` makes the (LR Y, HR Y) mosaics from it.
- `BasicLFSRTrainingSet` / `BasicLFSRTestSet`: the `.h5` files of BasicLFSR's Generate_Data_for_* scripts
  (`Lr_SAI_y`, `Hr_SAI_y`, and `Sr_SAI_cbcr` for tests, stored transposed); training items get BasicLFSR's random
  flips and transpose (`augment`).
- `lf_divide` / `lf_integrate`: BasicLFSR's patch inference (overlapping patches with symmetric extension).
- `SyntheticLightFields`: textured planes at several depths rendered to U x V views with their disparities, made
  from a seed; no download.

Samples are the `restoration` kind: {"degraded": LR Y mosaic (1, U*h, V*w), "clean": HR Y mosaic (1, U*H, V*W)},
float32 in [0, 1].
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset

from zoo.errors import ConfigError, InputError

from .shapes import item_rng

# MATLAB rgb2ycbcr for R, G, B in [0, 1]: rows Y, Cb, Cr, then the offsets, all over 255.
_YCBCR = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def _need(module: str, install: str = "pip install mmzoo[lightfield]"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"Reading light-field files needs {module.split('.')[0]}: {install}") from error


def rgb_to_ycbcr(rgb: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """(..., 3) RGB in [0, 1] -> (..., 3) YCbCr in [0, 1] with MATLAB's coefficients (Y in [16/255, 235/255])."""
    if isinstance(rgb, Tensor):
        matrix = torch.as_tensor(_YCBCR, dtype=rgb.dtype, device=rgb.device)
        offset = torch.as_tensor(_YCBCR_OFFSET, dtype=rgb.dtype, device=rgb.device)
        return (rgb @ matrix.T + offset) / 255.0
    return (np.asarray(rgb, dtype=np.float64) @ _YCBCR.T + _YCBCR_OFFSET) / 255.0


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_ycbcr`."""
    return (np.asarray(ycbcr, dtype=np.float64) * 255.0 - _YCBCR_OFFSET) @ np.linalg.inv(_YCBCR).T


# ---------------------------------------------------------------------------------------------------------------
# MATLAB's bicubic imresize


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    x = np.abs(x)
    return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0))


def imresize_matrix(in_length: int, out_length: int, scale: float) -> np.ndarray:
    """The (out_length, in_length) float64 matrix of MATLAB's bicubic imresize along one axis.

    Output pixel i (1-based) sits at u = i / scale + (1 - 1 / scale) / 2 in input coordinates; when shrinking, the
    kernel is stretched by 1 / scale (antialiasing). Each row's weights are normalised to sum to one, and taps
    beyond the border fold back symmetrically (the edge pixel repeated).
    """
    kernel_width = 4.0 / scale if scale < 1 else 4.0
    stretch = scale if scale < 1 else 1.0
    u = np.arange(1, out_length + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = left[:, None] + np.arange(math.ceil(kernel_width) + 2)  # 1-based input positions
    weights = stretch * _cubic(stretch * (u[:, None] - taps))
    weights /= weights.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    columns = mirror[(taps.astype(np.int64) - 1) % (2 * in_length)]
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps.shape[1]), columns.ravel()), weights.ravel())
    return matrix


def imresize(image: np.ndarray | Tensor, scale: float) -> np.ndarray | Tensor:
    """MATLAB's `imresize(image, scale, 'bicubic')` of an (H, W) or (H, W, C) float image; the output is
    (ceil(H * scale), ceil(W * scale)[, C]) in float64 for numpy, the input's dtype for a tensor."""
    if scale <= 0:
        raise ConfigError(f"imresize: scale must be positive, got {scale}")
    is_tensor = isinstance(image, Tensor)
    array = image.detach().cpu().double().numpy() if is_tensor else np.asarray(image, dtype=np.float64)
    if array.ndim not in (2, 3):
        raise InputError(f"imresize takes an (H, W) or (H, W, C) image, got shape {array.shape}")
    h, w = array.shape[:2]
    rows = imresize_matrix(h, math.ceil(h * scale), scale)
    cols = imresize_matrix(w, math.ceil(w * scale), scale)
    out = np.einsum("ih,hw...,jw->ij...", rows, array, cols)
    return torch.from_numpy(out).to(image.dtype) if is_tensor else out


# ---------------------------------------------------------------------------------------------------------------
# Files


def read_mat_light_field(path: str | Path, angular_resolution: int = 5) -> np.ndarray:
    """The central `angular_resolution`^2 views of a raw light-field file, float64 (U, V, H, W, 3) in [0, 1].

    The file holds `LF` as (U, V, H, W, 3+) (MATLAB v5, read by scipy) or transposed (MATLAB v7.3 / HDF5, read by
    h5py). Integer data is scaled by its type's maximum.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Light-field file {path} does not exist.")
    light_field = None
    h5py = _need("h5py")
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            if "LF" in file:
                light_field = np.array(file["LF"]).transpose(4, 3, 2, 1, 0)
    else:
        io = _need("scipy.io", "pip install scipy (MATLAB v5 files)")
        light_field = io.loadmat(str(path)).get("LF")
    if light_field is None or light_field.ndim != 5 or light_field.shape[-1] < 3:
        raise InputError(f"{path} holds no light field 'LF' of (U, V, H, W, 3); BasicLFSR's datasets do.")
    u, v = light_field.shape[:2]
    a = angular_resolution
    if u < a or v < a:
        raise InputError(f"{path} has {u}x{v} views, fewer than the {a}x{a} asked for.")
    light_field = light_field[(u - a) // 2:(u + a) // 2, (v - a) // 2:(v + a) // 2, :, :, :3]
    if np.issubdtype(light_field.dtype, np.integer):
        return light_field.astype(np.float64) / np.iinfo(light_field.dtype).max
    return light_field.astype(np.float64)


def prepare_light_field(light_field: np.ndarray, scale: int) -> tuple[Tensor, Tensor]:
    """(LR Y, HR Y) mosaics (1, U*h, V*w), (1, U*H, V*W) float32 from RGB views (U, V, H, W, 3) in [0, 1], as
    BasicLFSR's Generate_Data_for_Test: H and W cropped to multiples of 4, Y from MATLAB's YCbCr, each view shrunk
    by MATLAB's bicubic imresize."""
    u, v, h, w, _ = light_field.shape
    light_field = light_field[:, :, : h // 4 * 4, : w // 4 * 4]
    y = rgb_to_ycbcr(light_field)[..., 0]
    lr = np.stack([np.stack([imresize(y[i, j], 1 / scale) for j in range(v)]) for i in range(u)])
    mosaic = "u v h w -> 1 (u h) (v w)"
    return (torch.from_numpy(rearrange(lr, mosaic)).float(), torch.from_numpy(rearrange(y, mosaic)).float())


def _h5_list(root: str | Path) -> list[Path]:
    root = Path(root)
    files = sorted(root.rglob("*.h5")) if root.is_dir() else [root]
    if not files or not files[0].is_file():
        raise InputError(f"No BasicLFSR .h5 files under {root} (make them with BasicLFSR's Generate_Data_for_*).")
    return files


def augment(lr: Tensor, hr: Tensor, rng: random.Random | None = None) -> tuple[Tensor, Tensor]:
    """BasicLFSR's training augmentation of (LR, HR) mosaics (..., U*h, V*w), each with probability 1/2: flip the
    columns (V and W together), flip the rows (U and H), transpose (U <-> V and H <-> W)."""
    rng = rng or random
    if rng.random() < 0.5:
        lr, hr = lr.flip(-1), hr.flip(-1)
    if rng.random() < 0.5:
        lr, hr = lr.flip(-2), hr.flip(-2)
    if rng.random() < 0.5:
        lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
    return lr.contiguous(), hr.contiguous()


class BasicLFSRTrainingSet(Dataset):
    """BasicLFSR's training patches (`Lr_SAI_y`, `Hr_SAI_y` per .h5 file under `root`), with `augment` when
    `augmentation`. Files are stored transposed; items are upright mosaics (BasicLFSR's own loader reads them
    transposed, which its random transpose makes equivalent)."""

    def __init__(self, root: str | Path, augmentation: bool = True, seed: int | None = None):
        self.files = _h5_list(root)
        self.augmentation = augmentation
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        h5py = _need("h5py")
        with h5py.File(self.files[index], "r") as file:
            lr = torch.from_numpy(np.array(file["Lr_SAI_y"], dtype=np.float32).T.copy())[None]
            hr = torch.from_numpy(np.array(file["Hr_SAI_y"], dtype=np.float32).T.copy())[None]
        if self.augmentation:
            lr, hr = augment(lr, hr, self.rng)
        return {"degraded": lr, "clean": hr}


class BasicLFSRTestSet(Dataset):
    """BasicLFSR's test scenes: one .h5 file per scene under `root` (e.g. `SR_5x5_4x/HCI_new`), giving
    {"degraded", "clean", "cbcr": bicubic-upsampled Cb, Cr (2, U*H, V*W), "name"}."""

    def __init__(self, root: str | Path):
        self.files = _h5_list(root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        h5py = _need("h5py")
        with h5py.File(self.files[index], "r") as file:
            lr = np.array(file["Lr_SAI_y"], dtype=np.float32).T
            hr = np.array(file["Hr_SAI_y"], dtype=np.float32).T
            cbcr = np.array(file["Sr_SAI_cbcr"], dtype=np.float32).transpose(0, 2, 1)
        return {"degraded": torch.from_numpy(lr.copy())[None], "clean": torch.from_numpy(hr.copy())[None],
                "cbcr": torch.from_numpy(cbcr.copy()), "name": self.files[index].stem}


# ---------------------------------------------------------------------------------------------------------------
# Patch inference


def _symmetric_index(length: int, before: int, after: int) -> Tensor:
    """Indices of a symmetric extension (edge repeated) of `length` by `before` and `after` samples."""
    index = torch.arange(-before, length + after) % (2 * length)
    return torch.where(index < length, index, 2 * length - 1 - index)


def lf_divide(mosaic: Tensor, angular_resolution: int, patch_size: int, stride: int) -> Tensor:
    """BasicLFSR's LFdivide: a mosaic (U*H, V*W) -> overlapping patch mosaics (n1, n2, U*p, V*p).

    Each view is extended symmetrically by (p - stride) // 2 before and that plus stride - 1 after, then cut into
    p x p patches every `stride` pixels, so the centres (stride x stride) of the patches tile the view.
    """
    a = angular_resolution
    views = rearrange(mosaic, "(u h) (v w) -> (u v) 1 h w", u=a, v=a)
    h, w = views.shape[-2:]
    border = (patch_size - stride) // 2
    rows = _symmetric_index(h, border, border + stride - 1)
    cols = _symmetric_index(w, border, border + stride - 1)
    extended = views[..., rows, :][..., cols]
    n1 = (len(rows) - patch_size) // stride + 1
    patches = torch.nn.functional.unfold(extended, kernel_size=patch_size, stride=stride)
    return rearrange(patches, "(u v) (h w) (n1 n2) -> n1 n2 (u h) (v w)", u=a, v=a, h=patch_size, n1=n1)


def lf_integrate(patches: Tensor, angular_resolution: int, patch_size: int, stride: int, height: int,
                 width: int) -> Tensor:
    """BasicLFSR's LFintegrate: patch mosaics (n1, n2, U*p, V*p) -> views (U, V, height, width) from the centres."""
    a = angular_resolution
    patches = rearrange(patches, "n1 n2 (u h) (v w) -> n1 n2 u v h w", u=a, v=a)
    border = (patch_size - stride) // 2
    centres = patches[..., border:border + stride, border:border + stride]
    return rearrange(centres, "n1 n2 u v h w -> u v (n1 h) (n2 w)")[..., :height, :width]


# ---------------------------------------------------------------------------------------------------------------
# Synthetic light fields


def _texture(rng: np.random.Generator, components: int = 8) -> dict[str, np.ndarray]:
    """A random grey texture: sinusoids of random orientation, frequencies log-uniform in [0.01, 0.2] cycles per
    pixel with amplitudes falling as 1 / frequency (as natural images), plus one set of sharp-edged stripes."""
    freq = np.exp(rng.uniform(np.log(0.01), np.log(0.2), components))
    amp = 0.02 / freq * rng.uniform(0.5, 1.0, components)
    return {
        "freq": freq,
        "angle": rng.uniform(0, np.pi, components),
        "phase": rng.uniform(0, 2 * np.pi, components),
        "amp": amp * 0.35 / amp.sum(),
        "stripe": np.array([rng.uniform(0.02, 0.08), rng.uniform(0, np.pi), rng.uniform(0.05, 0.15)]),
        "mean": np.array([rng.uniform(0.3, 0.7)]),
    }


def _shade(texture: dict[str, np.ndarray], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The texture at continuous positions (y, x)."""
    value = np.full(np.broadcast(y, x).shape, texture["mean"][0])
    for f, angle, phase, amp in zip(texture["freq"], texture["angle"], texture["phase"], texture["amp"]):
        value += amp * np.sin(2 * np.pi * f * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    f, angle, amp = texture["stripe"]
    value += amp * np.sign(np.sin(2 * np.pi * f * (x * np.cos(angle) + y * np.sin(angle))))
    return value


class SyntheticLightFields(Dataset):
    """Light fields of textured fronto-parallel planes at several depths, rendered from a seed.

    A scene is a background plane and `planes` - 1 discs in front of it, each with its own texture and disparity
    d (pixels per view step, drawn from `disparity`; nearer planes have larger d). View (u, v), with offsets
    (du, dv) = (u - c, v - c) from the centre c = (U - 1) / 2, shows a plane's texture point (y, x) at
    (y - d du, x - d dv), and nearer planes occlude farther ones. The views (`image_size` / U pixels square) are the
    clean Y; each is shrunk by `scale` with MATLAB's bicubic imresize for the degraded one. `image_size` is the
    clean mosaic size (U * view size), as for the other restoration datasets.
    """

    def __init__(self, num_samples: int = 200, image_size: int = 160, scale: int = 2, seed: int = 0,
                 split: str = "train", angular_resolution: int = 5, planes: int = 3,
                 disparity: tuple[float, float] = (-1.5, 1.5)):
        if image_size % angular_resolution or (image_size // angular_resolution) % scale:
            raise ConfigError(
                f"SyntheticLightFields: image_size ({image_size}) must be {angular_resolution} views whose size "
                f"is divisible by scale ({scale})."
            )
        self.num_samples, self.image_size, self.scale = num_samples, image_size, scale
        self.seed, self.split = seed, split
        self.angular_resolution, self.planes, self.disparity = angular_resolution, planes, tuple(disparity)
        item_rng(seed, split, 0)  # checks the split

    def __len__(self) -> int:
        return self.num_samples

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The clean views (U, V, H, W) of item `index` and its planes' disparities, far to near."""
        rng = item_rng(self.seed, self.split, index)
        a, size = self.angular_resolution, self.image_size // self.angular_resolution
        disparities = np.sort(rng.uniform(*self.disparity, self.planes))
        textures = [_texture(rng) for _ in range(self.planes)]
        discs = [(rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0.15, 0.4) * size) for _ in range(self.planes)]
        y, x = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
        views = np.zeros((a, a, size, size))
        centre = (a - 1) / 2
        for u in range(a):
            for v in range(a):
                for k, (d, texture) in enumerate(zip(disparities, textures)):
                    ty, tx = y + d * (u - centre), x + d * (v - centre)  # this view's pixel -> texture point
                    layer = _shade(texture, ty, tx)
                    if k == 0:
                        views[u, v] = layer
                    else:
                        (cy, cx), radius = discs[k]
                        inside = (ty - cy) ** 2 + (tx - cx) ** 2 <= radius**2
                        views[u, v] = np.where(inside, layer, views[u, v])
        return np.clip(views, 0.0, 1.0), disparities

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        views, _ = self.render(index)
        a = self.angular_resolution
        lr = np.stack([np.stack([imresize(views[i, j], 1 / self.scale) for j in range(a)]) for i in range(a)])
        mosaic = "u v h w -> 1 (u h) (v w)"
        return {"degraded": torch.from_numpy(rearrange(lr, mosaic)).float().clamp(0, 1),
                "clean": torch.from_numpy(rearrange(views, mosaic)).float()}


__all__ = [
    "BasicLFSRTestSet", "BasicLFSRTrainingSet", "SyntheticLightFields", "augment", "imresize", "imresize_matrix",
    "lf_divide", "lf_integrate", "prepare_light_field", "read_mat_light_field", "rgb_to_ycbcr", "ycbcr_to_rgb",
]
