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
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from animegen.errors import UserError
from animegen.models.base import Model, Noise
from animegen.models.ops.upfirdn2d import setup_filter, upfirdn2d, upsample2d
from animegen.models.registry import ModelSpec
from animegen.settings import (ADAM_BETA, CHANNEL_BASE, FRACTION, LATENT, LEARNING_RATE, RESOLUTION, SEED, TRUNCATION,
                               WIDTH, Limit, at_least, between, checked_by, one_of, positive)
from animegen.training.augment import OPS, AugmentPipe, augment_mode_problem
from animegen.training.objective import Objective

NOISE_MODES = ("random", "const", "none")
Randn = Callable[..., torch.Tensor]  # randn(*per_image_shape) -> (N, *per_image_shape)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU(0.2) times sqrt(2), which keeps the activations' magnitude at init."""
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mult)
        return lrelu(x) if self.activation else x


class Conv2dLayer(nn.Module):
    """Equalized-lr convolution; `down=True` low-passes with [1,3,3,1] and then strides by 2.
    `gain` scales the output (after the activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, down: bool = False, gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.activation, self.down, self.gain = activation, down, gain
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        k = w.shape[-1]
        if self.down:
            # Pad so that blur + stride-2 valid conv gives exactly half the size.
            x = upfirdn2d(x, self.resample_filter, padding=_split(len(self.resample_filter) + k - 3))
            x = F.conv2d(x, w, self.bias, stride=2)
        else:
            x = F.conv2d(x, w, self.bias, padding=k // 2)
        x = lrelu(x) if self.activation else x
        return x * self.gain


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, resample_filter: torch.Tensor | None = None) -> torch.Tensor:
    """Convolve each image with its own weights: `weight` (O, I, k, k) scaled per input channel
    by `styles` (N, I) and, with `demodulate`, renormalized to unit L2 norm per output channel
    (the expected-statistics replacement of AdaIN). Computed as scale inputs -> shared
    convolution -> scale outputs, which equals the per-image convolution and is one dense
    convolution for the batch. `up=True` is a stride-2 transposed convolution followed by
    the `resample_filter` blur."""
    c_out, c_in, k, _ = weight.shape
    x = x * styles[:, :, None, None].to(x.dtype)
    if up:
        # conv_transpose2d scatters (a true convolution); flipping the taps makes this equal to
        # "zero-insert, then correlate like conv2d", so `weight` means the same in both branches.
        x = F.conv_transpose2d(x, weight.flip([2, 3]).transpose(0, 1), stride=2)  # 2h + k - 2 per side
        # Pad so that the blur brings it to exactly 2h; gain 4 makes up for the inserted zeros.
        x = upfirdn2d(x, resample_filter, padding=_split(len(resample_filter) + 1 - k), gain=4)
    else:
        x = F.conv2d(x, weight, padding=k // 2)
    if demodulate:
        # |weight * style| per output channel, from the squared weights summed over taps.
        norms = styles.square() @ weight.square().sum(dim=[2, 3]).t()  # (N, O)
        x = x * torch.rsqrt(norms + 1e-8)[:, :, None, None].to(x.dtype)
    return x


# ---------------------------------------------------------------- generator
class StyleConv(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling by 2), + scaled noise, + bias, lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(1, resolution, resolution))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]), persistent=False)
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, randn: Randn | None) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up, resample_filter=self.resample_filter)
        if noise_mode == "random":
            x = x + randn(*self.noise_const.shape).to(x.dtype) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB, not demodulated (the output keeps its scale)."""

    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False) + self.bias[None, :, None, None]


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> images (N, 3, R, R). Per resolution: the convolutions, then a
    toRGB added to the upsampled sum of the coarser ones (the "skip" generator). A block's
    toRGB shares its w with the next block's first convolution, as in the paper."""

    def __init__(self, w_dim: int, resolution: int, channel_base: int, channel_max: int):
        super().__init__()
        resolutions = block_resolutions(resolution)
        ch = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.const = nn.Parameter(torch.randn(ch[0], 4, 4))
        self.convs = nn.ModuleList([StyleConv(ch[0], ch[0], w_dim, 4)])
        self.torgbs = nn.ModuleList([ToRGB(ch[0], w_dim)])
        for c_in, c_out, r in zip(ch, ch[1:], resolutions[1:]):
            self.convs.extend([StyleConv(c_in, c_out, w_dim, r, up=True), StyleConv(c_out, c_out, w_dim, r)])
            self.torgbs.append(ToRGB(c_out, w_dim))
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

    limits: ClassVar[dict[str, Limit]] = {
        "resolution": RESOLUTION, "z_dim": LATENT, "w_dim": LATENT, "mapping_layers": between(1, 64),
        "mapping_lr_mult": positive(1e3), "w_avg_beta": FRACTION, "channel_base": CHANNEL_BASE, "channel_max": WIDTH}


