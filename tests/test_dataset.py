import pickle

import numpy as np
import pytest
import torch

from animegen.data.dataset import ImageDataset
from animegen.data.store import load_split, write_dataset
from animegen.data.synth import synthesize_dataset
from animegen.io import to_uint8
from animegen.training.data import TrainStream


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "faces"
    synthesize_dataset(path, count=40, resolution=16, seed=0)
    return path


def test_items_are_chw_float_in_range(faces):
    ds = ImageDataset(faces, "train")
    assert len(ds) == 32 and ds.resolution == 16
    x = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert len(ds.labels) == 32 and ImageDataset(faces, "test").labels[0]["index"] >= 0


def test_exact_inverse_of_uint8(tmp_path):
    """Every byte value survives uint8 -> [-1, 1] -> to_uint8 unchanged."""
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([np.resize(values, (16, 16)), np.resize(values[::-1], (16, 16)), np.resize(values, (16, 16)).T], -1)
    write_dataset(tmp_path / "ramp", image[None], image[None][:0], {"resolution": 16})
    ds = ImageDataset(tmp_path / "ramp")
    assert ds.labels is None
    np.testing.assert_array_equal(to_uint8(ds[0][None])[0], image)
    assert torch.equal(ds[0], torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1)


def test_xflip_appends_mirrors(faces):
    plain, flipped = ImageDataset(faces), ImageDataset(faces, xflip=True)
    n = len(plain)
    assert len(flipped) == 2 * n
    for i in (0, 5, n - 1):
        assert torch.equal(flipped[i], plain[i])
        assert torch.equal(flipped[n + i], torch.flip(plain[i], dims=[2]))
    assert not torch.equal(flipped[n], flipped[0])
    assert torch.equal(flipped[-1], flipped[2 * n - 1])
    with pytest.raises(IndexError):
        flipped[2 * n]


def test_memory_mapped_not_loaded(faces):
    ds = ImageDataset(faces)
    assert isinstance(ds.images, np.memmap)
    # Pickling (as a spawned worker would) does not carry the pixels along; the clone re-opens the file.
    state = pickle.dumps(ds)
    assert len(state) < ds.images.nbytes
    clone = pickle.loads(state)
    assert clone._images is None
    assert isinstance(clone.images, np.memmap) and torch.equal(clone[3], ds[3])


def test_dataloader_with_workers(faces):
    ds = ImageDataset(faces, xflip=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    batches = torch.cat(list(loader))
    assert batches.shape == (64, 3, 16, 16)
    expected = torch.from_numpy(np.asarray(load_split(faces, "train"), np.float32)).permute(0, 3, 1, 2) / 127.5 - 1
    assert torch.equal(batches[:32], expected)
    assert torch.equal(batches[32:], torch.flip(expected, dims=[3]))


def test_batch_equals_stacked_items(faces):
    ds = ImageDataset(faces, "train", xflip=True)
    indices = [0, 33, 5, 63, -1, 32]  # plain, mirrored, negative
    assert torch.equal(ds.batch(indices), torch.stack([ds[i] for i in indices]))
    with pytest.raises(IndexError):
        ds.batch([64])


def test_prefetching_stream_hands_out_the_seeded_order(faces):
    """The stream gathers ahead in a thread; what it hands out, and the position it saves,
    are those of the plain definition: epoch e in the permutation seeded (seed, e), the
    incomplete batch at an epoch's end dropped, rank r taking items r, r + K, ..."""
    stream = TrainStream(str(faces), batch=6, seed=3, xflip=True, rank=1, world_size=2)
    ds = ImageDataset(faces, "train", xflip=True)
    expected = []
    for epoch in range(3):
        order = np.random.default_rng([3, epoch]).permutation(len(ds))
        expected += [order[start + 1 : start + 6 : 2] for start in range(0, len(ds) - 5, 6)]
    states = []
    for items in expected:
        states.append(stream.state())
        assert torch.equal(stream.next(torch.device("cpu")), ds.batch(items))
    # Restored at any saved position, a new stream continues identically (the prefetch is not state).
    for k in (0, 9, 10, 17):
        again = TrainStream(str(faces), batch=6, seed=3, xflip=True, rank=1, world_size=2)
        again.load_state(states[k])
        assert all(torch.equal(again.next(torch.device("cpu")), ds.batch(items)) for items in expected[k:k + 3])
