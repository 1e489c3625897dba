"""Writing frames (uint8 H x W x 3 arrays) as a GIF (Pillow) or an MP4 (imageio with
imageio-ffmpeg, the optional extra `animegen[video]`), atomically: the file appears only
when complete."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from animegen.errors import UserError
from animegen.io import atomic_write_bytes

VIDEO_FORMATS = (".gif", ".mp4")
MP4_MISSING = "MP4 needs `pip install animegen[video]`; .gif and .png work without it."


def check_video_writer(path: str | os.PathLike) -> None:
    """Refuse, before any work, a video that cannot be written here: MP4 without imageio-ffmpeg."""
    if Path(path).suffix.lower() == ".mp4":
        _imageio()


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float) -> Path:
    """`frames` as the GIF or MP4 `path` (by its extension), `fps` frames a second."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return write_gif(path, frames, fps)
    if suffix == ".mp4":
        return write_mp4(path, frames, fps)
    raise UserError(f"{path}: a video is {' or '.join(VIDEO_FORMATS)}.")


def write_gif(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float) -> Path:
    atomic_write_bytes(path, gif_bytes(frames, fps))
    return Path(path)


def gif_bytes(frames: Sequence[np.ndarray], fps: float) -> bytes:
    """A looping GIF. GIF delays count hundredths of a second, so the frame rate is rounded
    to one; Pillow also merges consecutive identical frames (their delays add up)."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(100 / fps) * 10))
    return buf.getvalue()


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float) -> Path:
    """An H.264 MP4 (yuv420p, so any player shows it; frame sides must be even), made in a
    temporary folder (ffmpeg writes the file piecemeal) and then written atomically."""
    imageio = _imageio()
    with tempfile.TemporaryDirectory(prefix="animegen-video-") as folder:
        made = Path(folder) / "video.mp4"
        with imageio.get_writer(made, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=2, quality=8) as writer:
            for frame in frames:
                writer.append_data(frame)
        atomic_write_bytes(path, made.read_bytes())
    return Path(path)


def _imageio():
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()  # the ffmpeg binary imageio writes MP4 with
    except (ImportError, RuntimeError):
        raise UserError(MP4_MISSING) from None
    return imageio
