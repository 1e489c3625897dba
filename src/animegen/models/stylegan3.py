"""StyleGAN3 (Karras et al. 2021, "Alias-Free Generative Adversarial Networks"), configs T and R.

The generator treats every feature map as samples of a continuous, band-limited signal, so
that its output moves with its input at sub-pixel precision:

  * The input is not a learned constant but Fourier features: sinusoids of fixed random
    frequencies within the first layer's band, evaluated on a grid, whose coordinates go
    through a transform (a learned rotation and translation from w, and a user one, which
    is how `translate` and `rotate` move the image content).
  * Each layer = modulated convolution + filtered leaky ReLU (ops/filtered_lrelu): the
    nonlinearity runs at twice the sampling rate between a Kaiser-windowed up- and
    downsampling filter. A layer's cutoff f_c and stopband f_t grow geometrically from
    f_c=2 to half the output resolution; the last layers are critically sampled (f_c at
    Nyquist) to get sharp images. Feature maps carry a margin of extra pixels outside the
    image so the filters' borders do not leak in.
  * Each layer divides its input by the running RMS of its input (a magnitude EMA), so
    signal magnitudes stay put and the clamp in filtered_lrelu means the same throughout.

Config R (rotation equivariance) uses 1x1 convolutions (a 3x3 kernel is not rotation
invariant), doubled channels and radially symmetric (jinc) downsampling filters outside the
critically sampled layers; its discriminator sees blurred images early in training.

The mapping network (2 layers), discriminator and training objective are StyleGAN2's
(models/stylegan2.py); StyleGAN3's objective drops path length regularization and style
mixing, steps the magnitude EMAs and adds config R's blur (`StyleGAN3Objective`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from animegen.errors import UserError
from animegen.models.base import Capabilities, Latents, Model, Noise, Option
from animegen.models.ops.filtered_lrelu import filtered_lrelu
from animegen.models.ops.filters import design_lowpass
from animegen.models.stylegan2 import (TRUNCATION_OPTION, FullyConnected, MappingNetwork, StyleGAN2, draw_w,
                                      modulated_conv2d)
from animegen.settings import (CHANNEL_BASE, FRACTION, LATENT, RESOLUTION, WIDTH, Limit, between,
                               positive)


@dataclass
class StyleGAN3Config:
    """Config T. Frequencies are in cycles per image width (the image is one unit wide)."""

    resolution: int = 64
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    mapping_lr_mult: float = 0.01
    w_avg_beta: float = 0.998
    channel_base: int = 32768  # a layer's channels: min(channel_base / 2 / cutoff, channel_max)
    channel_max: int = 512
    num_layers: int = 14  # synthesis layers, ToRGB excluded
    num_critical: int = 2  # critically sampled layers at the end
    first_cutoff: float = 2.0  # f_c of the Fourier features and first layer
    first_stopband: float = 2**2.1  # f_t of the first layer
    last_stopband_rel: float = 2**0.3  # f_t of the last layer, relative to its f_c (= resolution / 2)
    margin: int = 10  # extra pixels on each side of the feature maps
    output_scale: float = 0.25
    conv_kernel: int = 3
    filter_size: int = 6  # up/downsampling filter taps per pixel of the lower rate
    lrelu_upsampling: int = 2  # the nonlinearity's sampling rate relative to the layer's
    radial_filters: bool = False  # jinc downsampling filters (config R)
    conv_clamp: float | None = 256.0
    magnitude_ema_beta: float = 0.999  # per training step; presets use 0.5 ** (batch / 20k)

    limits: ClassVar[dict[str, Limit]] = {
        "resolution": RESOLUTION, "z_dim": LATENT, "w_dim": LATENT, "mapping_layers": between(1, 64),
        "mapping_lr_mult": positive(1e3), "w_avg_beta": FRACTION, "channel_base": CHANNEL_BASE, "channel_max": WIDTH,
        "num_layers": between(1, 64), "num_critical": between(1, 64), "first_cutoff": positive(1e4),
        "first_stopband": positive(1e4), "last_stopband_rel": positive(1e4), "margin": between(0, 1024),
        "output_scale": positive(1e6), "conv_kernel": between(1, 15), "filter_size": between(1, 64),
        "lrelu_upsampling": between(1, 16), "conv_clamp": positive(1e9), "magnitude_ema_beta": FRACTION}


@dataclass
class StyleGAN3RConfig(StyleGAN3Config):
    """Config R: 1x1 convolutions, doubled channels, radially symmetric downsampling filters."""

    channel_base: int = 65536
    channel_max: int = 1024
    conv_kernel: int = 1
    radial_filters: bool = True


# ---------------------------------------------------------------- layer schedule
@dataclass(frozen=True)
class Band:
    """What a layer's output signal is: its channels, its side in samples (margins included),
    its sampling rate (samples per image width), cutoff f_c and transition half-width f_h."""

    channels: int
    size: int
    sampling_rate: int
    cutoff: float
    half_width: float


def band_schedule(config: StyleGAN3Config) -> list[Band]:
    """Bands of the Fourier input and layers 0..num_layers (the last being ToRGB): cutoffs and
    stopbands grow geometrically until the critically sampled layers, which all sit at
    f_c = resolution / 2; each sampling rate is the smallest power of two above twice the
    stopband (capped at the resolution); channels fall as 1 / cutoff."""
    r, n = config.resolution, config.num_layers
    if r < 16 or r & (r - 1):
        raise UserError(f"StyleGAN3 needs a power-of-two resolution of at least 16, not {r}.")
    if not 0 < config.num_critical < n:
        raise UserError(f"num_critical must be in 1..{n - 1} for {n} layers, not {config.num_critical}.")
    exponents = np.minimum(np.arange(n + 1) / (n - config.num_critical), 1.0)
    last_cutoff = r / 2
    cutoffs = config.first_cutoff * (last_cutoff / config.first_cutoff) ** exponents
    last_stopband = last_cutoff * config.last_stopband_rel
    stopbands = config.first_stopband * (last_stopband / config.first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, r))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + 2 * config.margin
    sizes[-2:] = r  # the last layer and ToRGB: the image itself, no margin
    channels = np.rint(np.minimum(config.channel_base / 2 / cutoffs, config.channel_max))
    channels[-1] = 3
    layers = [Band(int(c), int(s), int(rate), float(fc), float(fh))
              for c, s, rate, fc, fh in zip(channels, sizes, rates, cutoffs, half_widths)]
    return [layers[0]] + layers  # the Fourier input shares layer 0's band


# ---------------------------------------------------------------- transforms
def content_transform(translate=(0.0, 0.0), rotate: float = 0.0) -> torch.Tensor:
    """3x3 matrix mapping output image coordinates to input coordinates (x right, y down, the
    image one unit wide, centred at 0) such that the content turns `rotate` degrees
    counterclockwise as displayed about the centre, then moves by `translate` image widths."""
    a = math.radians(rotate)
    c, s = math.cos(a), math.sin(a)
    inverse_rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    inverse_translation = torch.tensor([[1.0, 0.0, -translate[0]], [0.0, 1.0, -translate[1]], [0.0, 0.0, 1.0]],
                                       dtype=torch.float64)
    return (inverse_rotation @ inverse_translation).float()


# ---------------------------------------------------------------- generator
class FourierInput(nn.Module):
    """sin(2 pi (f . q + phase)) for `channels` frequencies f drawn uniformly from the disc of
    radius `cutoff`, at coordinates q = learned(user(p)) of the grid's pixel centres p, then
    mixed by a learned channels x channels matrix. The learned transform (a rotation and a
    translation from w, starting at the identity) lets the generator place its content."""

    def __init__(self, w_dim: int, band: Band):
        super().__init__()
        radius = band.cutoff * torch.rand(band.channels).sqrt()
        angle = 2 * math.pi * torch.rand(band.channels)
        self.register_buffer("freqs", torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1))
        self.register_buffer("phases", torch.rand(band.channels))
        self.weight = nn.Parameter(torch.randn(band.channels, band.channels))
        self.affine = FullyConnected(w_dim, 4)  # (cos, sin, tx, ty) of the learned transform
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.band = band

    def forward(self, w: torch.Tensor, transform: torch.Tensor | None) -> torch.Tensor:
        # In float32 even under autocast: the sines' arguments reach ~20 rad, which bf16 would
        # round by ~0.1 rad, and the phases are what moves the content.
        with torch.autocast(w.device.type, enabled=False):
            x = self._features(w.float(), transform)
        return (x @ (self.weight / math.sqrt(self.band.channels)).T).permute(0, 3, 1, 2)

    def _features(self, w: torch.Tensor, transform: torch.Tensor | None) -> torch.Tensor:
        """(N, H, W, C) sinusoids at the transformed grid."""
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        c, s, tx, ty = t.unbind(1)
        learned = torch.stack([torch.stack([c, -s, -(c * tx - s * ty)]),
                               torch.stack([s, c, -(s * tx + c * ty)])]).permute(2, 0, 1)  # (N, 2, 3): R (p - t)
        user = torch.eye(3, device=w.device) if transform is None else transform.to(w.device, torch.float32)
        m = learned @ user  # (N, 2, 3)
        # f . (A p + b) = (A^T f) . p + f . b: fold the transform into frequencies and phases.
        freqs = self.freqs @ m[:, :, :2]  # (N, C, 2)
        phases = self.phases + m[:, :, 2] @ self.freqs.T  # (N, C)
        size, rate = self.band.size, self.band.sampling_rate
        p = (torch.arange(size, device=w.device, dtype=torch.float32) + 0.5 - size / 2) / rate
        grid = torch.stack(torch.meshgrid(p, p, indexing="xy"), dim=-1)  # (H, W, 2): (x, y)
        return torch.sin(2 * math.pi * (torch.einsum("hwk,nck->nhwc", grid, freqs) + phases[:, None, None]))


class SynthesisLayer(nn.Module):
    """Modulated convolution of the `inp` signal, then a filtered leaky ReLU that resamples
    it to the `out` band: upsample to `lrelu_upsampling` times the higher of the two rates
    with a low-pass at the input cutoff, nonlinearity, low-pass at the output cutoff and
    decimate. ToRGB is the same without nonlinearity, resampling or demodulation."""

    def __init__(self, w_dim: int, inp: Band, out: Band, config: StyleGAN3Config, torgb: bool,
                 critically_sampled: bool):
        super().__init__()
        k = 1 if torgb else config.conv_kernel
        self.affine = FullyConnected(w_dim, inp.channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out.channels, inp.channels, k, k))
        self.bias = nn.Parameter(torch.zeros(out.channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        rate = max(inp.sampling_rate, out.sampling_rate) * (1 if torgb else config.lrelu_upsampling)
        self.up, self.down = rate // inp.sampling_rate, rate // out.sampling_rate
        up_taps = config.filter_size * self.up if self.up > 1 else 1
        down_taps = config.filter_size * self.down if self.down > 1 else 1
        radial = config.radial_filters and not critically_sampled
        self.register_buffer("up_filter", design_lowpass(up_taps, inp.cutoff, 2 * inp.half_width, rate),
                             persistent=False)
        self.register_buffer("down_filter", design_lowpass(down_taps, out.cutoff, 2 * out.half_width, rate, radial),
                             persistent=False)
        self.torgb, self.in_size, self.out_size = torgb, inp.size, out.size
        self.magnitude_ema_beta, self.conv_clamp = config.magnitude_ema_beta, config.conv_clamp
        self.resampling = {}  # the filters' resampling matrices by shape (ops.filtered_lrelu)

    def _apply(self, fn, *args, **kwargs):
        self.resampling.clear()  # .to(), .float() ... replace the filters the matrices came from
        return super()._apply(fn, *args, **kwargs)

    def padding(self) -> list[int]:
        """Padding of the upsampled signal that yields exactly out_size samples, centred on the
        input's: the conv output (in_size + k - 1 samples, "full" convolution) and the output
        share their centre when pad_lo = (total + up - 1) / 2, rounded up when that is a half."""
        k = self.weight.shape[-1]
        taps = self.up_filter.shape[-1] + self.down_filter.shape[-1]
        total = (self.out_size - 1) * self.down + 1 - (self.in_size + k - 1) * self.up + taps - 2
        lo = (total + self.up) // 2
        return [lo, total - lo, lo, total - lo]

    def forward(self, x: torch.Tensor, w: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        if update_emas:
            rms2 = x.detach().float().square().mean()
            self.magnitude_ema.copy_(rms2.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        k = self.weight.shape[-1]
        styles = self.affine(w)
        if self.torgb:  # not demodulated: the equalized-lr gain instead
            styles = styles / math.sqrt(self.weight.shape[1] * k * k)
        # The input's normalization by its running magnitude rides on the output scale: one pass fewer.
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.torgb, padding=k - 1,  # a "full" conv
                             gain=self.magnitude_ema.rsqrt(), bias=self.bias)
        return filtered_lrelu(x, self.up_filter, self.down_filter, up=self.up, down=self.down,
                              padding=self.padding(), gain=1.0 if self.torgb else math.sqrt(2),
                              slope=1.0 if self.torgb else 0.2, clamp=self.conv_clamp, cache=self.resampling)


class SynthesisNetwork(nn.Module):
    """ws (N, num_layers + 2, w_dim) -> images (N, 3, R, R): Fourier input, layers, ToRGB."""

    def __init__(self, config: StyleGAN3Config):
        super().__init__()
        bands = band_schedule(config)
        n = config.num_layers
        self.input = FourierInput(config.w_dim, bands[0])
        self.layers = nn.ModuleList(
            SynthesisLayer(config.w_dim, inp, out, config, torgb=i == n, critically_sampled=i >= n - config.num_critical)
            for i, (inp, out) in enumerate(zip(bands, bands[1:])))
        self.num_ws = n + 2
        self.output_scale = config.output_scale

    def forward(self, ws: torch.Tensor, transform: torch.Tensor | None = None, update_emas: bool = False
                ) -> torch.Tensor:
        """`transform`: a `content_transform` matrix (None: identity); `update_emas`: advance
        the layers' magnitude EMAs (training's discriminator pass)."""
        x = self.input(ws[:, 0], transform)
        for layer, w in zip(self.layers, ws[:, 1:].unbind(1)):
            x = layer(x, w, update_emas)
        return x * self.output_scale


class StyleGAN3(Model):
    """The generator. Sampling options: `truncation` (psi; 1 = off), `translate` ((x, y) in
    image widths, or "x,y") and `rotate` (degrees, counterclockwise as displayed): the input
    transform, which moves the content continuously, not by resampling the image."""

    config_class = StyleGAN3Config
    channels_last = False  # its synthesis layers resample by matrix products, which NHWC slows (0.96x)
    options = (
        TRUNCATION_OPTION,
        Option("translate", "xy", "input translation in image widths, e.g. 0.1,0", default=(0.0, 0.0),
               limit=between(-10, 10), studio_range=(-1, 1, 0.01)),
        Option("rotate", "float", "input rotation in degrees", default=0.0, limit=between(-3600, 3600),
               label="rotate °", studio_range=(-180, 180, 1)),
    )
    capabilities = Capabilities(spaces=("z", "w"), style_mixing=True, input_transform=True, sefa=True,
                                discriminator=True)

    def __init__(self, config: StyleGAN3Config):
        super().__init__(config)
        self.synthesis = SynthesisNetwork(config)
        self.num_ws, self.w_dim = self.synthesis.num_ws, config.w_dim
        self.z_dim = config.z_dim
        self.mapping = MappingNetwork(config.z_dim, config.w_dim, self.num_ws, config.mapping_layers,
                                      config.mapping_lr_mult, config.w_avg_beta)

    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.z_dim,)

    def map_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)

    def draw(self, noise: Noise, given: Latents | None = None, truncation: float = 1.0, **options) -> Latents:
        """z and its w (W+: one per style input, truncated)."""
        given = given or {}
        latents = super().draw(noise, given)
        latents["w"] = given["w"].to(latents["z"]) if "w" in given else draw_w(self.mapping, latents["z"], noise, truncation)
        return latents

    def render(self, latents: Latents, noise: Noise, translate=(0.0, 0.0), rotate: float = 0.0,
               **options) -> torch.Tensor:
        return self.synthesis(latents["w"], transform=content_transform(translate, rotate)).float().clamp(-1, 1)

    def raw_sample(self, noise: Noise, transform: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        """The synthesis output before `render`'s clamp to [-1, 1], which the equivariance
        metrics measure; `transform`: a `content_transform` matrix, or one per image (N, 3, 3)."""
        return self.synthesis(self.draw(noise, truncation=truncation)["w"], transform=transform).float()

    def latent_linear_map(self, layers: tuple[int, int] | None) -> torch.Tensor:
        """The style affines of style inputs `layers`, stacked: input 0 feeds the Fourier
        input's transform, input 1 + i layer i (ToRGB, the last, divides its styles by its
        equalized-lr gain)."""
        weights = []
        for i in range(layers[0], layers[1] + 1):
            if i == 0:
                weights.append(self.synthesis.input.affine.effective_weight())
                continue
            layer = self.synthesis.layers[i - 1]
            weight = layer.affine.effective_weight()
            weights.append(weight / math.sqrt(layer.weight.shape[1] * layer.weight.shape[-1] ** 2) if layer.torgb
                           else weight)
        return torch.cat(weights)

    feature_discriminator = StyleGAN2.feature_discriminator  # StyleGAN3 trains with StyleGAN2's D


class StyleGAN3R(StyleGAN3):
    """Config R: the same generator with `StyleGAN3RConfig`'s defaults."""

    config_class = StyleGAN3RConfig
