"""Our networks rebuilt from NVIDIA snapshot records (nvlabs.unpickle.Persistent): the same
architecture from the recorded constructor arguments and layer attributes, then every
parameter and buffer copied by name. Whatever we cannot reproduce exactly is refused with one
line naming the setting, never replaced by a different network.

Differences in convention handled here: NVIDIA's StyleGAN2 up-sampling convolutions (conv0 of
every block above 4x4) are true convolutions and ours correlate, so their taps are flipped;
noise_const gains a channel axis; NVIDIA's filter buffers, which we compute ourselves, are
checked against ours instead of copied. fp16 layers load as fp32 (NVIDIA runs them in fp32 on CPU).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from animegen.errors import UserError
from animegen.models.base import Model
from animegen.models.stylegan2 import Discriminator, StyleGAN2, StyleGAN2Config
from animegen.models.stylegan3 import StyleGAN3, StyleGAN3Config, StyleGAN3R, StyleGAN3RConfig
from animegen.nvlabs.unpickle import Persistent, read_snapshot
from animegen.settings import build

FILTER_TOLERANCE = 1e-6  # our Kaiser / jinc filters vs NVIDIA's recorded ones
# stylegan3's networks_stylegan3 constructor defaults (what an absent init kwarg means)
SG3_DEFAULTS = {"channel_base": 32768, "channel_max": 512, "num_layers": 14, "num_critical": 2, "first_cutoff": 2,
                "first_stopband": 2**2.1, "last_stopband_rel": 2**0.3, "margin_size": 10, "output_scale": 0.25,
                "num_fp16_res": 4, "conv_kernel": 3, "filter_size": 6, "lrelu_upsampling": 2,
                "use_radial_filters": False, "conv_clamp": 256, "magnitude_ema_beta": 0.999}
SG3_TO_OURS = {"margin_size": "margin", "use_radial_filters": "radial_filters"}
# constructor arguments that change how fast NVIDIA's code runs, not what it computes
PERFORMANCE_ONLY = {"num_fp16_res", "fp16_channels_last", "fused_modconv_default", "channels_last"}
GENERATOR_KWARGS = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs"}
# StyleGAN2 synthesis arguments (both repos); their effect is read from the layers' recorded values
SG2_SYNTHESIS_KWARGS = {"channel_base", "channel_max", "architecture", "resample_filter", "conv_clamp", "use_noise",
                        "activation", *PERFORMANCE_ONLY}


def refuse(what: str, setting: str, value, why: str = "animegen has no exact equivalent") -> UserError:
    return UserError(f"cannot import {what}: {setting}={value!r} ({why}).")


# ---------------------------------------------------------------- reading records
def submodule(record: Persistent, path: str) -> Persistent:
    for name in path.split("."):
        record = record.state["_modules"][name]
    return record


def children(record: Persistent) -> dict[str, Persistent]:
    return {k: v for k, v in record.state["_modules"].items() if isinstance(v, Persistent)}


def flat_tensors(record: Persistent, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and buffer, by its dotted name, as float32 (fp16 layers load in fp32)."""
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in record.state.get(group, {}).items():
            if tensor is not None:
                out[prefix + name] = tensor.float() if tensor.is_floating_point() else tensor
    for name, child in children(record).items():
        out.update(flat_tensors(child, f"{prefix}{name}."))
    return out


def layer_values(record: Persistent, attribute: str, exclude: tuple[str, ...] = ()) -> set:
    """The values of `attribute` over the record and all its submodules that have it, but
    for the submodules named in `exclude`."""
    found = {record.state[attribute]} if attribute in record.state else set()
    for name, child in children(record).items():
        if name not in exclude:
            found |= layer_values(child, attribute, exclude)
    return found


def one_value(record: Persistent, attribute: str, what: str, exclude: tuple[str, ...] = ()):
    """The one value all layers record for `attribute` (None when none does)."""
    values = layer_values(record, attribute, exclude)
    if len(values) > 1:
        raise refuse(what, attribute, sorted(values, key=str), "it differs between layers")
    return next(iter(values), None)


def _check(what: str, settings: dict, accepted: dict) -> None:
    for name, ok in accepted.items():
        if settings[name] not in ok:
            raise refuse(what, name, settings[name])


def _check_known(what: str, kwargs: dict, known: set) -> None:
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise refuse(what, unknown[0], kwargs[unknown[0]], "a setting this importer does not know")


