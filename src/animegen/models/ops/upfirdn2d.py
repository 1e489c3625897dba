"""Upsample, FIR-filter, downsample: the resampling primitive of StyleGAN2 and StyleGAN3.

`upfirdn2d(x, f, up, down, padding)` does, per channel and in this order:
  1. upsample by inserting `up - 1` zeros after every pixel (size H -> H*up),
  2. pad with zeros (negative padding crops),
  3. convolve with the FIR filter `f` (a true convolution; `flip_filter=True` correlates),
  4. keep every `down`-th pixel.
The output side is (H*up + pad0 + pad1 - filter_size) // down + 1.

Plain PyTorch (grouped conv2d), so it runs, and is checked, on CPU; a 1-D filter is applied
separably as two 1-D passes, with the stride of step 4 folded into the convolutions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def setup_filter(f, normalize: bool = True, separable: bool | None = None, gain: float = 1.0) -> torch.Tensor:
    """A float32 FIR filter from taps. 1-D taps stay 1-D (applied separably) unless
    `separable=False`, which expands them to their 2-D outer product. Normalized to sum 1
    (in 2-D), then scaled by `gain` (in 2-D: a separable filter's taps get sqrt(gain))."""
    f = torch.as_tensor(np.asarray(1.0 if f is None else f, dtype=np.float32))
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"a FIR filter must be a non-empty 1-D or 2-D array, got shape {tuple(f.shape)}")
    if f.ndim == 1 and separable is False:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    return f * (gain ** (f.ndim / 2))


def _parse_padding(padding) -> tuple[int, int, int, int]:
    """int -> all sides; (px, py) -> x and y; (x0, x1, y0, y1) as is."""
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding}")
    return padding


def _filter_size(f: torch.Tensor) -> tuple[int, int]:
    """(width, height) of the filter in pixels."""
    return (f.shape[-1], f.shape[0] if f.ndim == 2 else f.shape[-1])


def _zero_insert(x: torch.Tensor, up: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H*up, W*up) with every pixel followed by up-1 zeros in each axis."""
    if up == 1:
        return x
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    return x.reshape(n, c, h * up, w * up)


def _depthwise(x: torch.Tensor, taps: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Correlate every channel with the same 2-D `taps` (kh, kw), with the given (sy, sx) stride."""
    c = x.shape[1]
    weight = taps.to(x.dtype)[None, None].expand(c, 1, *taps.shape)
    return F.conv2d(x, weight, stride=stride, groups=c)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1, padding=0,
              flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images (N, C, H, W); see module doc.

    `f` is a filter from `setup_filter` (1-D: separable, 2-D: full) or None (identity).
    `gain` scales the output (upsampling callers pass up**2 to keep the signal's magnitude).
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects (N, C, H, W), got shape {tuple(x.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    f = torch.ones(1, 1) if f is None else f
    x0, x1, y0, y1 = _parse_padding(padding)

    x = _zero_insert(x, up)
    x = F.pad(x, [x0, x1, y0, y1])
    # conv2d correlates; a true convolution flips the taps.
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * gain if f.ndim == 2 else f * (gain ** 0.5)
    if f.ndim == 2:
        return _depthwise(x, f, stride=(down, down))
    x = _depthwise(x, f[None, :], stride=(1, down))
    return _depthwise(x, f[:, None], stride=(down, 1))


def filter2d(x: torch.Tensor, f: torch.Tensor, padding=0, flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """FIR-filter at the same resolution; extra `padding` widens the output."""
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = (x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, padding=0, flip_filter: bool = False,
               gain: float = 1.0) -> torch.Tensor:
    """Upsample by `up` (output H*up x W*up), interpolating with `f`; the gain of up**2 makes up
    for the inserted zeros."""
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = (x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2, padding=0, flip_filter: bool = False,
                 gain: float = 1.0) -> torch.Tensor:
    """Low-pass with `f`, then keep every `down`-th pixel (output H/down x W/down)."""
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = (x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2, y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2)
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)
