"""Discovering latent directions: GANSpace, SeFa, and directions fitted to labels.

- GANSpace (Härkönen et al. 2020): the principal axes of the latents a model actually uses.
  StyleGAN: PCA of W over many mapped z; VAE: PCA of the posterior means of its test split.
  Scale: sqrt(eigenvalue), the standard deviation along the axis.
- SeFa (Shen & Zhou 2021): closed form, from the weights alone: the top eigenvectors of
  A^T A, A the first linear map applied to the latent (StyleGAN: the style affines of a
  layer range, stacked; DCGAN: the first transposed convolution; VAE: the decoder's first
  Linear). Scale: the standard deviation of the latents along the direction.
- From labels (InterFaceGAN-like, Shen et al. 2020): a linear model of labels given latents;
  the direction is its normalised weight vector. See `fit_from_latents`.

Every direction is a unit vector of the edit space (latent.directions): W for StyleGAN (one
w, before its broadcast to the style inputs), z otherwise.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from animegen import runs
from animegen.data.dataset import ImageDataset
from animegen.errors import UserError
from animegen.generate import load_generator
from animegen.latent.project import project_latents
from animegen.latent.directions import (Direction, check_name, edit_space, edit_vectors, layer_range, save_directions,
                                       space_size)
from animegen.models import registry
from animegen.models.base import Model, Noise
from animegen.settings import MAX_SEED, check_file_output, check_int

DEFAULT_SAMPLES = 100_000  # mapped z for GANSpace's PCA of W
SCALE_SAMPLES = 10_000  # mapped z estimating SeFa's scales
MAX_SAMPLES = 10**8
BATCH = 4096
MIN_LABEL_ROWS = 10
MAX_LABEL_ROWS = 10**6
MAX_IMAGE_ROWS = 1024  # each is projected (latent.project.MAX_IMAGES)
L2 = 1e-3  # regularisation of the label fits, relative to the (standardised) data term


# ---------------------------------------------------------------- statistics of W
def mapped_moments(model: Model, samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of w = mapping(z) over `samples` z ~ N(0, I), batched,
    without keeping the samples."""
    generator = torch.Generator().manual_seed(seed)
    total, outer, count = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, samples, BATCH):
            z = torch.randn(min(BATCH, samples - start), *model.z_shape, generator=generator).to(model.device)
            w = model.map_z(z)[:, 0].double()
            total, outer, count = total + w.sum(0), outer + w.T @ w, count + len(w)
    mean = total / count
    return mean, (outer - count * torch.outer(mean, mean)) / (count - 1)


