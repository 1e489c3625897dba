import os
from pathlib import Path

import pytest
import torch

from animegen.data.synth import synthesize_dataset
from animegen.models.registry import PLUGINS

REPO = Path(__file__).resolve().parents[1]
# The test-only family of tests/toy_family.py, known to the registry in this process and in every
# process a test starts (the commands' subprocesses, torchrun's workers).
os.environ[PLUGINS] = "toy_family"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
SHARED_FACES = Path(os.environ.get("ANIMEGEN_SHARED_DATA", REPO.parent / "shared" / "data" / "anime-faces"))


@pytest.fixture(scope="session")
def anime_faces_zips():
    """The shared real-data zips, or a clear skip when they are absent."""
    zips = sorted(SHARED_FACES.glob("anime-faces-96-part*.zip"))
    if not zips:
        pytest.skip(f"real anime-faces data not found at {SHARED_FACES} (set ANIMEGEN_SHARED_DATA)")
    return zips


@pytest.fixture
def one_thread():
    """One torch thread: on a small shared CPU, more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces16(tmp_path_factory):
    """40 procedural faces at 16 px (32 train, 8 test), once per test module."""
    out = tmp_path_factory.mktemp("data") / "faces16"
    synthesize_dataset(out, count=40, resolution=16, seed=0, test_fraction=0.2)
    return out


class _PooledPixels(torch.nn.Module):
    """A stand-in for Inception: 2048 "features" of an image from its pixels, average-pooled;
    cheap, and different for different images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, (27, 27)).flatten(1)[:, :2048]


@pytest.fixture
def cheap_inception(tmp_path_factory, monkeypatch):
    """Training's FID snapshots, the feature cache and the metrics with a network that takes
    milliseconds (as a TorchScript file in $ANIMEGEN_INCEPTION, the way a user names other
    weights), and a feature cache of this test's own."""
    folder = tmp_path_factory.mktemp("inception")
    torch.jit.script(_PooledPixels()).save(str(folder / "pooled.pt"))
    monkeypatch.setenv("ANIMEGEN_INCEPTION", str(folder / "pooled.pt"))
    monkeypatch.setenv("ANIMEGEN_CACHE", str(folder / "cache"))
    return folder
