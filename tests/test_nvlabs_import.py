"""NVIDIA snapshot pickles (the shared fixtures, ../shared/fixtures/nvlabs, with the outputs
NVIDIA's code computed from them) imported into our networks reproduce every expected image
and logit within 1e-4; settings we cannot reproduce exactly are refused in one line."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from animegen.errors import UserError
from animegen.models.stylegan2 import StyleGAN2
from animegen.nvlabs import networks
from animegen.nvlabs.networks import load_discriminator, load_generator
from animegen.nvlabs.unpickle import read_snapshot

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ANIMEGEN_NVLABS_FIXTURES", REPO.parent / "shared" / "fixtures" / "nvlabs"))
NAMES = ["sg2-ada-32", "sg2-32", "sg2-32-clamp", "sg3t-32", "sg3r-32"]
TOLERANCE = 1e-4  # float32 rounding (the fixtures' README)


def fixture_files(name: str) -> tuple[dict, dict, dict]:
    """(snapshot, expected arrays, NAME.json), or a clear skip when the shared folder is absent."""
    if not (FIXTURES / f"{name}.pkl").is_file():
        pytest.skip(f"NVIDIA fixtures not found at {FIXTURES} (set ANIMEGEN_NVLABS_FIXTURES)")
    return (read_snapshot(FIXTURES / f"{name}.pkl"), load_file(FIXTURES / f"{name}.expected.safetensors"),
            json.loads((FIXTURES / f"{name}.json").read_text()))


@pytest.fixture(scope="module", params=NAMES)
def imported(request):
    snapshot, expected, meta = fixture_files(request.param)
    family, g_ema = load_generator(snapshot["G_ema"], "G_ema")
    _, d = load_discriminator(snapshot["D"])
    return request.param, family, g_ema, d, expected, meta


def outputs(family: str, g, expected: dict, meta: dict) -> dict[str, torch.Tensor]:
    """What NVIDIA computed for each expected array, computed by our imported network."""
    z = expected["z"]
    with torch.no_grad():
        ws1, ws07 = g.mapping(z), g.mapping(z, truncation=0.7)
        if family == "stylegan2":
            return {"ws_psi07": ws07, "img_psi1_const": g.synthesis(ws1, "const"),
                    "img_psi07_const": g.synthesis(ws07, "const"), "img_psi1_none": g.synthesis(ws1, "none")}
        transform = torch.tensor(meta["arrays"]["img_transform"]["input_transform_buffer"])
        return {"ws_psi07": ws07, "img_psi1_const": g.synthesis(ws1), "img_psi07_const": g.synthesis(ws07),
                "img_transform": g.synthesis(ws1, transform=transform)}


def test_imported_g_ema_reproduces_nvidias_images(imported, one_thread):
    name, family, g_ema, _, expected, meta = imported
    ours = outputs(family, g_ema, expected, meta)
    assert set(ours) == {k for k in expected if k.startswith(("img_", "ws_"))}
    for key, value in ours.items():
        error = (value - expected[key]).abs().max().item()
        assert error <= TOLERANCE, f"{name} {key}: max error {error:.3g}"


def test_imported_d_reproduces_nvidias_logits(imported, one_thread):
    name, _, _, d, expected, _ = imported
    with torch.no_grad():
        logits = d(expected["d_input"])
    error = (logits - expected["d_logits"][:, 0]).abs().max().item()
    assert error <= TOLERANCE, f"{name} d_logits: max error {error:.3g}"


def test_the_clamp_fixture_needs_the_clamp(one_thread):
    snapshot, expected, meta = fixture_files("sg2-32-clamp")
    _, g = load_generator(snapshot["G_ema"])
    unclamped = StyleGAN2(type(g.config)(**{**vars(g.config), "conv_clamp": None}))
    unclamped.load_state_dict(g.state_dict())
    with torch.no_grad():
        error = (unclamped.synthesis(unclamped.mapping(expected["z"]), "const") - expected["img_psi1_const"]).abs().max()
    assert error > 0.1  # README: 0.28 without the clamp


@pytest.mark.parametrize("what, change, message", [
    ("G", lambda g: g.state["_init_kwargs"].update(c_dim=10), "c_dim=10"),
    ("G", lambda g: g.state["_modules"]["synthesis"].state["_modules"]["b8"].state.update(architecture="resnet"),
     "architecture=\\['resnet', 'skip'\\]"),
    ("G", lambda g: g.state["_init_kwargs"].update(img_channels=1), "img_channels=1"),
    ("D", lambda d: d.state["_modules"]["b32"].state.update(architecture="skip"), "architecture"),
    ("D", lambda d: d.state["_modules"]["b4"].state["_modules"]["mbstd"].state.update(num_channels=2),
     "mbstd_num_channels=2"),
])
def test_what_we_cannot_reproduce_is_refused_by_name(what, change, message):
    snapshot, _, _ = fixture_files("sg2-32")
    change(snapshot[what])
    with pytest.raises(UserError, match=f"cannot import {what}: {message}"):
        (load_generator if what == "G" else load_discriminator)(snapshot[what], what)


def test_a_stored_stylegan3_transform_is_refused():
    snapshot, _, _ = fixture_files("sg3t-32")
    synthesis_input = snapshot["G_ema"].state["_modules"]["synthesis"].state["_modules"]["input"]
    synthesis_input.state["_buffers"]["transform"][0, 2] = 0.1
    with pytest.raises(UserError, match="synthesis.input.transform"):
        load_generator(snapshot["G_ema"], "G_ema")


def test_a_snapshot_with_g_ema_only_imports_it_as_both_generators_and_no_d(monkeypatch):
    snapshot, _, _ = fixture_files("sg2-32")
    monkeypatch.setattr(networks, "read_snapshot", lambda path: {"G_ema": snapshot["G_ema"]})
    imported = networks.import_snapshot("only-g-ema.pkl")
    assert imported.d is None and imported.ada_p is None
    assert imported.g is imported.g_ema and imported.family == "stylegan2"
    assert not any(k.startswith("net.D.") for k in imported.tensors())


def test_a_snapshot_without_network_structure_is_refused_in_one_line(monkeypatch):
    snapshot, _, _ = fixture_files("sg2-32")
    del snapshot["G_ema"].state["_modules"]["mapping"]
    monkeypatch.setattr(networks, "read_snapshot", lambda path: {"G_ema": snapshot["G_ema"]})
    with pytest.raises(UserError, match="does not hold StyleGAN networks as NVIDIA's code writes them"):
        networks.import_snapshot("broken.pkl")