def principal_axes(covariance: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top `num` eigenvalues (descending) and unit eigenvectors (rows) of a symmetric
    matrix; each vector's sign makes its largest component positive, so results repeat."""
    values, vectors = torch.linalg.eigh(covariance.double())
    values, vectors = values.flip(0)[:num], vectors.flip(1)[:, :num].T
    signs = vectors.gather(1, vectors.abs().argmax(1, keepdim=True)).sign()
    return values.clamp(min=0), vectors * signs


def _check_num(model: Model, num: int) -> int:
    return check_int("--num", num, 1, space_size(model))


# ---------------------------------------------------------------- GANSpace
def ganspace_source(model: Model) -> str | None:
    """What GANSpace takes the principal axes of: "w" (mapped z), "encodings" (an encoder's
    posterior means of real images), or None (an isotropic z has no principal axes)."""
    if model.capabilities.edit_space == "w":
        return "w"
    return "encodings" if model.capabilities.inversion == "encoder" else None


def ganspace(model: Model, num: int = 10, samples: int = DEFAULT_SAMPLES, layers: str | None = "all",
             data: str | os.PathLike | None = None) -> list[Direction]:
    """The top `num` principal axes of the model's latents: its W (from `samples` mapped z),
    or an encoder's posterior means of the test split of the prepared dataset `data`."""
    _check_num(model, num)
    span = layer_range(model, layers)
    source = ganspace_source(model)
    if source == "w":
        check_int("--samples", samples, max(2, num), MAX_SAMPLES)
        _, covariance = mapped_moments(model, samples)
        count = samples
    elif source == "encodings":
        codes = encoded_means(model, data)
        count = len(codes)
        if count < 2:
            raise UserError(f"the test split of {data} holds {count} image(s); GANSpace needs at least 2.")
        covariance = torch.cov(codes.double().T).reshape(codes.shape[1], codes.shape[1])
    else:
        raise UserError(f"ganspace works on families with a W space (PCA of W) or an encoder (PCA of its encodings); "
                        f"{registry.name_of(model)}'s z is isotropic N(0, I), so PCA of it finds no directions"
                        + ("; use sefa or fit." if model.capabilities.sefa else "; fit one from labels."))
    values, vectors = principal_axes(covariance, num)
    ratios = values / torch.diagonal(covariance).sum().clamp(min=1e-30)
    return [Direction(f"pc{k}", v.float(), "ganspace", span, math.sqrt(e),
                      {"eigenvalue": e, "explained_variance_ratio": r, "samples": count})
            for k, (v, e, r) in enumerate(zip(vectors, values.tolist(), ratios.tolist()))]


def encoded_means(model: Model, data: str | os.PathLike) -> torch.Tensor:
    """The VAE's posterior means of every image of the test split of dataset `data`."""
    images = ImageDataset(data, "test")
    means = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            batch = torch.stack([images[i] for i in range(start, min(start + 256, len(images)))])
            means.append(model.encode(batch.to(model.device))[0].cpu())
    return torch.cat(means) if means else torch.zeros(0, space_size(model))


# ---------------------------------------------------------------- SeFa
def sefa(model: Model, num: int = 10, layers: str | None = None, samples: int = SCALE_SAMPLES) -> list[Direction]:
    """SeFa's top `num` directions: eigenvectors of A^T A for the first linear map A applied
    to the edit-space latent (for StyleGAN, the style affines of `layers`, by default the
    coarse ones). StyleGAN scales
    come from `samples` mapped z; z ~ N(0, I) has scale 1 along every unit vector."""
    _check_num(model, num)
    span = layer_range(model, layers if layers is not None else ("coarse" if edit_space(model) == "w" else None))
    weight = first_linear_map(model, span)
    values, vectors = principal_axes(weight.T @ weight, num)
    if edit_space(model) == "w":
        check_int("--samples", samples, 2, MAX_SAMPLES)
        _, covariance = mapped_moments(model, samples)
        scales = [math.sqrt(max(float(v @ covariance @ v), 0.0)) for v in vectors]
    else:
        scales = [1.0] * len(vectors)
    return [Direction(f"sefa{k}", v.float(), "sefa", span, s, {"eigenvalue": e})
            for k, (v, s, e) in enumerate(zip(vectors, scales, values.tolist()))]


def first_linear_map(model: Model, span: tuple[int, int] | None) -> torch.Tensor:
    """A (outputs, latent size) in float64: the weights the forward pass applies to the
    latent first, equalized-learning-rate gains included (the family's `latent_linear_map`)."""
    if not model.capabilities.sefa:
        raise UserError(f"sefa works on families with a linear map of their latent; {registry.name_of(model)} has "
                        "none to factorize.")
    return model.latent_linear_map(span).detach().double().cpu()


# ---------------------------------------------------------------- from labels
def fit_from_latents(model: Model, latents: torch.Tensor, labels: torch.Tensor, name: str,
                     layers: str | None = None) -> Direction:
    """The direction along which `labels` grow, from edit-space `latents` (N, D) of N images.

    Two distinct label values: L2-regularised logistic regression (fitted with LBFGS in
    torch). It gives the same kind of separating hyperplane as InterFaceGAN's linear SVM,
    with a smooth convex loss and no new dependency. More values: ridge regression. The
    direction is the normalised weight vector, pointing towards the larger labels; its
    scale is the standard deviation of the latents along it."""
    size = space_size(model)
    latents, labels = latents.double().cpu(), labels.double().cpu().reshape(-1)
    if latents.ndim != 2 or latents.shape[1] != size or len(latents) != len(labels):
        raise UserError(f"fitting needs one {size}-value {edit_space(model)} per label; got latents of shape "
                        f"{tuple(latents.shape)} for {len(labels)} labels.")
    if not (torch.isfinite(latents).all() and torch.isfinite(labels).all()):
        raise UserError("the latents and labels to fit must be finite numbers.")
    classes = labels.unique()
    if len(labels) < MIN_LABEL_ROWS or len(classes) < 2:
        raise UserError(f"fitting a direction needs at least {MIN_LABEL_ROWS} labelled latents and two different "
                        f"labels; got {len(labels)} latents and {len(classes)} distinct label(s).")
    # Centred, and divided by one overall scale (not per coordinate, which would tilt the direction).
    x = latents - latents.mean(0)
    x = x / x.square().mean().sqrt().clamp(min=1e-12)
    if len(classes) == 2:
        positive = labels == classes[1]
        weight, bias = _logistic_regression(x, positive.double())
        fit = {"accuracy": float(((x @ weight + bias > 0) == positive).double().mean()),
               "positive_label": float(classes[1]), "negative_label": float(classes[0])}
    else:
        weight = _ridge_regression(x, labels)
        residual = labels - labels.mean() - x @ weight
        fit = {"r2": float(1 - residual.square().sum() / (labels - labels.mean()).square().sum())}
    if weight.norm() == 0:
        raise UserError("the labels do not depend linearly on the latents: the fitted weights are all zero.")
    vector = weight / weight.norm()
    scale = float((latents @ vector).std())
    return Direction(name, vector.float(), "labels", layer_range(model, layers), scale, {**fit, "count": len(labels)})


def _logistic_regression(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias minimising mean logistic loss + L2/2 |w|^2 (convex: LBFGS converges)."""
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + L2 / 2 * weight.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return weight.detach(), bias.detach()


def _ridge_regression(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Weights of centred `x` minimising mean squared error + L2 |w|^2."""
    n, d = x.shape
    return torch.linalg.solve(x.T @ x / n + L2 * torch.eye(d, dtype=x.dtype), x.T @ (y - y.mean()) / n)


def read_labels(path: str | os.PathLike) -> tuple[str, list, torch.Tensor]:
    """("seed", seeds, labels) or ("image", image paths, labels) of a CSV file with the header
    `seed,label` or `image,label` (image paths relative to the CSV's folder); problems are one line."""
    name = Path(path).name
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            columns = rows.fieldnames or []
            key = "seed" if "seed" in columns else "image"
            if key not in columns or "label" not in columns:
                raise UserError(f"{name}: the header must name the columns seed (or image) and label (found: "
                                f"{', '.join(columns) or 'none'}).")
            most = MAX_LABEL_ROWS if key == "seed" else MAX_IMAGE_ROWS
            keys, labels = [], []
            for line, row in enumerate(rows, start=2):
                if len(keys) == most:
                    raise UserError(f"{name} has more than {most} {key} rows; fit on fewer.")
                keys.append(_seed(row["seed"], name, line) if key == "seed" else _image(row["image"], path, line))
                labels.append(_label(row["label"], name, line))
    except FileNotFoundError:
        raise UserError(f"labels file {path} does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"labels file {path} is a folder; give a CSV file.") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{name} is not a readable CSV file ({type(e).__name__}: {e}).") from None
    return key, keys, torch.tensor(labels, dtype=torch.float64)


def _image(text: str | None, csv_path, line: int) -> str:
    image = Path(csv_path).parent / (text or "").strip()
    if not (text or "").strip() or not image.is_file():
        raise UserError(f"{Path(csv_path).name} line {line}: image {text!r} is not a file.")
    return str(image)


def _seed(text: str | None, name: str, line: int) -> int:
    try:
        seed = int((text or "").strip())
    except ValueError:
        raise UserError(f"{name} line {line}: seed {text!r} is not an integer.") from None
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name} line {line}: seed {seed} is out of range: seeds must be in [0, {MAX_SEED}].")
    return seed


def _label(text: str | None, name: str, line: int) -> float:
    try:
        label = float((text or "").strip())
    except ValueError:
        label = math.nan
    if not math.isfinite(label):
        raise UserError(f"{name} line {line}: label {text!r} is not a finite number.")
    return label


def seed_latents(model: Model, seeds: list[int]) -> torch.Tensor:
    """(N, D): the edit-space latent each seed draws (StyleGAN: its w, before the broadcast)."""
    options = model.resolve_sample_options({})
    latents = []
    with torch.no_grad():
        for start in range(0, len(seeds), BATCH):
            drawn = model.draw(Noise(seeds[start : start + BATCH], model.device), **options)
            latents.append(edit_vectors(model, drawn).cpu())
    return torch.cat(latents) if latents else torch.zeros(0, space_size(model))


def fit_from_labels(model: Model, labels_csv: str | os.PathLike, name: str, layers: str | None = None) -> Direction:
    """`fit_from_latents` on the latents of a `seed,label` CSV's seeds, or of an `image,label`
    CSV's images projected into the model (latent.project, its defaults)."""
    check_name(name)
    key, keys, labels = read_labels(labels_csv)
    if len(keys) < MIN_LABEL_ROWS:  # before any projection
        raise UserError(f"fitting a direction needs at least {MIN_LABEL_ROWS} labelled latents; got {len(keys)} latents.")
    latents = seed_latents(model, keys) if key == "seed" else project_latents(model, keys)
    return fit_from_latents(model, latents, labels, name, layers)


# ---------------------------------------------------------------- run -> file
def write_directions(run: str, out: str, method: str, force: bool = False, device: str = "cpu",
                     **arguments) -> tuple[Path, list[Direction]]:
    """Compute directions of RUN's generator with `method` (ganspace, sefa, fit) and write
    them to the safetensors file `out` (refused if it exists, unless `force`)."""
    check_file_output("--out", out)
    if Path(out).exists() and not force:
        raise UserError(f"{out} already exists; choose another --out or pass --force to replace it.")
    model, state = load_generator(run, device)
    if method == "ganspace":
        data = runs.Run(run).dataset(state["config"]) if ganspace_source(model) == "encodings" else None
        directions = ganspace(model, data=data, **arguments)
    elif method == "sefa":
        directions = sefa(model, **arguments)
    elif method == "fit":
        directions = [fit_from_labels(model, **arguments)]
    else:
        raise UserError(f"unknown method {method!r}; choose ganspace, sefa or fit.")
    return save_directions(out, model, directions), directions


def describe_directions(path: str | os.PathLike) -> dict:
    """A directions file's header (family, space, size, and per direction its method,
    layers, scale and details), read without a model and without loading the vectors."""
    if Path(path).is_dir():
        raise UserError(f"{path} is a folder; give a directions file (.safetensors).")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["animegen"])
        for info in header["directions"].values():
            float(info["scale"])  # a number, as `directions list` prints it
    except FileNotFoundError:
        raise UserError(f"directions file {path} does not exist.") from None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{Path(path).name} is not an animegen directions file ({type(e).__name__}: {e}).") from None
    return header
