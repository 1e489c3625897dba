"""EQ-T, EQ-T_frac and EQ-R: how well a generator's output follows a translation or rotation
of its input (Karras et al. 2021, "Alias-Free GANs", sec. 3 and appendix E).

For each batch of latents the generator renders the image twice: once as is and once with
its input transformed. The first image, transformed by an image-space operator, is the
reference for the second. The score is a PSNR in dB over the pixels both images actually
determine (a mask drops what was shifted or rotated in from outside the frame):

    EQ = 10 log10(peak^2 / MSE),  peak = 2 (the images' nominal range [-1, 1]),

with the MSE pooled over all samples, channels and unmasked pixels, as in the paper (the
mean sits inside the log). An exact match is capped at `PSNR_CAP` dB so results stay
finite numbers in JSON.

  eqt       integer translation: a shift uniform in [-1/8, 1/8] of the image per axis,
            rounded to whole pixels; the reference is the same shift of the pixels.
  eqt_frac  fractional translation: the same range unrounded; the reference is resampled
            with a Lanczos (a=3) windowed sinc.
  eqr       rotation by an angle uniform in [-180, 180] degrees. Rotating a pixel grid
            cuts its square band to the intersection of the input's and the output's
            squares, so the reference is the original resampled through that band
            (upsampled 4x with the band-limiting filter, then read bilinearly at the
            rotated positions), and the transformed image is filtered through the same
            band in its own frame before comparing (the paper's pseudo-rotation).

One random transform is drawn per `IMAGES_PER_TRANSFORM` (4) latents, as in the paper's
code, whatever the rendering batch: N latents give ceil(N / 4) transforms per metric. The
images measured are the raw synthesis output, not `sample()`'s clamp to [-1, 1] (clamping
would hide errors beyond the range). EQ-T, EQ-T_frac and EQ-R are computed in one pass
that renders each untransformed batch once. The generator is any `Model` with
`raw_sample(noise, transform)`: float images (N, C, R, R) before any clamp, `transform` a
`content_transform` matrix (3, 3) or one per image (N, 3, 3); others raise a UserError.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from animegen.errors import UserError
from animegen.models.base import Noise
from animegen.models.stylegan3 import content_transform

EQ_METRICS = ("eqt", "eqt_frac", "eqr")
DEFAULT_NUM = 1000  # latents per metric (the paper: 50,000)
IMAGES_PER_TRANSFORM = 4  # the paper's protocol (NVlabs' metrics: batch_size=4, one draw per batch)
PSNR_CAP = 100.0  # dB: an MSE below 4e-10 counts as exact
TRANSLATE_MAX = 0.125  # of the image, per axis
ROTATE_MAX = 180.0  # degrees
LANCZOS_A = 3  # lobes of the windowed sincs
ROTATION_UP = 4  # oversampling of the rotation reference
ROTATION_EXTENT = 2 * LANCZOS_A  # half-size of the rotation filters, input pixels
# Uniform draws per transform group, one column each: EQ-T's shift (x, y), EQ-T_frac's shift
# (x, y), EQ-R's angle; drawn for all metrics, so one metric's transforms do not depend on
# which others are requested.
_DRAWS = 5


# ---------------------------------------------------------------- the metric
def equivariance_metrics(generator, names, num: int | None = None, batch_size: int = 64) -> dict:
    """The metrics registry's generator form: the EQ metrics `names` in one pass; `num`
    defaults to DEFAULT_NUM."""
    return equivariance(generator, tuple(names), num=num or DEFAULT_NUM, batch_size=batch_size)


def check_generator(model) -> None:
    """The EQ metrics need an input transform and the raw output (`Model.raw_sample`)."""
    if not model.capabilities.input_transform:
        raise UserError(f"{type(model).__name__} has no input transform (translate/rotate), so EQ-T and EQ-R "
                        "are undefined for it; they apply to models that declare one (StyleGAN3).")


def equivariance(model, metrics=EQ_METRICS, num: int = DEFAULT_NUM, batch_size: int = 32, seed: int = 0) -> dict:
    """The requested EQ metrics (dB) of `model` over `num` latents (seeds 0..num-1), and the
    protocol they were measured with (`eq_*` keys). The transforms are drawn from `seed`,
    one per IMAGES_PER_TRANSFORM latents: the same for any `batch_size` and any choice of
    metrics."""
    unknown = [m for m in metrics if m not in EQ_METRICS]
    if unknown:
        raise UserError(f"unknown equivariance metric(s) {', '.join(unknown)}; choose from {', '.join(EQ_METRICS)}.")
    check_generator(model)
    if num < 1:
        raise UserError(f"the equivariance metrics need at least one sample, not {num}.")
    groups = math.ceil(num / IMAGES_PER_TRANSFORM)
    draws = torch.rand(groups, _DRAWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    sums = {m: torch.zeros(2, dtype=torch.float64) for m in metrics}  # squared error, mask
    with torch.no_grad(), _without_tf32():
        for start in range(0, num, batch_size):
            seeds = range(start, min(start + batch_size, num))
            original = model.raw_sample(Noise(seeds, model.device)).float()
            for name in metrics:
                sums[name] += _measure_batch(_MEASURES[name], model, seeds, original, draws)
    empty = [m for m, s in sums.items() if s[1] == 0]
    if empty:
        raise UserError(f"{', '.join(empty)}: no pixel survived the masks at {original.shape[-1]} px; "
                        "use larger images or more samples.")
    return {**{m: psnr(s[0] / s[1]) for m, s in sums.items()}, "eq_images": num, "eq_transforms": groups,
            "eq_images_per_transform": IMAGES_PER_TRANSFORM, "eq_output": "raw"}


@contextlib.contextmanager
def _without_tf32():
    """TF32 matmuls and convolutions (10-bit mantissas) would add ~1e-3 noise on GPUs and cap
    the scores near 60 dB; render in full float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def psnr(mse: float | torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), capped at PSNR_CAP."""
    return min(10 * math.log10(4 / max(float(mse), 4 * 10 ** (-PSNR_CAP / 10))), PSNR_CAP)


Transform = tuple[tuple[float, float], float]  # (translate (x, y) in image widths, rotate in degrees)


@dataclass(frozen=True)
class _Measure:
    """One EQ metric: `transform(draws, size)` turns a group's uniform draws in [-1, 1] into its
    input transform; `compare(original, transformed, transform)` returns the error against
    the image-space reference and its mask."""
    transform: Callable[[torch.Tensor, int], Transform]
    compare: Callable[[torch.Tensor, torch.Tensor, Transform], tuple[torch.Tensor, torch.Tensor]]


def _measure_batch(measure: _Measure, model, seeds: range, original: torch.Tensor, draws: torch.Tensor
                   ) -> torch.Tensor:
    """(squared error, mask) sums of one rendering batch: every image rendered with its
    group's transform in one call, then compared group by group (a group may straddle two
    rendering batches; both halves get its transform)."""
    size = original.shape[-1]
    group_of = [i // IMAGES_PER_TRANSFORM for i in seeds]
    transforms = {g: measure.transform(draws[g], size) for g in dict.fromkeys(group_of)}
    matrices = torch.stack([content_transform(*transforms[g]) for g in group_of])
    transformed = model.raw_sample(Noise(seeds, model.device), matrices).float()
    sums = torch.zeros(2, dtype=torch.float64)
    for g, transform in transforms.items():
        rows = [i for i, h in enumerate(group_of) if h == g]
        error, mask = measure.compare(original[rows], transformed[rows], transform)
        mask = mask.expand_as(error)
        sums += torch.stack([(error.square() * mask).sum().double().cpu(), mask.sum().double().cpu()])
    return sums


def _integer_shift(draws: torch.Tensor, size: int) -> Transform:
    shift = [round(float(d) * TRANSLATE_MAX * size) / size for d in draws[0:2]]
    return (shift[0], shift[1]), 0.0


def _compare_integer(original, transformed, transform: Transform):
    size = original.shape[-1]
    (tx, ty), _ = transform
    reference, mask = integer_translate(original, round(tx * size), round(ty * size))
    return transformed - reference, mask


def _fractional_shift(draws: torch.Tensor, size: int) -> Transform:
    return (float(draws[2]) * TRANSLATE_MAX, float(draws[3]) * TRANSLATE_MAX), 0.0


def _compare_fractional(original, transformed, transform: Transform):
    size = original.shape[-1]
    (tx, ty), _ = transform
    reference, mask = fractional_translate(original, tx * size, ty * size)
    return transformed - reference, mask


def _rotation(draws: torch.Tensor, size: int) -> Transform:
    return (0.0, 0.0), float(draws[4]) * ROTATE_MAX


def _compare_rotated(original, transformed, transform: Transform):
    _, degrees = transform
    reference, reference_mask = rotate(original, degrees)
    filtered, filtered_mask = pseudo_rotate(transformed, degrees)
    return filtered - reference, reference_mask * filtered_mask


_MEASURES = {"eqt": _Measure(_integer_shift, _compare_integer),
             "eqt_frac": _Measure(_fractional_shift, _compare_fractional),
             "eqr": _Measure(_rotation, _compare_rotated)}


# ---------------------------------------------------------------- image-space references
def integer_translate(x: torch.Tensor, dx: int, dy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the content of (N, C, H, W) images by whole pixels (dx right, dy down); returns
    the moved images (zeros shifted in) and the mask (1, 1, H, W) of pixels that came from
    inside the frame."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    mask = torch.zeros(1, 1, h, w, dtype=x.dtype, device=x.device)
    if abs(dx) < w and abs(dy) < h:
        out[..., max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = \
            x[..., max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)]
        mask[..., max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = 1
    return out, mask


def fractional_translate(x: torch.Tensor, dx: float, dy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the content by (dx, dy) pixels with separable Lanczos-3 interpolation; the mask
    keeps the pixels whose whole interpolation footprint lies inside the frame."""
    h, w = x.shape[-2:]
    rows, row_mask = _lanczos_shift_matrix(h, dy, x.device)
    cols, col_mask = _lanczos_shift_matrix(w, dx, x.device)
    out = torch.einsum("yk,nckl,xl->ncyx", rows.to(x.dtype), x, cols.to(x.dtype))
    return out, (row_mask[:, None] * col_mask[None, :]).to(x.dtype)[None, None]


