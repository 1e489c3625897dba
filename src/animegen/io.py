"""Small helpers shared by every module: atomic writes, image grids, durations as people read them."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from animegen.errors import UserError
from animegen.settings import check_int

SHOWN_SIDE = 128  # px an image is shown at, at least, by default in grids, strips and videos
MAX_SCALE = 64
MAX_SHOWN_BYTES = 2 * 2**30  # an enlarged grid or video, held in memory
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "lanczos": Image.Resampling.LANCZOS}
LABEL_SIZE = 12  # px of the text above a strip's columns


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that becomes `final` only if the block succeeds.

    An interrupted or failed block leaves no folder at `final`, so nothing half-written
    can later pass for a complete output.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; choose another --out or delete it first.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder normal permissions
    try:
        yield tmp
        old = _set_aside(final) if final.exists() else None
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder so that a kill midway leaves only a hidden temporary (which the run
    folder's cleanup removes), never a half-deleted folder under its real name."""
    shutil.rmtree(_set_aside(Path(path)))


def _set_aside(path: Path) -> Path:
    aside = path.with_name(f".{path.name}.tmp-del-{os.getpid()}")
    os.replace(path, aside)
    return aside


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temporary sibling and a rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def append_json_line(path: str | os.PathLike, obj) -> None:
    """Append `obj` as one line of a JSON-lines log (a run's metrics.jsonl)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images (N, H, W, 3) into one uint8 picture, `columns` wide (default: square)."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_grid(images: np.ndarray, path: str | os.PathLike, columns: int | None = None, scale: int = 1,
              resample: str = "nearest", labels: list[str] | None = None) -> Path:
    """Save uint8 NHWC images as one PNG grid, atomically: each enlarged `scale` times
    (`enlarge`), with `labels` above the columns if given."""
    import io

    shown = enlarge(images, scale, resample)
    picture = image_grid(shown, columns)
    if labels:
        picture = label_columns(picture, labels, shown.shape[2])
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def shown_scale(resolution: int, scale: int | None = None, images: int = 1) -> int:
    """`scale` checked, or by default the smallest whole factor that shows a `resolution`-px
    image at SHOWN_SIDE px or more (4 for 32 px faces, 1 from 128 px): a 32 px GIF or strip
    at its own size is a postage stamp. `images` of that size must fit MAX_SHOWN_BYTES."""
    chosen = max(1, math.ceil(SHOWN_SIDE / resolution)) if scale is None else check_int("--scale", scale, 1, MAX_SCALE)
    size = images * (resolution * chosen) ** 2 * 3
    if size > MAX_SHOWN_BYTES:
        raise UserError(f"--scale {chosen}: {images} images of {resolution * chosen} px would take "
                        f"{size / 2**30:.1f} GiB of memory (at most {MAX_SHOWN_BYTES / 2**30:g}); choose a smaller --scale.")
    return chosen


def enlarge(images: np.ndarray, scale: int, resample: str = "nearest") -> np.ndarray:
    """uint8 images (N, H, W, 3) `scale` times larger: by default each pixel a square block
    (nearest neighbour: the pixels the model made, shown honestly), or Pillow's bilinear or
    Lanczos resampling (smoother, with values the model never produced)."""
    if resample not in RESAMPLING:
        raise UserError(f"--resample {resample!r}: choose {', '.join(RESAMPLING)}.")
    if scale == 1:
        return images
    if resample == "nearest":
        return images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = images.shape
    return np.stack([np.asarray(Image.fromarray(image).resize((w * scale, h * scale), RESAMPLING[resample]))
                     for image in images])


def label_columns(picture: np.ndarray, labels: list[str], width: int, pad: int = 2) -> np.ndarray:
    """An `image_grid` picture of `width`-px images with `labels` written above its columns
    in Pillow's own font (no font files); a label wider than its column keeps its last word."""
    font = ImageFont.load_default(size=LABEL_SIZE)
    band = Image.new("RGB", (picture.shape[1], LABEL_SIZE + 2 * pad + 2), "white")
    draw = ImageDraw.Draw(band)
    for i, text in enumerate(labels):
        shown = text if font.getlength(text) <= width else text.split()[-1]
        draw.text((pad + i * (width + pad) + width / 2, band.height / 2), shown, fill="black", font=font, anchor="mm")
    return np.concatenate([np.asarray(band), picture])


def to_uint8(images) -> np.ndarray:
    """Map float images in [-1, 1] (torch NCHW) to uint8 NHWC the way StyleGAN's metrics do:
    x*127.5 + 128, clamped to [0, 255], truncated. An image and its saved PNG then agree."""
    import torch

    x = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def duration(seconds: float) -> str:
    """"1h02m", "4m05s": how long something takes, for a log line."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
