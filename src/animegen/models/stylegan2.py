"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN")
with ADA (Karras et al. 2020, "Training GANs with Limited Data").

Generator = mapping network (z -> w, 8 fully connected layers at 1/100 of the learning rate,
tracking the average w for truncation) + synthesis network (a learned 4x4 constant, then
per resolution two 3x3 convolutions whose weights are modulated by a style from w and
demodulated, per-pixel noise, and a "skip" toRGB output summed over resolutions).
Discriminator = residual blocks with a minibatch-stddev feature at 4x4.

Every layer uses the equalized learning rate: weights are stored N(0, 1) (divided by the
learning-rate multiplier) and scaled at run time by lr_mult / sqrt(fan_in).

The objective, `StyleGANObjective`, is shared with StyleGAN3 (animegen.models.stylegan3): it
takes any generator with the interface documented on the class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from animegen.errors import UserError
from animegen.models.base import Capabilities, Latents, Model, Noise, Option, ResolutionBlocks
from animegen.models.ops.upfirdn2d import setup_filter, upfirdn2d, upsample2d
from animegen.settings import (CHANNEL_BASE, FRACTION, LATENT, RESOLUTION, SEED, TRUNCATION, WIDTH, Limit, at_least, between,
                               one_of, positive)

NOISE_MODES = ("random", "const", "none")
Randn = Callable[..., torch.Tensor]  # randn(*per_image_shape) -> (N, *per_image_shape)


