"""Discovering latent directions (latent.discover, `animegen directions`): GANSpace and SeFa
give orthonormal directions sorted by eigenvalue, label fits recover a planted direction, and
files round-trip and are refused for another model. Tiny random-init models at 16 px."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from animegen.cli import main
from animegen.errors import UserError
from animegen.generate import sample_batches
from animegen.latent import discover
from animegen.latent.directions import layer_range, load_directions, save_directions
from animegen.models import registry
from animegen.models.base import Noise
from animegen.models.stylegan2 import FullyConnected
from animegen.settings import build
from animegen.training.loop import Target, train

TINY = {
    "stylegan2": {"z_dim": 32, "w_dim": 32, "channel_base": 256, "channel_max": 32, "mapping_layers": 2},
    "stylegan3-t": {"z_dim": 32, "w_dim": 32, "num_layers": 4, "margin": 6, "channel_base": 512, "channel_max": 32},
    "stylegan3-r": {"z_dim": 32, "w_dim": 32, "num_layers": 4, "margin": 6, "channel_base": 512, "channel_max": 32},
    "dcgan": {"g_channels": 8, "latent_dim": 24},
    "vae": {"channels": 8, "max_channels": 16, "latent_dim": 12},
    "ddpm": {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
             "time_embed_dim": 32, "timesteps": 50, "sample_steps": 2},
}

SEFA = registry.families_that(lambda can: can.sefa)
W_SPACE = registry.families_that(lambda can: "w" in can.spaces)
ISOTROPIC = registry.families_that(lambda can: "w" not in can.spaces and can.inversion != "encoder")  # z ~ N(0, I) only

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(family, seed=0):
    torch.manual_seed(seed)
    cls = registry.model_class(family)
    return cls(build(cls.config_class, {"resolution": 16, **TINY.get(family, {})})).eval().requires_grad_(False)


def _assert_orthonormal_and_sorted(directions):
    vectors = torch.stack([d.vector for d in directions]).double()
    assert torch.allclose(vectors @ vectors.T, torch.eye(len(vectors), dtype=torch.float64), atol=1e-5)
    eigenvalues = [d.details["eigenvalue"] for d in directions]
    assert eigenvalues == sorted(eigenvalues, reverse=True) and eigenvalues[0] > eigenvalues[-1]


@pytest.mark.parametrize("family", SEFA)
def test_sefa_is_orthonormal_sorted_and_the_top_singular_vector(family):
    model = _model(family)
    directions = discover.sefa(model, num=6, samples=500)
    _assert_orthonormal_and_sorted(directions)
    in_w = model.capabilities.edit_space == "w"
    span = layer_range(model, "coarse") if in_w else None
    assert all(d.layers == span and d.method == "sefa" for d in directions)
    # The top direction is A's first right singular vector (up to sign).
    a = discover.first_linear_map(model, span).numpy()
    top = np.linalg.svd(a)[2][0]
    assert abs(float(directions[0].vector.double().numpy() @ top)) > 0.999
    if not in_w:  # z ~ N(0, I) has sd 1 along every unit vector
        assert all(d.scale == 1.0 for d in directions)


@pytest.mark.parametrize("family", W_SPACE)
def test_ganspace_axes_are_orthonormal_sorted_and_scaled_by_their_sd(family):
    model = _model(family)
    directions = discover.ganspace(model, num=5, samples=3000)
    _assert_orthonormal_and_sorted(directions)
    ratios = [d.details["explained_variance_ratio"] for d in directions]
    assert ratios == sorted(ratios, reverse=True) and sum(ratios) <= 1 + 1e-9
    # The scale is the sd of W along the axis: check it on fresh mapped samples.
    w = model.mapping(torch.randn(3000, model.z_dim, generator=torch.Generator().manual_seed(9)))[:, 0]
    for d in directions[:3]:
        assert float((w @ d.vector).std()) == pytest.approx(d.scale, rel=0.1)
    assert directions[0].layers == (0, model.num_ws - 1)


def test_ganspace_of_a_vae_is_pca_of_its_encodings(faces16):
    model = _model("vae")
    directions = discover.ganspace(model, num=4, data=faces16)
    _assert_orthonormal_and_sorted(directions)
    codes = discover.encoded_means(model, faces16)
    assert codes.shape == (8, 12) and directions[0].details["samples"] == 8
    assert float((codes @ directions[0].vector).std()) == pytest.approx(directions[0].scale, rel=1e-4)


@pytest.mark.parametrize("family", ISOTROPIC)
def test_ganspace_refuses_isotropic_z(family):
    with pytest.raises(UserError, match="isotropic N\\(0, I\\)"):
        discover.ganspace(_model(family), num=3)


def test_sefa_refuses_ddpm_and_z_spaces_refuse_layer_ranges():
    with pytest.raises(UserError, match="sefa works on"):
        discover.sefa(_model("ddpm"), num=3)
    with pytest.raises(UserError, match="layer ranges apply to StyleGAN"):
        discover.sefa(_model("dcgan"), num=3, layers="coarse")


@pytest.mark.parametrize("family", SEFA)
def test_an_edit_of_strength_zero_is_the_identity(family):
    model = _model(family)
    direction = discover.sefa(model, num=1, samples=200)[0]
    seeds = range(4)
    plain = torch.cat(list(sample_batches(model, seeds, 2, model.resolve_sample_options({}))))
    zero = torch.cat(list(sample_batches(model, seeds, 2, model.resolve_sample_options({}), edits=[(direction, 0.0)])))
    moved = torch.cat(list(sample_batches(model, seeds, 2, model.resolve_sample_options({}), edits=[(direction, 2.0)])))
    assert torch.equal(plain, zero)
    assert not torch.equal(plain, moved)


def test_save_load_round_trip_and_refusal_of_another_model(tmp_path):
    model = _model("stylegan2")
    directions = discover.sefa(model, num=3, layers="1-2", samples=200)
    path = save_directions(tmp_path / "d.safetensors", model, directions)
    loaded = load_directions(path, model)
    assert list(loaded) == [d.name for d in directions]
    for d in directions:
        got = loaded[d.name]
        assert torch.equal(got.vector, d.vector) and got.layers == (1, 2) == d.layers
        assert (got.scale, got.method, got.details) == (d.scale, d.method, d.details)
    header = discover.describe_directions(path)
    assert header["family"] == "stylegan2" and header["directions"]["sefa0"]["layers"] == [1, 2]
    for other in (_model("dcgan"), registry.model_class("stylegan2")(build(
            registry.model_class("stylegan2").config_class, {**TINY["stylegan2"], "resolution": 16, "w_dim": 16}))):
        with pytest.raises(UserError, match="holds directions of a stylegan2 model") as e:
            load_directions(path, other)
        assert "\n" not in str(e.value)


def test_label_fit_recovers_a_planted_direction():
    model = _model("dcgan")
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2000, 24, generator=g) * 1.5 + 0.3
    planted = torch.randn(24, generator=g)
    planted /= planted.norm()
    along = (latents - 0.3) @ planted
    binary = discover.fit_from_latents(model, latents, (along > 0).double(), "planted")
    assert float(binary.vector @ planted) > 0.9 and binary.details["accuracy"] > 0.95
    assert binary.scale == pytest.approx(float((latents @ binary.vector).std()))
    continuous = discover.fit_from_latents(model, latents, 2 * along + 0.1 * torch.randn(2000, generator=g), "graded")
    assert float(continuous.vector @ planted) > 0.99 and continuous.details["r2"] > 0.95
    # Labels decreasing along the planted direction: the fit points the other way.
    assert float(discover.fit_from_latents(model, latents, (along < 0).double(), "n").vector @ planted) < -0.9


def test_label_fit_from_labels_uses_the_latents_the_seeds_draw(tmp_path):
    model = _model("stylegan2")
    seeds = list(range(300))
    w = model.draw(Noise(seeds))["w"][:, 0]
    assert torch.equal(discover.seed_latents(model, seeds), w)
    planted = torch.randn(32, generator=torch.Generator().manual_seed(2))
    planted /= planted.norm()
    labels = ((w - w.mean(0)) @ planted > 0).int().tolist()
    csv = tmp_path / "labels.csv"
    csv.write_text("seed,label\n" + "".join(f"{s},{y}\n" for s, y in zip(seeds, labels)))
    direction = discover.fit_from_labels(model, csv, "planted", layers="fine")
    assert float(direction.vector @ planted) > 0.9
    assert direction.layers == layer_range(model, "fine") and direction.details["count"] == 300


BAD_CSVS = {
    "seed,value\n1,0\n": "header must name the columns seed \\(or image\\) and label",
    "image,label\na.png,1\n": "line 2: image 'a.png' is not a file",
    "seed,label\n1.5,0\n": "line 2: seed '1.5' is not an integer",
    "seed,label\n-1,0\n": "seed -1 is out of range",
    "seed,label\n4294967296,0\n": "out of range",
    "seed,label\n1,warm\n": "label 'warm' is not a finite number",
    "seed,label\n1,nan\n": "not a finite number",
    "seed,label\n" + "".join(f"{s},{s % 2}\n" for s in range(5)): "at least 10 labelled latents",
    "seed,label\n" + "".join(f"{s},1\n" for s in range(20)): "1 distinct label",
    "seed,label\n" + "".join(f"{s},{s % 2}\n" for s in range(31)): "more than 30 seed rows",
    "": "header must name",
    "seed,label\n": "got 0 latents",
}


@pytest.mark.parametrize("text", BAD_CSVS)
def test_bad_label_files_are_refused_in_one_line(tmp_path, monkeypatch, text):
    monkeypatch.setattr(discover, "MAX_LABEL_ROWS", 30)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=BAD_CSVS[text]) as e:
        discover.fit_from_labels(_model("dcgan"), path, "x")
    assert "\n" not in str(e.value)


def test_label_fit_from_images_projects_them(tmp_path, faces16):
    from PIL import Image

    from animegen.data.store import load_split

    rows = ["image,label"]
    for i, face in enumerate(load_split(faces16, "train")[:12]):
        Image.fromarray(face).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{int(face[:4].mean() > 128)}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    direction = discover.fit_from_labels(_model("vae"), tmp_path / "labels.csv", "bright")
    assert direction.method == "labels" and direction.details["count"] == 12
    assert torch.linalg.vector_norm(direction.vector).item() == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def sg2_run(tmp_path_factory, faces16):
    run = tmp_path_factory.mktemp("runs") / "sg2"
    train(str(run), model="stylegan2", data=str(faces16), sets={**TINY["stylegan2"], "batch": 4, "grid_seeds": 2},
          target=Target(steps=1), device="cpu", seed=0, echo=lambda line: None)
    return run


def test_cli_writes_lists_and_edits_with_directions(tmp_path, sg2_run):
    cli = CliRunner()
    out = tmp_path / "sefa.safetensors"
    result = cli.invoke(main, ["directions", "sefa", str(sg2_run), "--out", str(out), "--num", "3", "--samples", "100"])
    assert result.exit_code == 0, result.output
    assert "3 sefa direction(s)" in result.output and out.is_file()
    again = cli.invoke(main, ["directions", "sefa", str(sg2_run), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    result = cli.invoke(main, ["directions", "ganspace", str(sg2_run), "--out", str(out), "--num", "2",
                               "--samples", "500", "--layers", "middle", "--force"])
    assert result.exit_code == 0, result.output
    listed = cli.invoke(main, ["directions", "list", str(out)])
    assert listed.exit_code == 0 and "pc1  ganspace  layers 2-3" in listed.output
    csv = tmp_path / "labels.csv"
    csv.write_text("seed,label\n" + "".join(f"{s},{s % 3}\n" for s in range(12)))
    fitted = tmp_path / "fit.safetensors"
    result = cli.invoke(main, ["directions", "fit", str(sg2_run), "--labels", str(csv), "--name", "thirds",
                               "--out", str(fitted)])
    assert result.exit_code == 0, result.output
    strip = cli.invoke(main, ["sample", str(sg2_run), "--count", "2", "--out", str(tmp_path / "strip"), "--directions",
                              str(out), "--directions", str(fitted), "--edit", "pc0", "--strengths", "-1,0,1",
                              "--edit", "thirds=0.5"])
    assert strip.exit_code == 0, strip.output
    assert len(list((tmp_path / "strip").glob("*.png"))) == 6


def test_cli_ganspace_of_a_vae_run_reads_the_runs_test_split(tmp_path, faces16):
    run = tmp_path / "vae"
    train(str(run), model="vae", data=str(faces16), sets={**TINY["vae"], "batch": 4, "grid_seeds": 2},
          target=Target(steps=1), device="cpu", seed=0, echo=lambda line: None)
    out = tmp_path / "pca.safetensors"
    result = CliRunner().invoke(main, ["directions", "ganspace", str(run), "--out", str(out), "--num", "3"])
    assert result.exit_code == 0, result.output
    header = discover.describe_directions(out)
    assert header["family"] == "vae" and header["directions"]["pc0"]["details"]["samples"] == 8
    assert header["directions"]["pc0"]["layers"] is None


@pytest.mark.parametrize("args, message", [
    (["ganspace", "RUN", "--num", "0"], "--num must be an integer from 1 to 32"),
    (["ganspace", "RUN", "--samples", "1"], "--samples must be an integer"),
    (["sefa", "RUN", "--layers", "9-12"], "out of range"),
    (["fit", "RUN", "--labels", "missing.csv", "--name", "a b"], "direction name 'a b'"),
    (["list", "missing.safetensors"], "does not exist"),
    (["list", "RUN"], "is a folder"),
])
def test_cli_refuses_bad_input_in_one_line(tmp_path, sg2_run, args, message):
    args = [str(sg2_run) if a == "RUN" else a for a in args]
    out = [] if args[0] == "list" else ["--out", str(tmp_path / "d.safetensors")]
    result = CliRunner().invoke(main, ["directions", *args, *out])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "d.safetensors").exists()


@pytest.mark.parametrize("family", ["stylegan2", "stylegan3-t"])
def test_sefa_factorizes_the_weights_the_affines_apply(family):
    """Each style affine's rows in A are the map its forward pass applies to w (gains included)."""
    model = _model(family)
    w1, w2 = torch.randn(2, 32, generator=torch.Generator().manual_seed(3)).unbind()
    a = discover.first_linear_map(model, (0, model.num_ws - 1)).float()
    applied = torch.cat([m.effective_weight() @ (w1 - w2) for m in model.synthesis.modules()
                         if isinstance(m, FullyConnected)])
    forward = torch.cat([m(w1[None])[0] - m(w2[None])[0] for m in model.synthesis.modules()
                         if isinstance(m, FullyConnected)])
    assert torch.allclose(applied, forward, atol=1e-5)
    assert a.shape == (len(forward), 32)  # every affine once
    first = model.synthesis.convs[0] if family == "stylegan2" else model.synthesis.layers[0]
    index = 0 if family == "stylegan2" else 1  # the style input feeding it, alone
    a = discover.first_linear_map(model, (index, index)).float()
    assert torch.allclose(a @ (w1 - w2), first.affine(w1[None])[0] - first.affine(w2[None])[0], atol=1e-5)
