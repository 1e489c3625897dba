"""Distances between generated images and targets for projection, from networks we already
have (nothing is downloaded):

  pixel          mean squared error of the [-1, 1] pixels
  inception      the TF-FID Inception (metrics.inception's eager network, through which gradients
                 flow) up to mixed_2 (Mixed_5d), on images resized to 96 px by its own TF1
                 bilinear resize; pool3 needs the full 299 px, ~25x the cost on a CPU
  discriminator  the run's own discriminator (families that declare one): its features,
                 e.g. StyleGAN's fromRGB and block outputs

Feature distances are LPIPS-style: each layer's features unit-normalized over channels,
squared differences summed over channels, averaged over positions, then over layers. A loss
spec combines terms with weights: "pixel", "pixel+inception", "pixel+0.5*discriminator".
"""

from __future__ import annotations

import functools
import re

import torch

from animegen import runs
from animegen.errors import UserError
from animegen.metrics import inception
from animegen.models import registry

TERMS = ("pixel", "inception", "discriminator")
INCEPTION_SIZE = 96  # mixed_2 is 9 x 9 there; 75 px is the network's smallest input
INCEPTION_LAYERS = ("pool0", "pool1", "mixed_2")
TERM = re.compile(r"^(?:(\d+(?:\.\d*)?|\.\d+)\*)?([a-z]+)$")
MAX_WEIGHT = 1e6


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """"pixel+0.5*inception" -> [(1.0, "pixel"), (0.5, "inception")]."""
    terms = []
    for part in spec.replace(" ", "").split("+"):
        match = TERM.match(part)
        if not match or match[2] not in TERMS or not 0 < float(match[1] or 1) <= MAX_WEIGHT:
            raise UserError(f"--loss {spec!r}: give terms {', '.join(TERMS)} joined by '+', each optionally "
                            f"weighted as W*NAME with 0 < W <= {MAX_WEIGHT:g} (e.g. pixel+0.5*inception).")
        terms.append((float(match[1] or 1), match[2]))
    names = [name for _, name in terms]
    if len(set(names)) != len(names):
        raise UserError(f"--loss {spec!r} names a term twice.")
    return terms


class ProjectionLoss:
    """Per-image distance to fixed targets: `loss(images) -> (N,)`, differentiable in `images`."""

    def __init__(self, terms: list[tuple[float, str]], targets: torch.Tensor, run=None, checkpoint="last"):
        self.terms = [(weight, _feature_net(name, run, checkpoint, targets.device)) for weight, name in terms]
        with torch.no_grad():
            self.target_features = [net(targets) for _, net in self.terms]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        total = 0
        for (weight, net), target in zip(self.terms, self.target_features):
            total = total + weight * _distance(net(images), target, normalize=net is not _pixels)
        return total


def _distance(features: list[torch.Tensor], targets: list[torch.Tensor], normalize: bool) -> torch.Tensor:
    per_layer = []
    for f, t in zip(features, targets):
        if normalize:
            f, t = _unit(f), _unit(t)
            per_layer.append((f - t).square().sum(1).flatten(1).mean(1))
        else:
            per_layer.append((f - t).square().flatten(1).mean(1))
    return torch.stack(per_layer).mean(0)


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features * torch.rsqrt(features.square().sum(1, keepdim=True) + 1e-10)


def _pixels(images: torch.Tensor) -> list[torch.Tensor]:
    return [images]


def _feature_net(name: str, run, checkpoint, device: torch.device):
    if name == "pixel":
        return _pixels
    if name == "inception":
        return functools.partial(_inception_features, _inception_layers(str(inception.weights_path()), device))
    if run is None:
        raise ValueError("the discriminator term needs the run")
    return load_discriminator(run, checkpoint, device).features


@functools.lru_cache(maxsize=2)
def _inception_layers(path: str, device: torch.device) -> list[tuple[str, torch.nn.Module]]:
    """The network's first layers, up to the last of INCEPTION_LAYERS."""
    net = inception.read_network(path, device)
    if device.type == "cpu":  # oneDNN's convolutions run NHWC weights (their outputs follow) 1.3x faster, with gradients
        net = net.to(memory_format=torch.channels_last)
    layers = list(net.named_children())
    return layers[: [name for name, _ in layers].index(INCEPTION_LAYERS[-1]) + 1]


def _inception_features(layers, images: torch.Tensor) -> list[torch.Tensor]:
    x = (inception.resize_tf_bilinear(images * 127.5 + 128, INCEPTION_SIZE) - 128) / 128  # as metrics' uint8 input
    features = []
    for name, layer in layers:
        x = layer(x)
        if name in INCEPTION_LAYERS:
            features.append(x)
    return features


def load_discriminator(run, checkpoint, device: torch.device) -> torch.nn.Module:
    """The discriminator saved in the run's checkpoint, built from its recorded settings by its
    family (`Model.feature_discriminator`)."""
    tensors, state = runs.load_checkpoint(run, checkpoint)
    family = registry.model_class(state["model"])
    weights = runs.module_state(tensors, "net.D")
    if not family.capabilities.discriminator or not weights:
        raise UserError(f"--loss discriminator uses a StyleGAN run's discriminator (a family that declares one: "
                        f"{', '.join(registry.families_that(lambda c: c.discriminator))}); this checkpoint of a "
                        f"{state['model']} run has none (use pixel or inception).")
    config = state["config"]
    net = family.feature_discriminator(config["model_config"]["resolution"], config["objective_config"])
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UserError(f"the run's discriminator does not match its family's: {str(e).splitlines()[0]}") from None
    return net.to(device).eval().requires_grad_(False)