def _check_common(what: str, kwargs: dict) -> None:
    if kwargs.get("c_dim", 0):
        raise refuse(what, "c_dim", kwargs["c_dim"], "class-conditional networks are not supported")
    if kwargs.get("img_channels", 3) != 3:
        raise refuse(what, "img_channels", kwargs["img_channels"], "animegen generates RGB images")


# ---------------------------------------------------------------- generators
def is_stylegan3(record: Persistent) -> bool:
    return "input" in children(submodule(record, "synthesis"))


def _mapping_settings(record: Persistent, what: str) -> dict:
    mapping = submodule(record, "mapping")
    gains = layer_values(mapping, "bias_gain")
    _check(what, {"mapping activations": sorted(layer_values(mapping, "activation"))},
           {"mapping activations": [["lrelu"]]})
    if len(gains) != 1:
        raise refuse(what, "mapping lr_multiplier", sorted(gains), "it differs between layers")
    return {"mapping_layers": int(mapping.state["num_layers"]), "w_avg_beta": float(mapping.state["w_avg_beta"]),
            "mapping_lr_mult": float(next(iter(gains)))}


def _common_config(record: Persistent, what: str) -> dict:
    kwargs = record.state["_init_kwargs"]
    _check_common(what, kwargs)
    if record.state.get("_init_args"):
        raise refuse(what, "positional arguments", record.state["_init_args"], "NVIDIA passes keywords only")
    if record.class_name != "Generator":
        raise refuse(what, "class", record.class_name, "not an NVIDIA StyleGAN Generator")
    return {"resolution": int(record.state["img_resolution"]), "z_dim": int(record.state["z_dim"]),
            "w_dim": int(record.state["w_dim"]), **_mapping_settings(record, what)}


def stylegan2_config(record: Persistent, what: str = "G") -> StyleGAN2Config:
    """StyleGAN2 (either repo): skip architecture, [1,3,3,1] filters, noise inputs."""
    kwargs = record.state["_init_kwargs"]
    synthesis = {**kwargs, **kwargs.get("synthesis_kwargs", {})}  # stylegan2-ada nests them
    _check_known(what, synthesis, GENERATOR_KWARGS | SG2_SYNTHESIS_KWARGS | {"synthesis_kwargs"})
    synth = submodule(record, "synthesis")
    _check(what, {"architecture": one_value(synth, "architecture", what),
                  "use_noise": one_value(synth, "use_noise", what),
                  "activations": sorted(layer_values(synth, "activation")),
                  "resample_filter": synthesis.get("resample_filter", [1, 3, 3, 1])},
           {"architecture": ["skip"], "use_noise": [True], "activations": [["linear", "lrelu"]],
            "resample_filter": [[1, 3, 3, 1]]})
    return build(StyleGAN2Config, {**_common_config(record, what), "channel_base": int(synthesis.get("channel_base", 32768)),
                                   "channel_max": int(synthesis.get("channel_max", 512)),
                                   "conv_clamp": one_value(synth, "conv_clamp", what)}, what)


def stylegan3_config(record: Persistent, what: str = "G") -> StyleGAN3Config:
    kwargs = record.state["_init_kwargs"]
    _check_known(what, kwargs, GENERATOR_KWARGS | set(SG3_DEFAULTS))
    settings = {**SG3_DEFAULTS, **kwargs}
    config_class = StyleGAN3RConfig if settings["use_radial_filters"] else StyleGAN3Config
    values = {SG3_TO_OURS.get(k, k): settings[k] for k in SG3_DEFAULTS if k not in PERFORMANCE_ONLY}
    synth = submodule(record, "synthesis")
    for recorded in ("conv_clamp", "magnitude_ema_beta"):  # as the layers have them
        values[recorded] = one_value(synth, recorded, what)
    return build(config_class, {**_common_config(record, what), **values}, what)


def generator_config(record: Persistent, what: str = "G") -> tuple[str, StyleGAN2Config | StyleGAN3Config]:
    """Our family name and model config for an NVIDIA Generator record."""
    if is_stylegan3(record):
        config = stylegan3_config(record, what)
        return ("stylegan3-r" if config.radial_filters else "stylegan3-t"), config
    return "stylegan2", stylegan2_config(record, what)


def _mapping_name(name: str) -> str:
    m = re.fullmatch(r"mapping\.fc(\d+)\.(.+)", name)
    return f"mapping.layers.{m[1]}.{m[2]}" if m else name


