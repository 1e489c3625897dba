"""Reading untrusted image files: find them in folders and zips, decode them to RGB.

Every input that cannot become an image raises `BadImage` with a reason a person can
act on, so callers can skip it and say why. Decoding rules (one place, used by
`data prepare`):

- EXIF orientation is applied; animated files give their first frame.
- Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited on white.
- 16-bit grayscale (I;16*, and I, read as 16-bit) is scaled to 8 bits as round(v * 255 / 65535);
  Pillow's own conversion would clip everything above 255 to white.
- CMYK, palette, 1-bit and grayscale go through Pillow's conversion to RGB (ICC profiles are ignored).
- Images over MAX_PIXELS pixels are refused before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from animegen.errors import UserError

MAX_PIXELS = 64 * 2**20  # 8192 x 8192: far above any real face image, far below memory trouble
WHITE = (255, 255, 255)


class BadImage(Exception):
    """This input is not a usable image; the message is the reason."""


@dataclass(frozen=True)
class ImageFile:
    """One candidate image: a file on disk, or a member of a zip file (`archive`)."""

    name: str
    archive: str | None = None

    @property
    def label(self) -> str:
        return f"{self.archive}:{self.name}" if self.archive else self.name


def list_files(sources: Iterable[str]) -> list[ImageFile]:
    """Every file under the sources: folders (recursive), zip files (their members) and single files.

    Non-image files are listed too; decoding them later gives the reason they are skipped.
    """
    found = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += [ImageFile(str(p)) for p in sorted(path.rglob("*")) if p.is_file()]
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                found += [ImageFile(m.filename, str(path)) for m in z.infolist() if not m.is_dir()]
        elif path.suffix.lower() == ".zip" and path.is_file():
            raise UserError(f"{path} is not a readable zip file.")
        elif path.is_file():
            found.append(ImageFile(str(path)))
        else:
            raise UserError(f"source {path} does not exist (expected a folder, a zip file or an image file).")
    return found


def read_files(files: Iterable[ImageFile]) -> Iterator[tuple[ImageFile, bytes | BadImage]]:
    """Each file's bytes, or the BadImage saying why they could not be read; opens each zip once."""
    with contextlib.ExitStack() as stack:
        archives: dict[str, zipfile.ZipFile] = {}
        for f in files:
            try:
                if f.archive is None:
                    data = Path(f.name).read_bytes()
                else:
                    if f.archive not in archives:
                        archives[f.archive] = stack.enter_context(zipfile.ZipFile(f.archive))
                    data = archives[f.archive].read(f.name)
            except (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error) as e:
                # unreadable file, or a damaged, encrypted or oddly compressed zip member
                yield f, BadImage(f"cannot read: {e}")
                continue
            yield f, data


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image file bytes to a uint8 H x W x 3 RGB array (rules in the module docstring);
    more than `max_pixels` pixels are refused from the header."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice that; make it a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
            if im.width * im.height > max_pixels:
                raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels")
            im = ImageOps.exif_transpose(im)  # also decodes frame 0 (a copy)
            im.load()
            return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused as a possible decompression bomb (limit {max_pixels} pixels): {e}") from None
    except UnidentifiedImageError:
        raise BadImage("not a recognized image format") from None
    except BadImage:
        raise
    except Exception as e:  # decoders of damaged files raise many types (OSError, SyntaxError, ValueError, ...)
        raise BadImage(f"cannot decode: {type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        background = Image.new("RGBA", im.size, WHITE + (255,))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    elif im.mode == "I" or im.mode.startswith("I;16"):
        wide = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        im = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif im.mode == "F":
        raise BadImage("unsupported pixel format: 32-bit float (mode F)")
    return np.asarray(im.convert("RGB"))
