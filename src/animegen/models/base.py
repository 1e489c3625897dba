"""The Model contract: what every generator family (vae, dcgan, ddpm, stylegan...) provides,
and what it declares it can do.

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
                        first from its seed (a diffusion model's z is its initial noise).
    render(latents, noise, **options) -> Tensor
                        len(noise) images, N x 3 x R x R, float32 in [-1, 1], on the
                        model's device, from the explicit latents `draw` returned
                        (differentiable in them, for projection).
    draw(noise, given, **options) -> dict   (families with a W space override it)
                        every latent of the batch that the image depends on: "z", and
                        with a W space "w" (N, num_ws, w_dim, W+) and, with noise maps,
                        "noise" (in the order render uses them). All randomness comes
                        from `noise.randn(...)`, so image i depends only on its seed (not
                        on batch size or on its position in the batch). `given` replaces
                        drawn latents with explicit ones; the seed's stream still advances
                        past them, so what follows is drawn as if they had been.
    sample(noise, **options) = render(draw(noise), noise): called under torch.no_grad()
                        on the EMA copy in eval mode.
    options             the sampling options (`Option`: name, kind, default, limit, help),
                        the one place each is written: the CLI makes its flags from them,
                        the studio its controls, and `resolve_sample_options` checks given
                        values and fills in defaults, so that `animegen eval` records exactly
                        how images were made. `option_specs()` gives them with this
                        instance's defaults and bounds (a run's own sampler, its step count).
    capabilities        a `Capabilities`: what the family can do beyond drawing and
                        rendering (latent spaces, style mixing, noise maps, an input
                        transform, how it is inverted, SeFa, a discriminator for
                        perceptual losses). Everything above `models/` reads this and the
                        hooks it names, never a family's name, class or attributes.

The hooks a capability brings (each raises NotImplementedError unless declared):
    "w" in spaces       num_ws, w_dim, map_z(z) -> W+ (N, num_ws, w_dim), untruncated
    noise_maps          noise_shapes() -> the per-image shapes of the maps `draw` makes
    input_transform     raw_sample(noise, transform, truncation) -> the unclamped output
                        under an input transform (EQ-T / EQ-R)
    inversion "encoder" encode(images) -> (mean, logvar) of the latent z
    inversion "ode"     invert(images, steps) -> (latents, options): the deterministic
                        sampler run backwards; inversion_steps() -> (default, most)
    sefa                latent_linear_map(layers) -> the first linear map applied to the
                        edit-space latent (outputs, latent size)
    guidance            autoguidance (Karras et al. 2024): `set_guide(guide)` attaches a
                        Model of the same family and resolution (an earlier checkpoint of
                        the run, or a smaller run on the same data), after which
                        option_specs() holds GUIDANCE_OPTION and render denoises with
                        D_guide + w (D - D_guide), w the "guidance" option
    discriminator       feature_discriminator(resolution, objective_config) -> a
                        discriminator module with features(images) -> [tensors]
    diffusers           diffusers_form() -> an interop.diffusers_folder.DiffusersForm: the
                        U-Net, scheduler config and pipeline diffusers samples the model with
                        (`animegen export --format diffusers`)
and, for diffusion samplers: deterministic(options), nfe(options), nfe_sweep(counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from animegen.errors import UserError
from animegen.settings import MAX_RESOLUTION, TEMPERATURE, Limit, between


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


@dataclass(frozen=True)
class Option:
    """A sampling option of a family, written once: the CLI's `--name`, the studio's control
    and `Model.resolve_sample_options` all come from it.

    kind            "float", "int", "choice" (a name, one of `limit`'s choices) or "xy"
                    (two numbers; "X,Y" on the command line)
    default         filled in when the option is not given (None: unset unless given)
    limit           the values accepted (each of the two for "xy"); the model may also
                    refuse combinations in its own resolve_sample_options
    applies_when    (other option, its values): the option means something only then (the
                    studio disables it otherwise and its default is not filled in); an
                    empty tuple of values: only when the other option is given
    studio_range    (low, high, step) of the studio's slider: a range for the hand, inside
                    `limit` (a wider value is typed on the command line); None: a number box
    """

    name: str
    kind: str
    help: str
    default: Any = None
    limit: Limit | None = None
    label: str | None = None
    applies_when: tuple[str, tuple] | None = None
    studio_range: tuple[float, float, float] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple:
        return self.limit.choices if self.limit is not None and self.limit.choices else ()

    def applies(self, resolved: dict[str, Any]) -> bool:
        """Whether the option means something beside the options resolved so far."""
        if self.applies_when is None:
            return True
        other, values = self.applies_when
        return other in resolved if not values else resolved.get(other) in values

    def check(self, value) -> Any:
        """`value` as this option's type, within its limit; else a UserError naming the flag."""
        typed = _typed(self, value)
        for part in typed if self.kind == "xy" else (typed,):
            problem = self.limit.problem(part) if self.limit is not None else None
            if problem:
                raise UserError(f"{self.flag} {value!r} {self.limit.verdict}: it must be {problem}.")
        return typed

    def describe(self) -> dict[str, Any]:
        """The option as JSON, for the studio's page."""
        limit = self.limit or Limit()
        return {"name": self.name, "kind": self.kind, "label": self.label or self.name.replace("_", " "),
                "help": self.help, "default": list(self.default) if isinstance(self.default, tuple) else self.default,
                "low": limit.low, "high": limit.high, "choices": list(self.choices),
                "applies_when": list(self.applies_when) if self.applies_when else None,
                "studio_range": list(self.studio_range) if self.studio_range else None}


def _typed(option: Option, value):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if option.kind == "float" and number:
        return float(value)
    if option.kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if option.kind == "choice" and isinstance(value, str):
        return value
    if option.kind == "xy":
        parts = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else ()
        try:
            pair = tuple(float(v) for v in parts)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) == 2:
            return pair
    expected = {"float": "a number", "int": "an integer", "choice": "a name", "xy": "two numbers X,Y"}[option.kind]
    raise UserError(f"{option.flag} {value!r} must be {expected}.")


