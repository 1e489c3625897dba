"""The Model contract: what every generator family (vae, dcgan, ddpm, stylegan...) provides.

A Model is an `nn.Module` holding exactly what is needed to *generate* images: the
generator, the VAE (encoder and decoder), or the denoiser together with its noise
schedule. Auxiliary training networks (a discriminator, a perceptual net) and every
optimizer belong to the family's `Objective` (animegen.training.objective), never here.
The training loop keeps an EMA copy of the whole Model (parameters averaged, buffers
copied) and samples, evaluates and exports through that copy.

Implementers subclass `Model` and provide:

    config_class        the family's architecture dataclass; it must have an int
                        `resolution` field (set from the dataset, never from a preset).
    __init__(config)    build every submodule from `config` alone (plain constructor,
                        no I/O), and call `super().__init__(config)` first.
    z_shape             the per-image shape of the Gaussian latent z each image draws
                        first from its seed (the DDPM's z is its initial noise x_T).
    render(latents, noise, **options) -> Tensor
                        len(noise) images, N x 3 x R x R, float32 in [-1, 1], on the
                        model's device, from the explicit latents `draw` returned
                        (differentiable in them, for projection).
    draw(noise, given, **options) -> dict   (StyleGAN overrides it to add "w" and noise maps)
                        every latent of the batch that the image depends on: "z", and
                        for StyleGAN "w" (N, num_ws, w_dim, W+) and "noise" (the noise
                        maps, in the order the synthesis uses them). All randomness comes
                        from `noise.randn(...)`, so image i depends only on its seed (not
                        on batch size or on its position in the batch). `given` replaces
                        drawn latents with explicit ones; the seed's stream still advances
                        past them, so what follows is drawn as if they had been.
    sample(noise, **options) = render(draw(noise), noise): called under torch.no_grad()
                        on the EMA copy in eval mode.
    sample_options      the option names `sample` accepts (e.g. ("sampler", "steps")),
                        and `resolve_sample_options` to fill in their defaults, so that
                        `animegen eval` can record exactly how images were made.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from animegen.errors import UserError
from animegen.settings import MAX_RESOLUTION, Limit


class Noise:
    """Standard Gaussian noise for a batch in which image i draws only from its own seed.

    Each image owns a CPU `torch.Generator` seeded with its seed; every `randn` call
    advances all of them by one draw of the requested per-image shape. Drawing on the CPU
    makes samples identical across devices and batch sizes.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, *shape: int) -> torch.Tensor:
        """Noise of shape (len(self), *shape) on `self.device`."""
        draws = [torch.randn(shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)


class NvlabsNoise(Noise):
    """NVIDIA's seed convention (their gen_images.py): each image's first draw, its latent z,
    is np.random.RandomState(seed).randn(*shape); later draws (noise inputs) are as `Noise`'s."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        super().__init__(seeds, device)
        self.drawn_latent = False

    def randn(self, *shape: int) -> torch.Tensor:
        if self.drawn_latent:
            return super().randn(*shape)
        self.drawn_latent = True
        latents = np.stack([np.random.RandomState(s).randn(*shape) for s in self.seeds])
        return torch.from_numpy(latents).float().to(self.device)


SEED_CONVENTIONS = {"animegen": Noise, "nvlabs": NvlabsNoise}

Latents = dict[str, Any]  # "z", "w": tensors (N, ...); "noise": a list of tensors (N, 1, r, r)


class Model(nn.Module):
    """Base class of every generator family; see the module docstring for the contract."""

    config_class: ClassVar[type]
    sample_options: ClassVar[tuple[str, ...]] = ()
    sample_limits: ClassVar[dict[str, Limit]] = {}  # accepted values of sample options, checked on resolve

    def __init__(self, config):
        super().__init__()
        self.config = config

    @classmethod
    def resolutions(cls) -> list[int]:
        """The resolutions the family builds at (from its architecture rules); checked, and
        listed in the error, before anything is built. Default: powers of two from 8."""
        return [2**k for k in range(3, MAX_RESOLUTION.bit_length())]

    @classmethod
    def check_resolution(cls, family: str, resolution: int) -> None:
        accepted = cls.resolutions()
        if resolution not in accepted:
            raise UserError(f"{family} cannot train at {resolution} px; it accepts {_ranges(accepted)} px. "
                            "Prepare the data at one of them (animegen data prepare --resolution).")

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def resolve_sample_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The full set of options `sample` will use: `options` (None values dropped)
        with the family's defaults filled in. Unknown names are a UserError."""
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - set(self.sample_options))
        if unknown:
            accepted = ", ".join(self.sample_options) or "none"
            raise UserError(f"{type(self).__name__} does not take sampling option(s) {', '.join(unknown)} "
                            f"(accepted: {accepted}).")
        for key, value in given.items():
            limit = self.sample_limits.get(key)
            problem = limit.problem(value) if limit is not None else None
            if problem:
                raise UserError(f"--{key.replace('_', '-')} {value!r} {limit.verdict}: it must be {problem}.")
        return given

    @property
    def z_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def draw(self, noise: Noise, given: Latents | None = None, temperature: float = 1.0, **options) -> Latents:
        """`temperature` (the families that list it in sample_options) scales a drawn z."""
        z = noise.randn(*self.z_shape)
        if given is not None and "z" in given:
            return {"z": given["z"].to(z)}
        return {"z": z if temperature == 1 else z * temperature}

    def render(self, latents: Latents, noise: Noise, **options) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, noise: Noise, **options) -> torch.Tensor:
        return self.render(self.draw(noise, **options), noise, **options)


def _ranges(values: list[int]) -> str:
    """A short list of accepted resolutions: all of them when few, else the first, a step and the last."""
    if len(values) <= 12:
        return ", ".join(map(str, values))
    return f"{values[0]}, {values[1]}, {values[2]} ... {values[-1]} (every multiple of {values[1] - values[0]})"
