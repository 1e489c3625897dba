"""ADA: adaptive discriminator augmentation (Karras et al. 2020, "Training GANs with Limited Data").

Every image the discriminator sees, real or generated, goes through the same random
augmentations, each applied with probability p. Because D only ever sees augmented images,
G is not pushed to produce them, as long as p stays below the point where an augmentation
could no longer be told apart from its inverse (the paper's "non-leaking" condition, about
p < 0.8 for this set).

The pipeline ("bgc" in the paper), in order:
  pixel blitting (exact, no interpolation): xflip, rotate90, xint (integer translation);
  geometric (one resampling through a combined matrix): scale, rotate, aniso, xfrac;
  color (one combined 4x4 matrix): brightness, contrast, lumaflip, hue, saturation.
Everything is differentiable with respect to the images (R1 and G's loss flow through it).

p is steered by r_t = E[sign(D(real))]: a D that is sure about the real images (r_t above
`target`, 0.6) is overfitting, so p rises; otherwise it falls. Each adjustment moves p by
(images since the last one) / (speed_kimg * 1000), so p can cross [0, 1] in speed_kimg
thousand images (the paper: 500).

Modes: "ada" (adaptive, from p = 0), "fixed:P" (constant p = P), "off" (no augmentation).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from animegen.errors import UserError
from animegen.models.ops.filters import kaiser_lowpass
from animegen.models.ops.upfirdn2d import downsample2d, upsample2d

BLIT_OPS = ("xflip", "rotate90", "xint")
GEOMETRIC_OPS = ("scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
OPS = BLIT_OPS + GEOMETRIC_OPS + COLOR_OPS

# Strengths from the paper (appendix B): translations in units of the image size, scale
# factors as log2 standard deviations.
XINT_MAX, SCALE_STD, ANISO_STD, XFRAC_STD = 0.125, 0.2, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, SATURATION_STD = 0.2, 0.5, 1.0
LUMA_AXIS = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3)


class RandomSource(Protocol):
    """Where the pipeline draws its numbers (the Objective, so that runs resume exactly)."""

    def rand(self, *shape: int) -> torch.Tensor: ...

    def randn(self, *shape: int) -> torch.Tensor: ...


def parse_mode(mode: str) -> tuple[str, float]:
    """"ada" | "fixed:P" | "off" -> (kind, initial p)."""
    if mode in ("ada", "off"):
        return mode, 0.0
    kind, _, value = mode.partition(":")
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if kind != "fixed" or not 0 <= p <= 1:
        raise UserError(f"augment mode {mode!r} is not 'ada', 'off' or 'fixed:P' with 0 <= P <= 1.")
    return kind, p


class AugmentPipe(nn.Module):
    def __init__(self, mode: str = "ada", ops: tuple[str, ...] = OPS, target: float = 0.6, speed_kimg: float = 500):
        super().__init__()
        unknown = sorted(set(ops) - set(OPS))
        if unknown:
            raise UserError(f"unknown augmentation(s) {', '.join(unknown)}; choose from {', '.join(OPS)}.")
        if speed_kimg <= 0:
            raise UserError(f"ada_kimg must be positive, not {speed_kimg}.")
        self.mode, self.p = parse_mode(mode)
        self.ops, self.target, self.speed_kimg = tuple(ops), target, speed_kimg
        # Half-band low-pass for the 2x supersampling around the geometric resampling.
        self.register_buffer("resample_filter", kaiser_lowpass(16, cutoff=0.5, width=0.5, fs=2), persistent=False)

    def adjust(self, rt: float, nimg: int) -> None:
        """One ADA step: move p toward r_t = target by nimg / (speed_kimg * 1000)."""
        if self.mode == "ada":
            step = math.copysign(nimg / (self.speed_kimg * 1000), rt - self.target) if rt != self.target else 0.0
            self.p = min(max(self.p + step, 0.0), 1.0)

    def forward(self, images: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        if self.p == 0:
            return images
        x = self._blit(images, rng)
        x = self._geometric(x, rng)
        return self._color(x, rng)

    # ------------------------------------------------------------ helpers
    def _enabled(self, op: str, rng: RandomSource, n: int, p: float | None = None) -> torch.Tensor:
        """(N,) bool: which images get `op` (all False when `op` is not in the pipeline)."""
        p = self.p if p is None else p
        return rng.rand(n) < p if op in self.ops else torch.zeros(n, dtype=torch.bool)

    def _blit(self, x: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        n, _, h, w = x.shape
        if "xflip" in self.ops:
            flip = self._enabled("xflip", rng, n) & (rng.rand(n) < 0.5)
            x = torch.where(_per_image(flip, x), x.flip(3), x)
        if "rotate90" in self.ops:
            quarter_turns = (rng.rand(n) * 4).floor().long() * self._enabled("rotate90", rng, n)
            x = rotate90(x, quarter_turns)
        if "xint" in self.ops:
            on = self._enabled("xint", rng, n)
            shift = ((rng.rand(n, 2) * 2 - 1) * XINT_MAX * torch.tensor([w, h], device=on.device)).round()
            x = translate_int(x, (shift * on[:, None]).long())
        return x

    def _geometric(self, x: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        """Resample each image once, through the combined transform of its enabled ops."""
        if not set(GEOMETRIC_OPS) & set(self.ops):
            return x
        g_inv, active = self.geometric_transform(x.shape[0], rng, x.device)
        # Resample only the images that were transformed: the others stay exactly as they are,
        # and the cost follows p.
        index = active.nonzero().squeeze(1)
        if len(index) == 0:
            return x
        return x.index_copy(0, index, resample(x[index], g_inv[index], self.resample_filter).to(x.dtype))

    def geometric_transform(self, n: int, rng: RandomSource, device: torch.device | str = "cpu"
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the geometric ops for n images: (N, 3, 3) inverse transforms (output -> input
        coordinates, in [-1, 1] units), composed from the enabled ops in the order they are
        applied, and (N,) bool, which images any op moves. What `forward` resamples with; on
        its own, it shows the distribution of the transforms."""
        g_inv = torch.eye(3, device=device).repeat(n, 1, 1)
        active = torch.zeros(n, dtype=torch.bool, device=device)
        p_rotate = 1 - math.sqrt(1 - self.p)  # rotating before and after aniso: P(either) = p

        def apply(op, inverse, p=None):
            nonlocal g_inv, active
            on = self._enabled(op, rng, n, p).to(device)
            g_inv = g_inv @ torch.where(on[:, None, None], inverse, torch.eye(3, device=device))
            active |= on

        apply("scale", _scale_matrix(torch.exp2(-rng.randn(n) * SCALE_STD).to(device).repeat(2, 1)))
        apply("rotate", _rotation_matrix(-(rng.rand(n) * 2 - 1).to(device) * math.pi), p_rotate)
        aniso = torch.exp2(rng.randn(n) * ANISO_STD).to(device)
        apply("aniso", _scale_matrix(torch.stack([1 / aniso, aniso])))
        apply("rotate", _rotation_matrix(-(rng.rand(n) * 2 - 1).to(device) * math.pi), p_rotate)
        apply("xfrac", _translation_matrix(-rng.randn(n, 2).to(device) * XFRAC_STD * 2))
        return g_inv, active

    def _color(self, x: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        """Compose affine color transforms of [-1, 1] RGB (gray = 0), as 4x4 matrices, and
        apply them once."""
        n = x.shape[0]
        if not set(COLOR_OPS) & set(self.ops):
            return x
        device = x.device
        eye3, eye4 = torch.eye(3, device=device), torch.eye(4, device=device)
        axis = LUMA_AXIS.to(device)
        luma = torch.outer(axis, axis)  # projection onto the gray axis
        color = eye4.repeat(n, 1, 1)
        active = torch.zeros(n, dtype=torch.bool, device=device)

        def apply(op, matrix):
            nonlocal color, active
            on = self._enabled(op, rng, n).to(device)
            color = torch.where(on[:, None, None], matrix, eye4) @ color
            active |= on

        def scalars(t):
            return t.to(device)[:, None, None]

        brightness = eye4.repeat(n, 1, 1)
        brightness[:, :3, 3] = (rng.randn(n) * BRIGHTNESS_STD).to(device)[:, None]
        apply("brightness", brightness)
        apply("contrast", _linear(scalars(torch.exp2(rng.randn(n) * CONTRAST_STD)) * eye3))
        apply("lumaflip", _linear(eye3 - 2 * scalars((rng.rand(n) < 0.5).float()) * luma))
        apply("hue", _linear(_rotation_about(axis, (rng.rand(n) * 2 - 1).to(device) * math.pi)))
        apply("saturation", _linear(luma + (eye3 - luma) * scalars(torch.exp2(rng.randn(n) * SATURATION_STD))))
        if not active.any():
            return x
        out = torch.einsum("nij,njhw->nihw", color[:, :3, :3].to(x.dtype), x) + color[:, :3, 3, None, None].to(x.dtype)
        return torch.where(_per_image(active, x), out, x)


def _per_image(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))