@dataclass(frozen=True)
class Capabilities:
    """What a family can do beyond drawing and rendering (see the module docstring for the
    hooks each brings). Steering, metrics, the studio and compare read these."""

    spaces: tuple[str, ...] = ("z",)  # latents a user can give: "z" always; "w": W+, one w per style input
    style_mixing: bool = False  # W+ can take a layer range's styles from another latent
    noise_maps: bool = False  # draw makes per-image noise maps that render uses
    input_transform: bool = False  # raw_sample under a translation/rotation: EQ-T, EQ-R
    inversion: str = "optimize"  # how project finds latents: "optimize", "encoder" (then optimize) or "ode"
    sefa: bool = False  # latent_linear_map: SeFa directions from the weights
    discriminator: bool = False  # feature_discriminator: the run's D as a projection loss
    guidance: bool = False  # set_guide: a guide model steers sampling (autoguidance)
    diffusers: bool = False  # diffusers_form: what diffusers samples it with (export)

    def __post_init__(self):
        if self.inversion not in INVERSIONS:
            raise ValueError(f"inversion {self.inversion!r}: choose one of {', '.join(INVERSIONS)}")

    @property
    def edit_space(self) -> str:
        """The space directions live in: one w (before its broadcast to the style inputs), else z."""
        return "w" if "w" in self.spaces else "z"

    @property
    def projection_spaces(self) -> tuple[str, ...]:
        """The spaces project optimises in, the default first."""
        return ("w+", "w") if "w" in self.spaces else ("z",)


INVERSIONS = ("optimize", "encoder", "ode")
# A z scaled by it before rendering (the families that draw z ~ N(0, I) and nothing else).
TEMPERATURE_OPTION = Option("temperature", "float", "z scaled by this (1 = off; below 1: more typical faces)",
                            default=1.0, limit=TEMPERATURE, label="latent scale", studio_range=(0, 2, 0.05))
# The weight of a guide model (capabilities.guidance), an option while one is attached.
GUIDANCE_OPTION = Option("guidance", "float", "autoguidance weight w with a guide: D_guide + w (D - D_guide); 1 = "
                         "the model alone", default=2.0, limit=between(0, 20), label="guidance w",
                         studio_range=(1, 4, 0.05))