SQRT2 = math.sqrt(2)  # the leaky ReLU's gain, which keeps the activations' magnitude at init


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU(0.2) times sqrt(2). The layers over activations instead fold the sqrt(2)
    into their weights and bias (lrelu(a * x) == a * lrelu(x) for a > 0): one pass fewer."""
    return F.leaky_relu(x, 0.2) * SQRT2


def clamp(x: torch.Tensor, limit: float | None) -> torch.Tensor:
    """NVIDIA's conv_clamp: activations limited to +-limit (None: unlimited), which keeps
    their fp16 layers in range; an imported network needs it to compute the same function."""
    return x if limit is None else x.clamp(-limit, limit)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // resolution, channel_max)


def block_resolutions(resolution: int) -> list[int]:
    """4, 8, ..., resolution."""
    n = int(math.log2(resolution))
    if resolution < 8 or 2**n != resolution:
        raise UserError(f"StyleGAN needs a power-of-two resolution of at least 8, not {resolution}.")
    return [2**i for i in range(2, n + 1)]


def _split(total: int) -> tuple[int, int, int, int]:
    """`total` pixels of padding per axis, the odd one at the start: (x0, x1, y0, y1)."""
    return ((total + 1) // 2, total // 2) * 2


# ---------------------------------------------------------------- layers
class FullyConnected(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mult: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], bias_init / lr_mult))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.lr_mult = lr_mult
        self.activation = activation

    def effective_weight(self) -> torch.Tensor:
        """The weight as the forward pass applies it (equalized-lr gain included)."""
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.effective_weight(), self.bias * self.lr_mult)
        return lrelu(x) if self.activation else x


class Conv2dLayer(nn.Module):
    """Equalized-lr convolution; `down=True` low-passes with [1,3,3,1] and then strides by 2.
    `gain` scales the output (after the activation); `conv_clamp` then limits it to +-conv_clamp * gain."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, down: bool = False, gain: float = 1.0, conv_clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.activation, self.down, self.gain = activation, down, gain
        self.limit = None if conv_clamp is None else conv_clamp * gain
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.gain * (SQRT2 if self.activation else 1.0)  # on the weights: see lrelu
        w = self.weight * (self.weight_gain * gain)
        b = None if self.bias is None else self.bias * gain
        k = w.shape[-1]
        if self.down:
            # Pad so that blur + stride-2 valid conv gives exactly half the size.
            x = upfirdn2d(x, self.resample_filter, padding=_split(len(self.resample_filter) + k - 3))
            x = F.conv2d(x, w, b, stride=2)
        else:
            x = F.conv2d(x, w, b, padding=k // 2)
        x = F.leaky_relu(x, 0.2, inplace=True) if self.activation else x  # x: the conv's own output
        return clamp(x, self.limit)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, resample_filter: torch.Tensor | None = None, padding: int | None = None,
                     gain: float | torch.Tensor = 1.0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Convolve each image with its own weights: `weight` (O, I, k, k) scaled per input channel
    by `styles` (N, I) and, with `demodulate`, renormalized to unit L2 norm per output channel
    (the expected-statistics replacement of AdaIN); then times `gain` (a number or a 0-d
    tensor), plus `bias` (O,). Computed as scale inputs -> shared convolution -> scale
    outputs and add the bias in one pass, which equals the per-image convolution and is one
    dense convolution for the batch. `padding` defaults to "same" (k // 2). `up=True` is a
    stride-2 transposed convolution followed by the `resample_filter` blur."""
    c_out, c_in, k, _ = weight.shape
    if demodulate:  # |weight * style| per output channel, from the squared weights summed over taps
        norms = styles.square() @ weight.square().sum(dim=[2, 3]).t()  # (N, O)
        scale = (torch.rsqrt(norms + 1e-8) * gain)[:, :, None, None]
    else:  # the output scale is the input scale: the gain rides on the styles
        styles, scale = styles * gain, None
    x = x * styles[:, :, None, None].to(x.dtype)
    fused_bias = bias if scale is None and not up else None  # nothing after the convolution: it adds the bias
    if up:
        # conv_transpose2d scatters (a true convolution); flipping the taps makes this equal to
        # "zero-insert, then correlate like conv2d", so `weight` means the same in both branches.
        x = F.conv_transpose2d(x, weight.flip([2, 3]).transpose(0, 1), stride=2)  # 2h + k - 2 per side
        # Pad so that the blur brings it to exactly 2h; gain 4 makes up for the inserted zeros.
        x = upfirdn2d(x, resample_filter, padding=_split(len(resample_filter) + 1 - k), gain=4)
    else:
        x = F.conv2d(x, weight, None if fused_bias is None else fused_bias.to(x.dtype),
                     padding=k // 2 if padding is None else padding)
    bias = None if bias is None or fused_bias is not None else bias.to(x.dtype).reshape(1, -1, 1, 1)
    if scale is None:
        return x if bias is None else x + bias
    scale = scale.to(x.dtype)
    return x * scale if bias is None else torch.addcmul(bias, x, scale)


# ---------------------------------------------------------------- generator
class StyleConv(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling by 2), + scaled noise, + bias, lrelu, clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 conv_clamp: float | None = None):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(1, resolution, resolution))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)
        self.up, self.conv_clamp = up, conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, randn: Randn | None) -> torch.Tensor:
        # lrelu's sqrt(2) rides on the demodulation, the bias and the noise strength (see lrelu);
        # x is then this layer's own tensor, updated in place.
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, resample_filter=self.resample_filter,
                             gain=SQRT2, bias=self.bias * SQRT2)
        if noise_mode != "none":
            noise = randn(*self.noise_const.shape).to(x.dtype) if noise_mode == "random" else self.noise_const
            x = x.add_(noise * (self.noise_strength * SQRT2))
        return clamp(F.leaky_relu(x, 0.2, inplace=True), self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB, not demodulated (the output keeps its scale)."""

    def __init__(self, in_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return clamp(modulated_conv2d(x, self.weight, styles, demodulate=False, bias=self.bias), self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> images (N, 3, R, R). Per resolution: the convolutions, then a
    toRGB added to the upsampled sum of the coarser ones (the "skip" generator). A block's
    toRGB shares its w with the next block's first convolution, as in the paper."""

    def __init__(self, w_dim: int, resolution: int, channel_base: int, channel_max: int,
                 conv_clamp: float | None = None):
        super().__init__()
        resolutions = block_resolutions(resolution)
        ch = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.const = nn.Parameter(torch.randn(ch[0], 4, 4))
        self.convs = nn.ModuleList([StyleConv(ch[0], ch[0], w_dim, 4, conv_clamp=conv_clamp)])
        self.torgbs = nn.ModuleList([ToRGB(ch[0], w_dim, conv_clamp)])
        for c_in, c_out, r in zip(ch, ch[1:], resolutions[1:]):
            self.convs.extend([StyleConv(c_in, c_out, w_dim, r, up=True, conv_clamp=conv_clamp),
                               StyleConv(c_out, c_out, w_dim, r, conv_clamp=conv_clamp)])
            self.torgbs.append(ToRGB(c_out, w_dim, conv_clamp))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)
        self.num_ws = len(self.convs) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", randn: Randn | None = None) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise UserError(f"unknown noise mode {noise_mode!r}; choose one of {', '.join(NOISE_MODES)}.")
        if noise_mode == "random" and randn is None:
            raise ValueError("noise_mode='random' needs a `randn` source")
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        img = None
        for level, torgb in enumerate(self.torgbs):
            first = 0 if level == 0 else 2 * level - 1  # index of this level's first conv (and w)
            for i in range(first, 2 * level + 1):
                x = self.convs[i](x, ws[:, i], noise_mode, randn)
            y = torgb(x, ws[:, 2 * level + 1])
            img = y if img is None else upsample2d(img, self.resample_filter) + y
        return img


def normalize_2nd_moment(z: torch.Tensor) -> torch.Tensor:
    return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z -> w, broadcast to every layer. Tracks the running mean of w (`w_avg`) for the
    truncation trick: w' = w_avg + psi (w - w_avg)."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int, lr_mult: float, w_avg_beta: float):
        super().__init__()
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*[FullyConnected(a, b, lr_mult=lr_mult, activation=True)
                                      for a, b in zip(dims, dims[1:])])
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.num_ws, self.w_avg_beta = num_ws, w_avg_beta

    def forward(self, z: torch.Tensor, truncation: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        w = self.layers(normalize_2nd_moment(z.float())).float()
        if update_w_avg:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        ws = w[:, None].repeat(1, self.num_ws, 1)
        return ws if truncation == 1 else self.w_avg.lerp(ws, truncation)


@dataclass
class StyleGAN2Config:
    resolution: int = 64
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mult: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 16384  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    conv_clamp: float | None = None  # NVIDIA's activation clamp (their configs: 256); None: off

    limits: ClassVar[dict[str, Limit]] = {
        "resolution": RESOLUTION, "z_dim": LATENT, "w_dim": LATENT, "mapping_layers": between(1, 64),
        "mapping_lr_mult": positive(1e3), "w_avg_beta": FRACTION, "channel_base": CHANNEL_BASE, "channel_max": WIDTH,
        "conv_clamp": positive(1e9)}


# psi: 1 off, 0 the average face, beyond 1 exaggerates
TRUNCATION_OPTION = Option("truncation", "float", "truncation psi (1 = off)", default=1.0, limit=TRUNCATION,
                           label="truncation ψ", studio_range=(0, 2, 0.05))


class StyleGAN2(Model):
    """The generator. Sampling options: `truncation` (psi; 1 = off), `noise_mode` ("random":
    per-seed noise, "const": the fixed noise stored in the weights, "none"), and style mixing:
    with `mix_seed`, the styles of layers `mix_layer`.. (default: the second half) come from
    that seed's latent instead of the image's own."""

    config_class = StyleGAN2Config
    options = (
        TRUNCATION_OPTION,
        Option("noise_mode", "choice", "noise inputs: per seed, the fixed stored noise, or none", default="random",
               limit=one_of(*NOISE_MODES), label="noise"),
        Option("mix_seed", "int", "style mixing: take the styles of layers MIX_LAYER.. from this seed", limit=SEED),
        Option("mix_layer", "int", "first style layer taken from --mix-seed [default: half of the layers]",
               limit=at_least(0), label="mix from layer", applies_when=("mix_seed", ())),
    )
    capabilities = Capabilities(spaces=("z", "w"), style_mixing=True, noise_maps=True, sefa=True, discriminator=True)

    def __init__(self, config: StyleGAN2Config):
        super().__init__(config)
        self.synthesis = SynthesisNetwork(config.w_dim, config.resolution, config.channel_base, config.channel_max,
                                          config.conv_clamp)
        self.num_ws, self.w_dim = self.synthesis.num_ws, config.w_dim
        self.z_dim = config.z_dim
        self.mapping = MappingNetwork(config.z_dim, config.w_dim, self.num_ws, config.mapping_layers,
                                      config.mapping_lr_mult, config.w_avg_beta)

    def option_specs(self) -> tuple[Option, ...]:
        *others, mix_layer = self.options
        return (*others, replace(mix_layer, default=self.num_ws // 2, limit=between(0, self.num_ws - 1)))

    def resolve_sample_options(self, options: dict) -> dict:
        layer = options.get("mix_layer")
        if layer is not None and options.get("mix_seed") is None:
            raise UserError("mix_layer needs a mix_seed to take the styles from.")
        if isinstance(layer, int) and not 0 <= layer < self.num_ws:
            raise UserError(f"mix_layer must be in 0..{self.num_ws - 1} (this generator has {self.num_ws} style inputs).")
        return super().resolve_sample_options(options)

    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.z_dim,)

    def map_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)

    def noise_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(conv.noise_const.shape) for conv in self.synthesis.convs]

    def draw(self, noise: Noise, given: Latents | None = None, truncation: float = 1.0, noise_mode: str = "random",
             mix_seed: int | None = None, mix_layer: int | None = None, **options) -> Latents:
        """z, its w (W+: one per style input, truncated and mixed), and the random noise maps."""
        given = given or {}
        latents = super().draw(noise, given)
        latents["w"] = given["w"].to(latents["z"]) if "w" in given else draw_w(self.mapping, latents["z"], noise, truncation,
                                                                               mix_seed, mix_layer)
        if noise_mode == "random":
            maps = [noise.randn(*shape) for shape in self.noise_shapes()]
            latents["noise"] = [m.to(n) for m, n in zip(given["noise"], maps)] if "noise" in given else maps
        return latents

    def render(self, latents: Latents, noise: Noise, noise_mode: str = "random", **options) -> torch.Tensor:
        maps = iter(latents.get("noise", ()))
        return self.synthesis(latents["w"], noise_mode, randn=lambda *shape: next(maps)).float().clamp(-1, 1)

    def latent_linear_map(self, layers: tuple[int, int] | None) -> torch.Tensor:
        """The style affines of style inputs `layers`, stacked. Input i feeds convs[i] and,
        when odd, torgbs[i // 2] (which scales its styles by its own gain)."""
        synthesis, weights = self.synthesis, []
        for i in range(layers[0], layers[1] + 1):
            if i < len(synthesis.convs):
                weights.append(synthesis.convs[i].affine.effective_weight())
            if i % 2 == 1:
                torgb = synthesis.torgbs[i // 2]
                weights.append(torgb.affine.effective_weight() * torgb.weight_gain)
        return torch.cat(weights)

    @classmethod
    def feature_discriminator(cls, resolution: int, objective_config: dict) -> nn.Module:
        c = objective_config
        return Discriminator(resolution, c["d_channel_base"], c["d_channel_max"], c["mbstd_group"], c["d_conv_clamp"])


def draw_w(mapping: MappingNetwork, z: torch.Tensor, noise: Noise, truncation: float, mix_seed: int | None = None,
           mix_layer: int | None = None) -> torch.Tensor:
    """W+ of z: mapped and truncated; with `mix_seed`, layers `mix_layer`.. from that seed's w."""
    ws = mapping(z, truncation=truncation)
    if mix_seed is not None:
        other = mapping(Noise([mix_seed] * len(noise), noise.device).randn(z.shape[1]), truncation=truncation)
        ws = torch.cat([ws[:, :mix_layer], other[:, mix_layer:]], dim=1)
    return ws


# ---------------------------------------------------------------- discriminator
def minibatch_stddev(x: torch.Tensor, group_size: int, batches: int = 1) -> torch.Tensor:
    """Append one feature map: the standard deviation of each feature over a group of images,
    averaged over features and pixels. It lets D see a lack of variety across the batch.
    `x` holds `batches` equal batches one after the other; groups never span two."""
    total, c, h, w = x.shape
    n = total // batches
    g = math.gcd(group_size, n)  # groups must divide the batch
    y = x.float().reshape(batches, g, n // g, c, h, w)
    y = (y - y.mean(1, keepdim=True)).square().mean(1).add(1e-8).sqrt().mean(dim=[2, 3, 4])  # (batches, n // g)
    y = y.reshape(batches, 1, -1, 1, 1, 1).expand(-1, g, -1, 1, h, w).reshape(total, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions (the second halving the size) plus a 1x1 downsampling skip, each
    branch scaled by sqrt(1/2) so the sum keeps unit variance."""

    def __init__(self, in_channels: int, out_channels: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(in_channels, out_channels, 3, down=True, gain=math.sqrt(0.5), conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, activation=False, down=True,
                                gain=math.sqrt(0.5))  # unclamped, as NVIDIA's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


class Discriminator(ResolutionBlocks):
    """images (N, 3, R, R) -> logits (N,): fromRGB, residual blocks down to 4x4, then minibatch
    stddev, a 3x3 convolution and two fully connected layers."""

    def __init__(self, resolution: int, channel_base: int, channel_max: int, mbstd_group: int = 4,
                 conv_clamp: float | None = None):
        super().__init__()
        resolutions = block_resolutions(resolution)[::-1]  # R, R/2, ..., 4
        ch = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.fromrgb = Conv2dLayer(3, ch[0], 1, conv_clamp=conv_clamp)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(a, b, conv_clamp) for a, b in zip(ch, ch[1:])])
        self.mbstd_group = mbstd_group
        self.conv = Conv2dLayer(ch[-1] + 1, ch[-1], 3, conv_clamp=conv_clamp)
        self.fc = FullyConnected(ch[-1] * 16, ch[-1], activation=True)
        self.out = FullyConnected(ch[-1], 1)

    def forward(self, img: torch.Tensor, batches: int = 1) -> torch.Tensor:
        """`batches`: `img` is that many equal batches concatenated (say fakes, then reals),
        scored in one pass; the minibatch statistics stay within each."""
        x = self.blocks(self.fromrgb(img))
        x = self.conv(minibatch_stddev(x, self.mbstd_group, batches))
        return self.out(self.fc(x.flatten(1))).squeeze(1)

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """fromRGB's and every block's output: what a projection compares (latent.perceptual)."""
        x = self.fromrgb(img)
        features = [x]
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features