def _lanczos_shift_matrix(n: int, shift: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, n) matrix M with (M @ signal)[p] = sum_k signal[k] L(p - shift - k) for the
    Lanczos-3 kernel L normalized over its 2a taps, and the mask of complete rows."""
    a = LANCZOS_A
    source = torch.arange(n, dtype=torch.float64) - shift  # where each output pixel reads
    first = torch.floor(source).long() - a + 1  # its first tap
    taps = first[:, None] + torch.arange(2 * a)  # (n, 2a)
    weights = lanczos(source[:, None] - taps)
    weights = weights / weights.sum(1, keepdim=True)
    inside = (taps >= 0) & (taps < n)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)[:, None].expand_as(taps)
    matrix[rows[inside], taps[inside]] = weights[inside]
    return matrix.to(device), inside.all(1).to(device)


def sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.sinc(x)  # sin(pi x) / (pi x)


def lanczos_window(x: torch.Tensor, a: int = LANCZOS_A) -> torch.Tensor:
    """sinc(x/a) inside |x| < a, else 0."""
    return torch.where(x.abs() < a, sinc(x / a), torch.zeros_like(x))


def lanczos(x: torch.Tensor) -> torch.Tensor:
    """The Lanczos interpolation kernel: sinc windowed by `lanczos_window`."""
    return sinc(x) * lanczos_window(x)


def rotation_bandlimit_filter(degrees: float, up: int, extent: int = ROTATION_EXTENT, box: int = 64) -> torch.Tensor:
    """Polyphase taps of the low-pass onto the intersection of two square bands: the input
    pixel grid's and that of a grid rotated counterclockwise by `degrees` (as displayed, y down).

    The ideal filter is the convolution of the two grids' sinc filters; it is windowed by
    the convolution of their Lanczos windows, which keeps the support within both grids'
    windows. Convolutions are computed with FFTs over a periodic box of +-`box` pixels,
    sampled every 1/`up` pixel, and the taps are kept out to +-`extent` pixels.

    Returns (up, up, K, K), K = 2 * extent + 1: entry [py, px, dy, dx] is the weight of the
    source pixel (dy, dx) pixels *before* the fine sample at sub-pixel phase (py/up, px/up),
    i.e. the filter at offset (dy + py/up, dx + px/up). Each phase sums to 1, so a constant
    image stays constant at every phase.
    """
    n = 2 * box * up
    offsets = (torch.arange(n, dtype=torch.float64) - box * up) / up
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    # The same offsets in the rotated grid's frame (a counterclockwise turn on screen maps
    # (x, y) to (c x + s y, -s x + c y) with y down).
    xr, yr = c * x + s * y, -s * x + c * y

    def convolve(f, g):
        f, g = torch.fft.ifftshift(f), torch.fft.ifftshift(g)
        return torch.fft.fftshift(torch.fft.irfft2(torch.fft.rfft2(f) * torch.fft.rfft2(g), s=f.shape))

    ideal = convolve(sinc(x) * sinc(y), sinc(xr) * sinc(yr))
    window = convolve(lanczos_window(x) * lanczos_window(y), lanczos_window(xr) * lanczos_window(yr))
    # Offsets -extent .. extent + 1 - 1/up: (2 extent + 1) whole pixels of `up` phases each.
    lo, hi = (box - extent) * up, (box + extent + 1) * up
    taps = (ideal * window)[lo:hi, lo:hi]
    taps[extent * 2 * up + 1:, :] = 0  # beyond +extent
    taps[:, extent * 2 * up + 1:] = 0
    k = 2 * extent + 1
    phases = taps.reshape(k, up, k, up).permute(1, 3, 0, 2)  # [py, px, dy + extent, dx + extent]
    return (phases / phases.sum(dim=(2, 3), keepdim=True)).float()


def _polyphase_upsample(x: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Resample (N, C, H, W) images to (N, C, H*up, W*up) with polyphase filters from
    `rotation_bandlimit_filter`: fine sample (i*up + p) sits at source position i + p/up."""
    n, c, h, w = x.shape
    up, k = phases.shape[0], phases.shape[-1]
    # fine[i*up + p] = sum_d x[i - d] * phases[p, d]: a correlation with the taps flipped.
    weight = phases.flip([2, 3]).reshape(up * up, 1, k, k).to(x.device, x.dtype)
    fine = F.conv2d(x.reshape(n * c, 1, h, w), weight, padding=k // 2)
    return F.pixel_shuffle(fine, up).reshape(n, c, h * up, w * up)


def rotate(x: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the content of (N, C, H, W) images counterclockwise (as displayed) about the
    image centre, band-limited to the intersection of both pixel grids' bands; the mask
    keeps output pixels whose filter footprint lies inside the source frame."""
    h, w = x.shape[-2:]
    up, e = ROTATION_UP, ROTATION_EXTENT
    fine = _polyphase_upsample(x, rotation_bandlimit_filter(degrees, up))
    # Source position of every output pixel: the inverse rotation about the centre.
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    py, px = torch.meshgrid(torch.arange(h, dtype=torch.float64) - (h - 1) / 2,
                            torch.arange(w, dtype=torch.float64) - (w - 1) / 2, indexing="ij")
    sx, sy = c * px - s * py + (w - 1) / 2, s * px + c * py + (h - 1) / 2
    # grid_sample's align_corners=True units: -1 and 1 are the first and last fine samples.
    grid = torch.stack([sx * up / (w * up - 1) * 2 - 1, sy * up / (h * up - 1) * 2 - 1], dim=-1)
    grid = grid[None].expand(x.shape[0], h, w, 2).to(x.device, x.dtype)
    out = F.grid_sample(fine, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    inside = (sx >= e) & (sx <= w - 1 - e) & (sy >= e) & (sy <= h - 1 - e)
    return out, inside.to(x.device, x.dtype)[None, None]


def pseudo_rotate(x: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter already-rotated images through the same band as `rotate`, expressed in their
    own frame (where the source grid is turned by -degrees), without moving anything; the
    mask drops the filter's border."""
    h, w = x.shape[-2:]
    e = ROTATION_EXTENT
    mask = torch.zeros(1, 1, h, w, dtype=x.dtype, device=x.device)
    mask[..., e: h - e, e: w - e] = 1
    # The same continuous filter as `rotate` uses, read at whole-pixel offsets (phase 0).
    taps = rotation_bandlimit_filter(-degrees, ROTATION_UP)[:1, :1]
    return _polyphase_upsample(x, taps / taps.sum()), mask
