import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
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
