"""Filtered leaky ReLU: StyleGAN3's alias-free nonlinearity (Karras et al. 2021, sec. 3.2).

A pointwise nonlinearity creates frequencies above the signal's band; applied at the
layer's own sampling rate they would alias back into it. So the signal is first upsampled
(an ideal interpolation approximated by the FIR filter `fu`), the leaky ReLU is applied at
the higher rate, and the result is low-passed by `fd` and decimated back down:

    x -> + bias -> upfirdn2d(up, fu, padding) -> leaky ReLU * gain, clamp -> upfirdn2d(fd, down)

Plain PyTorch on top of `upfirdn2d`, so it runs (and is differentiable) on any device;
`torch.compile` of the whole generator fuses the elementwise middle on GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from animegen.models.ops.upfirdn2d import upfirdn2d


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor, fd: torch.Tensor, bias: torch.Tensor | None = None,
                   up: int = 1, down: int = 1, padding=0, gain: float = math.sqrt(2), slope: float = 0.2,
                   clamp: float | None = None) -> torch.Tensor:
    """Bias, upsample by `up` with `fu`, leaky ReLU (negative slope `slope`) times `gain`,
    clamp to [-clamp, clamp], then low-pass with `fd` and keep every `down`-th pixel.

    `padding` (int or x0, x1, y0, y1) is applied once, to the zero-inserted signal before
    `fu`; it fixes the output size, which is (H*up + pad - len(fu) - len(fd) + 1) // down + 1.
    With gain 1 and slope 1 the layer is linear (StyleGAN3's ToRGB).
    """
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up * up)  # up**2 restores the zero-inserted energy
    x = F.leaky_relu(x, slope) * gain if slope != 1 else x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, fd, down=down)