def _stylegan2_name(name: str) -> str | None:
    """NVIDIA's StyleGAN2 generator tensor name -> ours (None: a filter we compute ourselves)."""
    name = _mapping_name(name)
    if name.endswith("resample_filter"):
        return None
    if name == "synthesis.b4.const":
        return "synthesis.const"
    if m := re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(.+)", name):
        level = int(math.log2(int(m[1]))) - 2
        if m[2] == "torgb":
            return f"synthesis.torgbs.{level}.{m[3]}"
        return f"synthesis.convs.{2 * level - (m[2] == 'conv0')}.{m[3]}"
    return name


def _stylegan2_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if re.fullmatch(r"synthesis\.b\d+\.conv0\.weight", name):
        return tensor.flip([2, 3])  # NVIDIA's up-sampling layers convolve; ours correlate
    if name.endswith("noise_const"):
        return tensor[None]
    return tensor


def _stylegan3_state(record: Persistent, model: StyleGAN3, what: str) -> dict[str, torch.Tensor]:
    """Tensors renamed to ours; NVIDIA's layer schedule and filters checked against ours."""
    synth = submodule(record, "synthesis")
    names = synth.state["layer_names"]
    if len(names) != len(model.synthesis.layers):
        raise refuse(what, "num_layers", len(names) - 1)
    transform = synth.state["_modules"]["input"].state["_buffers"]["transform"]
    if not torch.equal(transform.float(), torch.eye(3)):
        raise refuse(what, "synthesis.input.transform", transform.tolist(),
                     "a stored user transform; set it at sampling time with --translate/--rotate")
    state = {}
    for name, tensor in flat_tensors(record).items():
        name = _mapping_name(name)
        if name.startswith("synthesis.L"):
            layer, rest = name[len("synthesis."):].split(".", 1)
            name = f"synthesis.layers.{names.index(layer)}.{rest}"
        if name.endswith(("up_filter", "down_filter")):
            _check_filter(model, name, tensor, what)
        elif name != "synthesis.input.transform":
            state[name] = tensor
    for i, (layer, ours) in enumerate(zip(names, model.synthesis.layers)):
        theirs = synth.state["_modules"][layer].state
        if (theirs["up_factor"], theirs["down_factor"], list(theirs["padding"])) != (ours.up, ours.down, ours.padding()):
            raise refuse(what, f"layer {layer}", "resampling", "its schedule differs from the one we derive")
    return state


def _check_filter(model: Model, name: str, theirs: torch.Tensor, what: str) -> None:
    ours = model.get_buffer(name)
    if ours.shape != theirs.shape or (ours - theirs).abs().max() > FILTER_TOLERANCE:
        raise refuse(what, name, tuple(theirs.shape), "NVIDIA's filter differs from the one we design")


def load_generator(record: Persistent, what: str = "G") -> tuple[str, Model]:
    """(family, our generator with the record's weights), in eval mode."""
    family, config = generator_config(record, what)
    if family == "stylegan2":
        model = StyleGAN2(config)
        state = {ours: _stylegan2_tensor(theirs, t) for theirs, t in flat_tensors(record).items()
                 if (ours := _stylegan2_name(theirs)) is not None}
    else:
        model = (StyleGAN3R if config.radial_filters else StyleGAN3)(config)
        state = _stylegan3_state(record, model, what)
    _load(model, state, what)
    return family, model.eval()


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise refuse(what, "tensor", name, "missing from the pickle" if missing else "not in the network we rebuild")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise refuse(what, name, tuple(tensor.shape), f"we expect shape {tuple(own[name].shape)}")
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- discriminator
def discriminator_settings(record: Persistent, what: str = "D") -> dict:
    """Our StyleGAN objective's D settings for an NVIDIA Discriminator record: resnet
    architecture, [1,3,3,1] filters, one minibatch-stddev channel, no label conditioning."""
    kwargs = record.state["_init_kwargs"]
    _check_common(what, kwargs)
    if record.class_name != "Discriminator":
        raise refuse(what, "class", record.class_name, "not an NVIDIA StyleGAN Discriminator")
    mbstd = submodule(record, "b4.mbstd")
    resample = {tuple(v) for v in layer_values(record, "resample_filter") if isinstance(v, list)}
    _check(what, {"architecture": one_value(record, "architecture", what),
                  "mbstd_num_channels": mbstd.state["num_channels"], "mbstd_group_size": mbstd.state["group_size"],
                  "activations": sorted(layer_values(record, "activation")),
                  "resample_filter": sorted(resample) or [(1, 3, 3, 1)]},
           {"architecture": ["resnet"], "mbstd_num_channels": [1], "mbstd_group_size": list(range(1, 4097)),
            "activations": [["linear", "lrelu"]], "resample_filter": [[(1, 3, 3, 1)]]})
    return {"resolution": int(record.state["img_resolution"]), "d_channel_base": int(kwargs.get("channel_base", 32768)),
            "d_channel_max": int(kwargs.get("channel_max", 512)), "mbstd_group": int(mbstd.state["group_size"]),
            "d_conv_clamp": one_value(record, "conv_clamp", what, exclude=("skip",))}  # NVIDIA's skips never clamp


