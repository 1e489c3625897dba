"""Low-pass filter design for StyleGAN3's alias-free layers (Karras et al. 2021, sec. 3 and app. C).

Frequencies are in cycles per unit of the continuous signal and `fs` is the sampling rate
in samples per unit, so `cutoff` and `width` mean the same thing at every layer whatever
its resolution. Both designs return float32 taps that sum to 1 (DC gain 1), ready for
`upfirdn2d`: a 1-D filter is applied separably, a 2-D one as is.
"""

from __future__ import annotations

import numpy as np
import torch


def kaiser_lowpass(numtaps: int, cutoff: float, width: float, fs: float) -> torch.Tensor:
    """Separable Kaiser-windowed sinc low-pass: 1-D taps; `width` is the full transition band
    (the Kaiser beta is chosen so that the stopband starts at cutoff + width/2)."""
    import scipy.signal  # a second to import: loaded when a StyleGAN3 is built, not by every command

    taps = scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)
    return torch.as_tensor(taps, dtype=torch.float32)


def jinc_lowpass(numtaps: int, cutoff: float, width: float, fs: float) -> torch.Tensor:
    """Radially symmetric low-pass (config R's downsampling filter): 2-D taps of the ideal
    disc-shaped low-pass, a jinc, windowed by the same Kaiser window as `kaiser_lowpass`
    (outer product), so the passband is a disc instead of a square and rotations do not
    meet a preferred direction."""
    import scipy.signal  # as in kaiser_lowpass
    import scipy.special

    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(x[:, None], x[None, :])
    # The inverse Fourier transform of a disc of radius fc is fc * J1(2 pi fc r) / r, which
    # tends to pi fc^2 (the disc's area) at r = 0.
    safe_r = np.where(r > 0, r, 1.0)
    taps = np.where(r > 0, cutoff * scipy.special.j1(2 * np.pi * cutoff * safe_r) / safe_r, np.pi * cutoff**2)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    taps = taps * np.outer(window, window)
    return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)


def design_lowpass(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> torch.Tensor:
    """The layer filter: one tap means no filtering (a 1-tap identity), else Kaiser or jinc."""
    if numtaps == 1:
        return torch.ones(1)
    return (jinc_lowpass if radial else kaiser_lowpass)(numtaps, cutoff, width, fs)