class StyleGAN2(Model):
    """The generator. Sampling options: `truncation` (psi; 1 = off), `noise_mode` ("random":
    per-seed noise, "const": the fixed noise stored in the weights, "none"), and style mixing:
    with `mix_seed`, the styles of layers `mix_layer`.. (default: the second half) come from
    that seed's latent instead of the image's own."""

    config_class = StyleGAN2Config
    sample_options = ("truncation", "noise_mode", "mix_seed", "mix_layer")
    sample_limits = {"truncation": TRUNCATION, "noise_mode": one_of(*NOISE_MODES), "mix_seed": SEED,
                     "mix_layer": at_least(0)}

    def __init__(self, config: StyleGAN2Config):
        super().__init__(config)
        self.synthesis = SynthesisNetwork(config.w_dim, config.resolution, config.channel_base, config.channel_max)
        self.num_ws = self.synthesis.num_ws
        self.z_dim = config.z_dim
        self.mapping = MappingNetwork(config.z_dim, config.w_dim, self.num_ws, config.mapping_layers,
                                      config.mapping_lr_mult, config.w_avg_beta)

    def resolve_sample_options(self, options: dict) -> dict:
        options = {"truncation": 1.0, "noise_mode": "random", **super().resolve_sample_options(options)}
        if options["noise_mode"] not in NOISE_MODES:
            raise UserError(f"unknown noise mode {options['noise_mode']!r}; choose one of {', '.join(NOISE_MODES)}.")
        options["truncation"] = float(options["truncation"])
        if "mix_layer" in options and "mix_seed" not in options:
            raise UserError("mix_layer needs a mix_seed to take the styles from.")
        if "mix_seed" in options:
            layer = int(options.setdefault("mix_layer", self.num_ws // 2))
            if not 0 <= layer < self.num_ws:
                raise UserError(f"mix_layer must be in 0..{self.num_ws - 1} (this generator has {self.num_ws} style inputs).")
        return options

    def sample(self, noise: Noise, truncation: float = 1.0, noise_mode: str = "random", mix_seed: int | None = None,
               mix_layer: int | None = None) -> torch.Tensor:
        ws = self.mapping(noise.randn(self.z_dim), truncation=truncation)
        if mix_seed is not None:
            other = self.mapping(Noise([mix_seed] * len(noise), noise.device).randn(self.z_dim), truncation=truncation)
            ws = torch.cat([ws[:, :mix_layer], other[:, mix_layer:]], dim=1)
        return self.synthesis(ws, noise_mode, randn=noise.randn).float().clamp(-1, 1)


# ---------------------------------------------------------------- discriminator
def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one feature map: the standard deviation of each feature over a group of images,
    averaged over features and pixels. It lets D see a lack of variety across the batch."""
    n, c, h, w = x.shape
    g = math.gcd(group_size, n)  # groups must divide the batch
    y = x.float().reshape(g, n // g, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[1, 2, 3])  # (n // g,)
    y = y.reshape(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions (the second halving the size) plus a 1x1 downsampling skip, each
    branch scaled by sqrt(1/2) so the sum keeps unit variance."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3)
        self.conv1 = Conv2dLayer(in_channels, out_channels, 3, down=True, gain=math.sqrt(0.5))
        self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, activation=False, down=True,
                                gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv1(self.conv0(x))


class Discriminator(nn.Module):
    """images (N, 3, R, R) -> logits (N,): fromRGB, residual blocks down to 4x4, then minibatch
    stddev, a 3x3 convolution and two fully connected layers."""

    def __init__(self, resolution: int, channel_base: int, channel_max: int, mbstd_group: int = 4):
        super().__init__()
        resolutions = block_resolutions(resolution)[::-1]  # R, R/2, ..., 4
        ch = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.fromrgb = Conv2dLayer(3, ch[0], 1)
        self.blocks = nn.Sequential(*[DiscriminatorBlock(a, b) for a, b in zip(ch, ch[1:])])
        self.mbstd_group = mbstd_group
        self.conv = Conv2dLayer(ch[-1] + 1, ch[-1], 3)
        self.fc = FullyConnected(ch[-1] * 16, ch[-1], activation=True)
        self.out = FullyConnected(ch[-1], 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fromrgb(img))
        x = self.conv(minibatch_stddev(x, self.mbstd_group))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


# ---------------------------------------------------------------- objective
@dataclass
class StyleGANObjectiveConfig:
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    adam_betas: tuple[float, float] = (0.0, 0.99)
    d_channel_base: int = 16384
    d_channel_max: int = 512
    mbstd_group: int = 4
    r1_gamma: float | None = None  # None: the family's rule (the objective's `default_r1_gamma`)
    r1_interval: int = 16  # lazy regularization: every this many steps, weighted by it
    pl_weight: float = 2.0  # path length regularization; 0: off (StyleGAN3)
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01  # EMA rate of the path length target
    style_mixing: float = 0.9  # probability that an image mixes two latents at a random layer
    augment: str = "ada"  # "ada" | "fixed:P" | "off"
    augment_ops: tuple[str, ...] = OPS
    ada_target: float = 0.6
    ada_interval: int = 4  # steps between p adjustments
    ada_kimg: float = 500.0  # thousands of images for p to cross [0, 1]

    limits: ClassVar[dict[str, Limit]] = {
        "g_lr": LEARNING_RATE, "d_lr": LEARNING_RATE, "adam_betas": ADAM_BETA, "d_channel_base": CHANNEL_BASE,
        "d_channel_max": WIDTH, "mbstd_group": between(1, 4096), "r1_gamma": at_least(0, 1e6),
        "r1_interval": between(1, 10**6), "pl_weight": at_least(0, 1e6), "pl_interval": between(1, 10**6),
        "pl_batch_shrink": between(1, 4096), "pl_decay": FRACTION, "style_mixing": FRACTION,
        "augment": checked_by(augment_mode_problem), "augment_ops": one_of(*OPS), "ada_target": at_least(-1, 1),
        "ada_interval": between(1, 10**6), "ada_kimg": positive(1e6)}


def r1_gamma_heuristic(resolution: int, batch: int) -> float:
    """The StyleGAN2-ADA/StyleGAN3 starting point: gamma = 0.0002 * resolution^2 / batch."""
    return 0.0002 * resolution**2 / batch


class StyleGANObjective(Objective):
    """StyleGAN2's training: non-saturating logistic loss, lazy R1 on reals, lazy path length
    regularization, style mixing, ADA on every image D sees. Shared by StyleGAN3.

    The generator (`self.model`) must provide `z_dim`, `num_ws`, `resolution`,
    `mapping(z, update_w_avg=...) -> ws (N, num_ws, w_dim)` and
    `synthesis(ws, noise_mode=..., randn=...) -> images`, where `randn(*shape)` gives each
    image noise of `shape` (a generator without noise inputs ignores it).
    """

    config_class = StyleGANObjectiveConfig

    def __init__(self, model: Model, config: StyleGANObjectiveConfig, ctx):
        super().__init__(model, config, ctx)
        self.D = self.add_net("D", Discriminator(model.resolution, config.d_channel_base, config.d_channel_max,
                                                 config.mbstd_group))
        for name, net, lr, interval in (("G", model, config.g_lr, config.pl_interval if config.pl_weight else 0),
                                        ("D", self.D, config.d_lr, config.r1_interval)):
            # Lazy regularization: rescale lr and betas so the effective momentum per step is kept.
            c = interval / (interval + 1) if interval else 1.0
            betas = tuple(b**c for b in config.adam_betas)
            self.add_optimizer(name, torch.optim.Adam(net.parameters(), lr=lr * c, betas=betas, eps=1e-8))
        self.augment_pipe = AugmentPipe(config.augment, config.augment_ops, config.ada_target,
                                        config.ada_kimg).to(ctx.device)
        self.pl_mean = torch.zeros([], device=ctx.device)
        self.ada_signs = [0.0, 0]  # sum of sign(D(real)) and count since the last p adjustment

    def default_r1_gamma(self, batch: int) -> float:
        """R1 weight when `r1_gamma` is unset, for the global `batch`: StyleGAN2-ADA's heuristic."""
        return r1_gamma_heuristic(self.model.resolution, batch)

    # ------------------------------------------------------------ pieces
    def generate_ws(self, n: int, update_w_avg: bool = False) -> torch.Tensor:
        """ws for n fresh latents; with probability `style_mixing` an image takes its layers
        from `cutoff` on (uniform in [1, num_ws)) from a second latent."""
        model, num_ws = self.model, self.model.num_ws
        ws = model.mapping(self.randn(n, model.z_dim), update_w_avg=update_w_avg)
        if self.config.style_mixing > 0:
            other = model.mapping(self.randn(n, model.z_dim))
            cutoff = self.randint(num_ws - 1, n) + 1
            cutoff = torch.where(self.rand(n) < self.config.style_mixing, cutoff, num_ws)
            from_other = torch.arange(num_ws, device=ws.device)[None, :] >= cutoff[:, None]
            ws = torch.where(from_other[:, :, None], other, ws)
        return ws

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        n = ws.shape[0]
        return self.model.synthesis(ws, noise_mode="random", randn=lambda *shape: self.randn(n, *shape))

    def discriminate(self, images: torch.Tensor) -> torch.Tensor:
        return self.D(self.augment_pipe(images, self))

    # ------------------------------------------------------------ the step
    def train_step(self, real: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        n = real.shape[0]
        losses = {"loss_g": self._generator_step(n)}
        if self.config.pl_weight > 0 and step % self.config.pl_interval == 0:
            losses["pl_penalty"] = self._path_length_step(n)
        losses["loss_d"], real_logits = self._discriminator_step(real)
        if step % self.config.r1_interval == 0:
            losses["r1_penalty"] = self._r1_step(real)
        self._observe(real_logits)
        if self.augment_pipe.mode == "ada" and (step + 1) % self.config.ada_interval == 0:
            losses["ada_rt"] = self._adjust_augment(n)
        losses["ada_p"] = torch.tensor(self.augment_pipe.p, device=self.ctx.device)
        return losses

    def _generator_step(self, n: int) -> torch.Tensor:
        self.D.requires_grad_(False)
        with self.autocast():
            logits = self.discriminate(self.synthesize(self.generate_ws(n)))
            loss = F.softplus(-logits).float().mean()  # non-saturating: -log sigmoid(D(G(z)))
        self.optimize("G", loss)
        self.D.requires_grad_(True)
        return loss.detach()

    def _path_length_step(self, n: int) -> torch.Tensor:
        """Penalize how much |J_w^T y| (image change per unit w change, y random) varies
        around its running mean pl_mean: a smooth, well-conditioned mapping from w to images."""
        c = self.config
        m = max(n // c.pl_batch_shrink, 1)
        with self.autocast():
            ws = self.generate_ws(m)
            images = self.synthesize(ws)
            h, w = images.shape[2:]
            y = self.randn(m, *images.shape[1:]) / math.sqrt(h * w)
            (grad,) = torch.autograd.grad((images.float() * y).sum(), ws, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
        mean = self._mean_over_ranks(lengths.detach().mean())
        self.pl_mean = self.pl_mean.lerp(mean, c.pl_decay)
        penalty = (lengths - self.pl_mean).square().mean()
        self.optimize("G", penalty * c.pl_weight * c.pl_interval)
        return penalty.detach()

    def _discriminator_step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.requires_grad_(False)
        with torch.no_grad(), self.autocast():
            fake = self.synthesize(self.generate_ws(real.shape[0], update_w_avg=True))
        with self.autocast():
            fake_logits = self.discriminate(fake)
            real_logits = self.discriminate(real)
            loss = F.softplus(fake_logits).float().mean() + F.softplus(-real_logits).float().mean()
        self.optimize("D", loss)
        self.model.requires_grad_(True)
        return loss.detach(), real_logits.detach()

    def _r1_step(self, real: torch.Tensor) -> torch.Tensor:
        """R1: gamma/2 * E|grad_x D(x)|^2 on (non-augmented) reals, every r1_interval steps."""
        c = self.config
        gamma = c.r1_gamma if c.r1_gamma is not None else self.default_r1_gamma(real.shape[0] * self.ctx.world_size)
        real = real.detach().requires_grad_(True)
        with self.autocast():
            logits = self.discriminate(real)
            (grad,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
            penalty = grad.float().square().sum(dim=[1, 2, 3]).mean()
        self.optimize("D", penalty * (gamma / 2) * c.r1_interval)
        return penalty.detach()

    # ------------------------------------------------------------ ADA
    def _observe(self, real_logits: torch.Tensor) -> None:
        self.ada_signs[0] += real_logits.sign().sum().item()
        self.ada_signs[1] += real_logits.numel()

    def _adjust_augment(self, n: int) -> torch.Tensor:
        """r_t = E[sign D(real)] over all ranks since the last adjustment; then move p."""
        total, count = self._sum_over_ranks(torch.tensor(self.ada_signs, dtype=torch.float64)).tolist()
        rt = total / max(count, 1)
        self.augment_pipe.adjust(rt, n * self.ctx.world_size * self.config.ada_interval)
        self.ada_signs = [0.0, 0]
        return torch.tensor(rt, device=self.ctx.device)

    def _sum_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.distributed:
            x = x.to(self.ctx.device)
            torch.distributed.all_reduce(x)
        return x.cpu()

    def _mean_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.ctx.distributed:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x /= self.ctx.world_size
        return x

    # ------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {"ada_p": self.augment_pipe.p, "ada_signs": list(self.ada_signs), "pl_mean": self.pl_mean.item()}

    def load_extra_state(self, state: dict) -> None:
        self.augment_pipe.p = float(state["ada_p"])
        self.ada_signs = [float(state["ada_signs"][0]), int(state["ada_signs"][1])]
        self.pl_mean = torch.tensor(state["pl_mean"], dtype=torch.float32, device=self.ctx.device)


SPEC = ModelSpec(
    name="stylegan2",
    description="StyleGAN2 with ADA: style-modulated skip generator, residual D, R1 + path length",
    model=StyleGAN2,
    objective=StyleGANObjective,
    presets={
        # CPU: 16-32 px, narrow layers; ADA speed scaled to the ~100k images of a 10-minute run.
        "tiny": {"z_dim": 64, "w_dim": 64, "channel_base": 512, "channel_max": 64,
                 "d_channel_base": 512, "d_channel_max": 64, "batch": 16, "ada_kimg": 20.0,
                 "ema_kimg": 5.0},
        # 64 px on one GPU: StyleGAN2-ADA's "auto" config at 64 px (channels 512 down to 256,
        # 2 mapping layers, batch 32; ADA speed scaled to shorter runs). Config-f has 8 layers.
        "paper64": {"channel_base": 16384, "channel_max": 512, "d_channel_base": 16384, "d_channel_max": 512,
                    "mapping_layers": 2, "batch": 32, "ada_kimg": 100.0, "ema_kimg": 10.0},
    },
)
