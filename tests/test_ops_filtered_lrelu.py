"""Filtered leaky ReLU against a direct numpy/scipy reference, and the filter designs'
frequency responses."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from animegen.models.ops.filtered_lrelu import filtered_lrelu
from animegen.models.ops.filters import design_lowpass, jinc_lowpass, kaiser_lowpass


def reference_filtered_lrelu(x, b, fu2d, fd2d, up, down, pad, gain, slope, clamp):
    """The definition written out: bias, zero-insert, pad, full 2-D convolution, lrelu,
    convolution, subsample, with scipy's convolve2d per image and channel."""
    x = x + b[None, :, None, None]
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    z = np.pad(z, [(0, 0), (0, 0), (y0, y1), (x0, x1)])
    u = np.stack([[scipy.signal.convolve2d(img, fu2d * up * up, mode="valid") for img in imgs] for imgs in z])
    u = np.where(u >= 0, u, u * slope) * gain
    u = np.clip(u, -clamp, clamp) if clamp is not None else u
    d = np.stack([[scipy.signal.convolve2d(img, fd2d, mode="valid") for img in imgs] for imgs in u])
    return d[:, :, ::down, ::down]


def as_2d(f):
    f = f.double().numpy()
    return np.outer(f, f) if f.ndim == 1 else f


CASES = [
    # up, down, fu, fd, padding, gain, slope, clamp
    (2, 2, kaiser_lowpass(12, 4, 9.2, 32), kaiser_lowpass(12, 4, 9.2, 32), (11, 10, 11, 10), math.sqrt(2), 0.2, None),
    (2, 1, kaiser_lowpass(12, 8, 3.6, 32), torch.ones(1), (6, 5, 7, 4), math.sqrt(2), 0.2, 0.5),
    (1, 2, torch.ones(1), jinc_lowpass(12, 6, 4.0, 32), (3, 2, 3, 2), 2.0, 0.1, None),
    (4, 2, kaiser_lowpass(24, 3, 6.0, 64), jinc_lowpass(12, 6, 6.0, 32), (13, 12, 12, 13), math.sqrt(2), 0.2, 1.0),
    (1, 1, torch.ones(1), torch.ones(1), (0, 0, 0, 0), 1.0, 1.0, 256.0),  # ToRGB: linear
]


@pytest.mark.parametrize("up,down,fu,fd,pad,gain,slope,clamp", CASES)
def test_matches_direct_reference(up, down, fu, fd, pad, gain, slope, clamp):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 8))
    b = rng.normal(size=3)
    got = filtered_lrelu(torch.tensor(x), fu.double(), fd.double(), torch.tensor(b), up=up, down=down,
                         padding=pad, gain=gain, slope=slope, clamp=clamp)
    want = reference_filtered_lrelu(x, b, as_2d(fu), as_2d(fd), up, down, pad, gain, slope, clamp)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_is_differentiable():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    f = kaiser_lowpass(12, 4, 9.2, 32).double()
    for clamp in (None, 0.3):  # 0.3 clamps part of the signal
        fn = lambda x, b: filtered_lrelu(x, f, f, b, up=2, down=2, padding=(11, 10, 11, 10), clamp=clamp)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, b))


def frequency_response(taps2d: np.ndarray, fx: float, fy: float, fs: float) -> float:
    """|H(fx, fy)| of centred 2-D taps sampled at rate fs."""
    n = taps2d.shape[0]
    t = (np.arange(n) - (n - 1) / 2) / fs
    phase = np.exp(-2j * np.pi * (fx * t[None, :] + fy * t[:, None]))
    return abs((taps2d * phase).sum())


def test_kaiser_lowpass_passes_dc_and_stops_the_stopband():
    numtaps, cutoff, width, fs = 24, 8.0, 6.6, 64.0
    taps = kaiser_lowpass(numtaps, cutoff, width, fs).double().numpy()
    assert taps.shape == (24,) and np.allclose(taps, taps[::-1])
    freqs, h = scipy.signal.freqz(taps, worN=2048, fs=fs)
    assert abs(h[0]) == pytest.approx(1.0, abs=1e-6)
    assert 0.4 < abs(np.interp(cutoff, freqs, np.abs(h))) < 0.6  # half amplitude at the cutoff
    atten_db = scipy.signal.kaiser_atten(numtaps, width / (fs / 2))
    assert np.abs(h[freqs >= cutoff + width / 2]).max() < 2 * 10 ** (-atten_db / 20)


def test_jinc_lowpass_is_radially_symmetric_unlike_the_separable_filter():
    numtaps, cutoff, width, fs = 24, 8.0, 6.6, 64.0
    radial = jinc_lowpass(numtaps, cutoff, width, fs).double().numpy()
    separable = as_2d(kaiser_lowpass(numtaps, cutoff, width, fs))
    assert radial.sum() == pytest.approx(1.0) and np.allclose(radial, radial.T) and np.allclose(radial, radial[::-1])
    for r in (0.5 * cutoff, cutoff, 1.5 * cutoff):
        d = r / math.sqrt(2)  # same radius, diagonal direction
        assert abs(frequency_response(radial, r, 0, fs) - frequency_response(radial, d, d, fs)) < 0.02
    # The separable filter's square passband lets the diagonal through well past the cutoff.
    d = 1.5 * cutoff / math.sqrt(2)
    assert frequency_response(separable, d, d, fs) - frequency_response(separable, 1.5 * cutoff, 0, fs) > 0.1


def test_design_lowpass_one_tap_is_identity():
    assert torch.equal(design_lowpass(1, 4, 2, 16), torch.ones(1))
    assert design_lowpass(12, 4, 9.2, 32, radial=True).shape == (12, 12)


def test_cached_matrices_equal_fresh_ones():
    """With a cache, repeated calls reuse the matrices (per filter, by length, rates, padding,
    gain) and give what fresh ones give, on a square input padded differently along its two axes."""
    fu, fd = kaiser_lowpass(12, 4, 9.2, 32), kaiser_lowpass(6, 2, 3.0, 16)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = filtered_lrelu(x, fu.double(), fd.double(), up=2, down=2, padding=(6, 5, 4, 3))
    cache = {}
    for _ in range(2):
        got = filtered_lrelu(x, fu.double(), fd.double(), up=2, down=2, padding=(6, 5, 4, 3), cache=cache)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert set(cache) == {"up", "down"} and len(cache["up"]) == 2  # rows and columns: two paddings
