"""Filtered leaky ReLU: StyleGAN3's alias-free nonlinearity (Karras et al. 2021, sec. 3.2).

A pointwise nonlinearity creates frequencies above the signal's band; applied at the
layer's own sampling rate they would alias back into it. So the signal is first upsampled
(an ideal interpolation approximated by the FIR filter `fu`), the leaky ReLU is applied at
the higher rate, and the result is low-passed by `fd` and decimated back down:

    x -> + bias -> upfirdn2d(up, fu, padding) -> leaky ReLU * gain, clamp -> upfirdn2d(fd, down)

Plain PyTorch on top of `upfirdn2d`, so it runs (and is differentiable) on any device. A
separable (1-D) filter runs as two matrix products with the per-axis resampling matrix,
which `upfirdn2d` itself builds from an identity: dense GEMMs beat depthwise convolutions
(2.5x forward + backward on CPU, where depthwise backward is slow) and suit GPUs' tensor
cores. A caller that owns fixed filters passes a `cache` dict (one per filter), and each
matrix is built once per shape, dtype and device. A 2-D (radial) filter goes through `upfirdn2d` directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from animegen.models.ops.upfirdn2d import upfirdn2d


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor, fd: torch.Tensor, bias: torch.Tensor | None = None,
                   up: int = 1, down: int = 1, padding=0, gain: float = math.sqrt(2), slope: float = 0.2,
                   clamp: float | None = None, cache: dict | None = None) -> torch.Tensor:
    """Bias, upsample by `up` with `fu`, leaky ReLU (negative slope `slope`) times `gain`,
    clamp to [-clamp, clamp], then low-pass with `fd` and keep every `down`-th pixel.

    `padding` (int or x0, x1, y0, y1) is applied once, to the zero-inserted signal before
    `fu`; it fixes the output size, which is (H*up + pad - len(fu) - len(fd) + 1) // down + 1.
    With gain 1 and slope 1 the layer is linear (StyleGAN3's ToRGB). `cache`: a dict this
    function keeps the matrices of `fu` and `fd` in (see the module doc).
    """
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    up_cache, down_cache = (None, None) if cache is None else (cache.setdefault("up", {}), cache.setdefault("down", {}))
    x = resample(x, fu, up=up, padding=padding, gain=up * up, cache=up_cache)  # up**2 restores the zero-inserted energy
    if clamp is not None:
        # gain * clamp(y, c / gain) == clamp(gain * y, c): the gain rides on fd, free; and
        # clamp(lrelu(y), -c, c) == lrelu(clamp(y, -c / slope, c)) for slope > 0, so the leaky
        # ReLU can go last, in place. hardtanh is clamp with a one-kernel backward (clamp's
        # takes four passes and a copy).
        x = F.hardtanh(x, -clamp / gain / slope, clamp / gain)
    if slope != 1:  # in place: x is this function's own fresh tensor, and leaky_relu_'s backward needs only its result
        x = F.leaky_relu(x, slope, inplace=True)
    return resample(x, fd, down=down, gain=gain, cache=down_cache)


def resample(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=0, gain: float = 1.0,
             cache: dict | None = None) -> torch.Tensor:
    """`upfirdn2d(x, f, up, down, padding, gain)`; a 1-D filter as two matrix products.
    `cache`: this filter's matrices, kept by shape."""
    if f.ndim == 2:
        return upfirdn2d(x, f, up=up, down=down, padding=padding, gain=gain)
    x0, x1, y0, y1 = (padding,) * 4 if isinstance(padding, int) else padding
    h, w = x.shape[-2:]
    cols = _matrix(cache, w, f, up, down, (x0, x1), gain**0.5, x)
    rows = cols if (h, y0, y1) == (w, x0, x1) else _matrix(cache, h, f, up, down, (y0, y1), gain**0.5, x)
    return _times(rows.T @ x, cols)


def _times(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) @ m (W, W_out). Where m lengthens the rows, as one product per image
    and channel: the single folded GEMM (N*C*H, W) @ m that torch.matmul makes of it is 2.3x
    slower there on the CPU (MKL, W = 46 -> 98), while it is the faster one where m shortens
    them (1.15x at 98 -> 44)."""
    if m.shape[0] >= m.shape[1]:
        return x @ m
    n, c, h, w = x.shape
    return torch.bmm(x.reshape(n * c, h, w), m.expand(n * c, *m.shape)).reshape(n, c, h, -1)


def _matrix(cache: dict | None, n: int, f: torch.Tensor, up: int, down: int, padding: tuple[int, int], gain: float,
            x: torch.Tensor) -> torch.Tensor:
    """`resampling_matrix` for x's dtype and device, from `cache` when given (compiled code
    builds it inside the graph instead)."""
    if cache is None or torch.compiler.is_compiling():
        return resampling_matrix(n, f, up, down, padding, gain, x.dtype, x.device)
    key = (n, up, down, padding, gain, x.dtype, x.device)
    if key not in cache:
        cache[key] = resampling_matrix(n, f, up, down, padding, gain, x.dtype, x.device)
    return cache[key]


def resampling_matrix(n: int, f: torch.Tensor, up: int, down: int, padding: tuple[int, int], gain: float,
                      dtype=torch.float32, device=None) -> torch.Tensor:
    """(n, n_out) matrix of what upfirdn2d does along one axis of length n with the 1-D
    filter `f`: row i is its response to an impulse at sample i."""
    impulses = torch.eye(n, dtype=dtype, device=device).reshape(1, n, 1, n)  # n channels, one impulse each
    along_x = f.to(dtype=dtype, device=device)[None, :]  # a 1 x taps 2-D filter leaves the y axis alone
    return upfirdn2d(impulses, along_x, up=up, down=down, padding=(*padding, 0, 0), gain=gain)[0, :, 0, :]
