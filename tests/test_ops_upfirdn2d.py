"""upfirdn2d against a direct numpy implementation of its definition (loops over taps)."""

import numpy as np
import pytest
import torch

from animegen.models.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d


def reference_upfirdn2d(x, f2d, up, down, pad, flip_filter=False, gain=1.0):
    """Zero-insert, pad/crop, convolve tap by tap, subsample: the definition, written out in numpy."""
    n, c, h, w = x.shape
    x0, x1, y0, y1 = pad
    upsampled = np.zeros((n, c, h * up, w * up))
    upsampled[:, :, ::up, ::up] = x
    padded = np.pad(upsampled, [(0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))])
    padded = padded[:, :, max(-y0, 0): padded.shape[2] - max(-y1, 0), max(-x0, 0): padded.shape[3] - max(-x1, 0)]
    taps = f2d if flip_filter else f2d[::-1, ::-1]  # correlation with flipped taps = convolution
    fh, fw = taps.shape
    oh, ow = padded.shape[2] - fh + 1, padded.shape[3] - fw + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(fh):
        for j in range(fw):
            out += taps[i, j] * padded[:, :, i: i + oh, j: j + ow]
    return out[:, :, ::down, ::down] * gain


def as_2d(f):
    f = f.numpy().astype(np.float64)
    return np.outer(f, f) if f.ndim == 1 else f


CASES = [
    # taps, separable, up, down, padding (x0, x1, y0, y1)
    ([1, 3, 3, 1], True, 2, 1, (2, 1, 2, 1)),
    ([1, 3, 3, 1], False, 1, 2, (1, 1, 1, 1)),
    ([1, 2, 4, 2, 1], True, 1, 1, (3, -1, 0, 2)),
    ([1, 3, 3, 1], True, 3, 2, (1, 4, -1, 2)),
    (np.random.default_rng(0).normal(size=(3, 5)), None, 2, 2, (2, 2, 1, 1)),
    ([1], True, 1, 1, (0, 0, 0, 0)),
]


@pytest.mark.parametrize("taps,separable,up,down,pad", CASES)
@pytest.mark.parametrize("flip_filter", [False, True])
def test_matches_numpy_reference(taps, separable, up, down, pad, flip_filter):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 7, 6))
    f = setup_filter(taps, separable=separable, normalize=False)
    got = upfirdn2d(torch.tensor(x, dtype=torch.float64), f.double(), up=up, down=down, padding=pad,
                    flip_filter=flip_filter, gain=1.5)
    want = reference_upfirdn2d(x, as_2d(f), up, down, pad, flip_filter=flip_filter, gain=1.5)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_asymmetric_2d_filter_is_convolved_not_correlated():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 1.0  # an impulse reproduces the filter itself under convolution
    f = torch.arange(9, dtype=torch.float64).reshape(3, 3)
    out = upfirdn2d(x, f, padding=1)
    torch.testing.assert_close(out[0, 0, 1:4, 1:4], f)


def test_setup_filter_normalizes_and_applies_gain():
    f1 = setup_filter([1, 3, 3, 1])
    assert f1.shape == (4,) and torch.isclose(f1.sum(), torch.tensor(1.0))
    f2 = setup_filter([1, 3, 3, 1], separable=False, gain=4)
    assert f2.shape == (4, 4) and torch.isclose(f2.sum(), torch.tensor(4.0))
    torch.testing.assert_close(torch.outer(setup_filter([1, 3, 3, 1], gain=4), setup_filter([1, 3, 3, 1], gain=4)), f2)


def test_helpers_keep_sizes_and_constant_signals():
    f = setup_filter([1, 3, 3, 1])
    x = torch.full((2, 3, 8, 8), 0.7)
    up = upsample2d(x, f)
    down = downsample2d(x, f)
    same = filter2d(x, f)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4) and same.shape == (2, 3, 8, 8)
    # Away from the zero-padded border, a normalized filter maps a constant to itself.
    torch.testing.assert_close(up[..., 3:-3, 3:-3], torch.full_like(up[..., 3:-3, 3:-3], 0.7))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.7))
    torch.testing.assert_close(same[..., 2:-2, 2:-2], torch.full_like(same[..., 2:-2, 2:-2], 0.7))


def test_bad_inputs_are_rejected():
    f = setup_filter([1, 1])
    with pytest.raises(ValueError):
        upfirdn2d(torch.zeros(3, 4, 4), f)
    with pytest.raises(ValueError):
        upfirdn2d(torch.zeros(1, 1, 4, 4), f, up=0)
    with pytest.raises(ValueError):
        upfirdn2d(torch.zeros(1, 1, 4, 4), f, padding=(1, 2, 3))
    with pytest.raises(ValueError):
        setup_filter(np.zeros((2, 2, 2)))
