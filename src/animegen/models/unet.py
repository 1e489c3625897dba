"""The DDPM U-Net (Ho et al. 2020, with improved DDPM's scale-shift time conditioning, or Ho et
al.'s additive one: `time_conditioning`). It is diffusers' UNet2DModel weight for weight
(animegen.interop.unet2d).

Residual blocks (GroupNorm, SiLU, dropout) conditioned on a sinusoidal time embedding, self-attention
at the low resolutions listed in the config, strided-conv downsampling, nearest+conv upsampling, and
skip connections from every down-path block to the up path. The last conv of every residual branch,
of every attention block and of the network output start at zero, so each block starts as the
identity and the untrained network predicts 0 (eps = 0, or v = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from animegen.errors import UserError
from animegen.settings import RESOLUTION, WIDTH, Limit, between, one_of

TIME_CONDITIONINGS = ("scale_shift", "add")


@dataclass
class UNetConfig:
    resolution: int = 64
    in_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    time_embed_dim: int = 512
    head_channels: int = 64  # channels per attention head
    # How t enters each residual block: "scale_shift" scales and shifts the second GroupNorm's output
    # (improved DDPM); "add" adds t's projection before that norm (Ho et al.; diffusers' "default").
    time_conditioning: str = "scale_shift"

    limits: ClassVar[dict[str, Limit]] = {
        "resolution": RESOLUTION, "in_channels": between(1, 64), "base_channels": WIDTH,
        "channel_mults": between(1, 64), "num_res_blocks": between(1, 64), "attention_resolutions": RESOLUTION,
        "dropout": Limit(0, 1, high_open=True), "num_groups": between(1, 1024), "time_embed_dim": WIDTH,
        "head_channels": WIDTH, "time_conditioning": one_of(*TIME_CONDITIONINGS)}

    def __post_init__(self):
        # Tuples again after a JSON round trip (dataclasses.asdict -> json -> UNetConfig(**d)).
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        levels = self.level_resolutions()
        if self.resolution % 2 ** (len(self.channel_mults) - 1):
            raise UserError(
                f"Resolution {self.resolution} cannot be halved {len(self.channel_mults) - 1} times; "
                "use a multiple of that power of two."
            )
        missing = set(self.attention_resolutions) - set(levels)
        if missing:
            raise UserError(f"Attention resolutions {sorted(missing)} are none of this U-Net's levels {levels}.")

    def level_resolutions(self) -> list[int]:
        return [self.resolution // 2**level for level in range(len(self.channel_mults))]


def tiny_config(resolution: int = 32) -> UNetConfig:
    """For 16-32 px on a CPU (0.7M parameters). Few channels at full resolution, where a CPU step
    spends most of its time (base 32 with mults 1,2,2 costs 2.6x the FLOPs, ~2x the time); no
    dropout: short CPU runs underfit, and dropout would only slow them."""
    return UNetConfig(
        resolution=resolution,
        base_channels=16,
        channel_mults=(1, 2, 4),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        num_groups=8,
        time_embed_dim=64,
    )


def paper64_config(resolution: int = 64) -> UNetConfig:
    """DDPM's CIFAR-10 network (128 channels, mults 1,2,2,2, two blocks per level, attention at 16 px,
    dropout 0.1; 38.3M parameters with the scale-shift time projections), applied at 64 px."""
    return UNetConfig(resolution=resolution)



def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoids of (possibly fractional) timesteps t, shape (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, config: UNetConfig):
        super().__init__()
        groups = config.num_groups
        self.scale_shift = config.time_conditioning == "scale_shift"
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(config.time_embed_dim, (2 if self.scale_shift else 1) * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        t = self.time_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into heads of {head_channels}.")
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> three (B, heads, H*W, C/heads)
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Block(nn.Module):
    """A residual block, followed by self-attention at the attention resolutions."""

    def __init__(self, in_ch: int, out_ch: int, attention: bool, config: UNetConfig):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, config)
        self.attn = SelfAttention(out_ch, config.head_channels, config.num_groups) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, temb))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The blocks at one resolution, then the change of resolution (None at the ends)."""

    def __init__(self, blocks: list[Block], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """forward(x, t): x (B, C, R, R), t (B,) timesteps -> (B, C, R, R) model output. An optional
    `embedding` (B, base_channels), e.g. of augmentation labels, is added to t's sinusoids."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        channels = [c.base_channels * m for m in c.channel_mults]
        self.time_mlp = nn.Sequential(
            nn.Linear(c.base_channels, c.time_embed_dim), nn.SiLU(), nn.Linear(c.time_embed_dim, c.time_embed_dim)
        )
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)

        # Down path; every block and downsample output is kept as a skip for the up path.
        skip_channels, ch = [c.base_channels], c.base_channels
        self.down = nn.ModuleList()
        for level, (out_ch, res) in enumerate(zip(channels, c.level_resolutions())):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(Block(ch, out_ch, res in c.attention_resolutions, c))
                ch = out_ch
                skip_channels.append(ch)
            last = level == len(channels) - 1
            self.down.append(Level(blocks, None if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)))
            if not last:
                skip_channels.append(ch)

        self.mid = Block(ch, ch, True, c)
        self.mid_res = ResBlock(ch, ch, c)

        # Up path: one block more per level than on the way down, to take the downsample's skip.
        self.up = nn.ModuleList()
        for level, (out_ch, res) in reversed(list(enumerate(zip(channels, c.level_resolutions())))):
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(Block(ch + skip_channels.pop(), out_ch, res in c.attention_resolutions, c))
                ch = out_ch
            self.up.append(Level(blocks, Upsample(ch) if level > 0 else None))

        self.norm_out = nn.GroupNorm(c.num_groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, c.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        sinusoids = timestep_embedding(t, self.config.base_channels)
        temb = self.time_mlp(sinusoids if embedding is None else sinusoids + embedding)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, temb)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid_res(self.mid(h, temb), temb)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
