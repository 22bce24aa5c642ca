"""Writing generated videos to disk: MP4 (H.264 through PyAV's bundled FFmpeg) or GIF (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".gif")


def export_video(frames: np.ndarray | Sequence, path: str | Path, fps: float = 16) -> Path:
    """Write `frames` to `path` as MP4 or GIF, chosen by its suffix; returns the path.

    frames: an array (F, H, W, 3) of floats in [0, 1] or of uint8 (a pipeline's `frames[i]` with
    output_type "np"), or a list of PIL images. MP4 needs an even height and width (yuv420p).
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"Cannot write a video to '{path}': use a {' or '.join(VIDEO_SUFFIXES)} file name.")
    video = _as_uint8(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        _write_gif(video, path, fps)
    else:
        _write_mp4(video, path, fps)
    return path


def _as_uint8(frames: np.ndarray | Sequence) -> np.ndarray:
    """(F, H, W, 3) uint8 frames from float [0, 1] or uint8 arrays or PIL images."""
    video = np.stack([np.asarray(frame) for frame in frames])
    if video.ndim != 4 or video.shape[-1] != 3 or not len(video):
        raise InputError(f"Expected frames of shape (F, H, W, 3) with F >= 1, got {video.shape}.")
    if video.dtype == np.uint8:
        return video
    return (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)


def _write_gif(video: np.ndarray, path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in video]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def _write_mp4(video: np.ndarray, path: Path, fps: float) -> None:
    import av

    height, width = video.shape[1:3]
    if height % 2 or width % 2:
        raise InputError(f"MP4 (H.264, yuv420p) needs an even height and width, got {height} x {width}; write a GIF.")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