class Model(nn.Module):
    """Base class of every generator family; see the module docstring for the contract."""

    config_class: ClassVar[type]
    options: ClassVar[tuple[Option, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()
    num_ws: int | None = None  # style inputs of W+ ("w" in capabilities.spaces)
    w_dim: int | None = None
    guide: Model | None = None  # capabilities.guidance: the attached guide (set_guide)
    # Loaded for sampling with NHWC weights (load_generator): faster for convolutional networks on
    # the CPU (tiny, 32 px, one thread: 1.10-1.22x; docs/results/interop.md).
    channels_last: ClassVar[bool] = True

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

    # ------------------------------------------------------------ sampling options
    def option_specs(self) -> tuple[Option, ...]:
        """The sampling options with this model's defaults and bounds (default: the class's),
        and the guidance weight while a guide is attached."""
        return self.options + ((GUIDANCE_OPTION,) if self.guide is not None else ())

    def resolve_sample_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The full set of options `sample` will use: `options` (None values dropped), typed
        and checked, with the defaults of the options that apply filled in. Unknown names
        are a UserError; families add their own rules across options."""
        specs = self.option_specs()
        given = {k: v for k, v in options.items() if v is not None}
        if "guidance" in given and self.guide is None:
            raise UserError("--guidance weighs a guide model against this one: give the guide too (--guide RUN).")
        unknown = sorted(set(given) - {o.name for o in specs})
        if unknown:
            accepted = ", ".join(o.name for o in specs) or "none"
            raise UserError(f"{type(self).__name__} does not take sampling option(s) {', '.join(unknown)} "
                            f"(accepted: {accepted}).")
        resolved = {}
        for option in specs:
            if option.name in given:
                resolved[option.name] = option.check(given[option.name])
            elif option.default is not None and option.applies(resolved):
                resolved[option.name] = option.default
        return resolved

    def option_flags(self, options: dict[str, Any]) -> list[str]:
        """The command-line flags that give these (resolved) options: those unlike the defaults."""
        specs = {o.name: o for o in self.option_specs()}
        flags = []
        for name, value in options.items():
            if value != specs[name].default:
                flags += [specs[name].flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
        return flags

    def deterministic(self, options: dict[str, Any]) -> bool:
        """Whether `render` is a function of the latents alone under these (resolved) options."""
        return True

    deterministic_hint = ""  # what to choose instead, when some options are not deterministic

    def nfe(self, options: dict[str, Any]) -> int | None:
        """Network evaluations per image under these options (None: one pass of a generator)."""
        return None

    def nfe_sweep(self, counts: Sequence[int]) -> list[dict[str, Any]]:
        """The sampler settings an FID-against-NFE sweep measures at about these step counts
        (none for a family without a sampler)."""
        return []

    # ------------------------------------------------------------ latents
    @property
    def z_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def latent_size(self, space: str) -> int:
        """Values of one image's latent in `space`: z flattened, or one w."""
        return int(torch.Size(self.z_shape).numel()) if space == "z" else int(self.w_dim)

    def draw(self, noise: Noise, given: Latents | None = None, temperature: float = 1.0, **options) -> Latents:
        """`temperature` (the families that declare it as an option) scales a drawn z."""
        z = noise.randn(*self.z_shape)
        if given is not None and "z" in given:
            return {"z": given["z"].to(z)}
        return {"z": z if temperature == 1 else z * temperature}

    def render(self, latents: Latents, noise: Noise, **options) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, noise: Noise, **options) -> torch.Tensor:
        return self.render(self.draw(noise, **options), noise, **options)

    # ------------------------------------------------------------ capability hooks
    def set_guide(self, guide: Model) -> None:
        """Attach `guide` (capabilities.guidance; the caller checks family and resolution). It
        stays outside the module tree: not in state_dict, not moved by .to()."""
        if not self.capabilities.guidance:
            raise UserError(f"{type(self).__name__} takes no guide model (no autoguidance).")
        object.__setattr__(self, "guide", guide)  # nn.Module.__setattr__ would register it as a submodule

    def map_z(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no W space")

    def noise_shapes(self) -> list[tuple[int, ...]]:
        return []

    def raw_sample(self, noise: Noise, transform: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no input transform")

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no encoder")

    inversion_sampler = ""  # the sampler `invert` runs backwards, in messages ("DDIM")

    def invert(self, images: torch.Tensor, steps: int) -> tuple[Latents, dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} has no ODE inversion")

    def inversion_steps(self) -> tuple[int, int]:
        """(default, most) steps of `invert`."""
        raise NotImplementedError(f"{type(self).__name__} has no ODE inversion")

    def latent_linear_map(self, layers: tuple[int, int] | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no linear map of its latent to factorize")

    @classmethod
    def feature_discriminator(cls, resolution: int, objective_config: dict) -> nn.Module:
        raise NotImplementedError(f"{cls.__name__} has no discriminator to measure with")

    def diffusers_form(self):
        """The interop.diffusers_folder.DiffusersForm of this model (capabilities.diffusers)."""
        raise NotImplementedError(f"{type(self).__name__} has no diffusers form")


class ResolutionBlocks(nn.Module):
    """A network whose `blocks[i]` works at resolution R / 2^i and whose last block works at the
    same small resolution whatever R (StyleGAN's discriminator): transfer learning matches its
    blocks by the resolution they work at, not by their index."""

    blocks: nn.Sequential


def _ranges(values: list[int]) -> str:
    """A short list of accepted resolutions: all of them when few, else the first, a step and the last."""
    if len(values) <= 12:
        return ", ".join(map(str, values))
    return f"{values[0]}, {values[1]}, {values[2]} ... {values[-1]} (every multiple of {values[1] - values[0]})"