def _discriminator_name(name: str, resolution: int) -> str | None:
    if name.endswith("resample_filter"):
        return None
    if m := re.fullmatch(r"b(\d+)\.fromrgb\.(.+)", name):
        return f"fromrgb.{m[2]}"
    if m := re.fullmatch(r"b4\.(conv|fc|out)\.(.+)", name):
        return f"{m[1]}.{m[2]}"
    if m := re.fullmatch(r"b(\d+)\.(conv0|conv1|skip)\.(.+)", name):
        return f"blocks.{int(math.log2(resolution // int(m[1])))}.{m[2]}.{m[3]}"
    return name


def load_discriminator(record: Persistent, what: str = "D") -> tuple[dict, Discriminator]:
    """(D settings, our discriminator with the record's weights), in eval mode."""
    settings = discriminator_settings(record, what)
    d = Discriminator(settings["resolution"], settings["d_channel_base"], settings["d_channel_max"],
                      settings["mbstd_group"], settings["d_conv_clamp"])
    state = {ours: t for theirs, t in flat_tensors(record).items()
             if (ours := _discriminator_name(theirs, settings["resolution"])) is not None}
    _load(d, state, what)
    return settings, d.eval()


# ---------------------------------------------------------------- a whole snapshot
@dataclass
class Snapshot:
    """The networks of one NVIDIA snapshot, ours. A snapshot may hold only some of G, G_ema and
    D: a missing generator is taken from the other one; `d` is None when D is missing."""

    family: str
    model_config: StyleGAN2Config | StyleGAN3Config
    g: Model
    g_ema: Model
    d: Discriminator | None
    d_settings: dict
    ada_p: float | None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Named as in our checkpoints: model., ema. and net.D."""
        modules = {"model": self.g, "ema": self.g_ema, **({"net.D": self.d} if self.d is not None else {})}
        return {f"{prefix}.{k}": v for prefix, m in modules.items() for k, v in m.state_dict().items()}


def import_snapshot(path: str | os.PathLike) -> Snapshot:
    try:
        return _import_snapshot(path, read_snapshot(path))
    except (KeyError, AttributeError, TypeError) as e:  # a record without what NVIDIA's networks hold
        raise UserError(f"{path} does not hold StyleGAN networks as NVIDIA's code writes them "
                        f"({type(e).__name__}: {e}).") from None


def _import_snapshot(path, snapshot: dict) -> Snapshot:
    generators = {name: snapshot[name] for name in ("G", "G_ema") if isinstance(snapshot.get(name), Persistent)}
    if not generators:
        raise UserError(f"{path} holds no generator (neither G nor G_ema).")
    loaded = {name: load_generator(record, name) for name, record in generators.items()}
    family = next(iter(loaded.values()))[0]
    models = {name: model for name, (_, model) in loaded.items()}
    g = models.get("G", models.get("G_ema"))
    g_ema = models.get("G_ema", g)
    if type(g) is not type(g_ema) or g.config != g_ema.config:
        raise UserError(f"{path}: G and G_ema are different architectures.")
    d_settings, d = load_discriminator(snapshot["D"]) if isinstance(snapshot.get("D"), Persistent) else ({}, None)
    if d is not None and d_settings["resolution"] != g.resolution:
        raise refuse("D", "img_resolution", d_settings["resolution"], f"G is {g.resolution} px")
    return Snapshot(family, g.config, g, g_ema, d, d_settings, _ada_p(snapshot.get("augment_pipe")))


def _ada_p(record) -> float | None:
    if not isinstance(record, Persistent):
        return None
    p = record.state["_buffers"].get("p")
    return None if p is None else float(p)