# ---------------------------------------------------------------- pixel blitting
def rotate90(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate image i by quarter_turns[i] * 90 degrees counter-clockwise (square images)."""
    out = x
    for k in (1, 2, 3):
        out = torch.where(_per_image(quarter_turns == k, x), torch.rot90(x, k, dims=(2, 3)), out)
    return out


def translate_int(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move image i by shift[i] = (dx, dy) whole pixels, filling the border by reflection
    (out[y, x] = in[reflect(y - dy), reflect(x - dx)]): an exact copy of pixels."""
    n, c, h, w = x.shape
    shift = shift.to(x.device)
    rows = _reflect(torch.arange(h, device=x.device)[None] - shift[:, 1:2], h)  # (N, H)
    cols = _reflect(torch.arange(w, device=x.device)[None] - shift[:, 0:1], w)  # (N, W)
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Fold indices into [0, size) by mirroring about the edge pixels (..., 2, 1, 0, 1, 2, ...)."""
    period = 2 * (size - 1)
    i = i.remainder(period)
    return torch.where(i >= size, period - i, i)


# ---------------------------------------------------------------- geometric
def _scale_matrix(s: torch.Tensor) -> torch.Tensor:
    """s: (2, N) x and y factors -> (N, 3, 3)."""
    return torch.diag_embed(torch.stack([s[0], s[1], torch.ones_like(s[0])], dim=1))


def _rotation_matrix(theta: torch.Tensor) -> torch.Tensor:
    c, s, z, o = theta.cos(), theta.sin(), torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=1).reshape(-1, 3, 3)


def _translation_matrix(t: torch.Tensor) -> torch.Tensor:
    """t: (N, 2) in [-1, 1] units."""
    m = torch.eye(3, device=t.device).repeat(len(t), 1, 1)
    m[:, :2, 2] = t
    return m


def resample(x: torch.Tensor, g_inv: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Sample x at g_inv @ (output coordinate), coordinates in [-1, 1] (grid_sample's, pixel
    corners at +-1). The image is first interpolated to 2x with `f`, sampled bilinearly at
    2x with mirrored borders, and low-passed back, so the resampling adds little aliasing."""
    n, c, h, w = x.shape
    pad = len(f) // 2
    up = upsample2d(mirror_pad(x, pad), f)[..., 2 * pad : -2 * pad, 2 * pad : -2 * pad]
    ys = (torch.arange(2 * h, device=x.device) + 0.5) / h - 1
    xs = (torch.arange(2 * w, device=x.device) + 0.5) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)  # (1, 4hw, 3)
    grid = (coords @ g_inv.transpose(1, 2))[..., :2].reshape(n, 2 * h, 2 * w, 2)
    y = F.grid_sample(up, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)
    return downsample2d(mirror_pad(y, 2 * pad), f)[..., pad:-pad, pad:-pad]


def mirror_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by mirroring about the edge pixels, like F.pad's "reflect" but for any width."""
    h, w = x.shape[2:]
    rows = _reflect(torch.arange(-pad, h + pad, device=x.device), h)
    cols = _reflect(torch.arange(-pad, w + pad, device=x.device), w)
    return x[:, :, rows][:, :, :, cols]


# ---------------------------------------------------------------- color
def _linear(m: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) linear color maps -> (N, 4, 4) affine ones."""
    out = F.pad(m, (0, 1, 0, 1))
    out[:, 3, 3] = 1
    return out


def _rotation_about(axis: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations about the unit `axis` by theta (Rodrigues' formula)."""
    a = axis
    cross = torch.stack([torch.stack([0 * a[0], -a[2], a[1]]), torch.stack([a[2], 0 * a[0], -a[0]]),
                         torch.stack([-a[1], a[0], 0 * a[0]])])
    c, s = theta.cos()[:, None, None], theta.sin()[:, None, None]
    return c * torch.eye(3, device=a.device) + s * cross + (1 - c) * torch.outer(a, a)
