"""`data prepare`: every kind of input is kept with the right pixels or skipped with the right
reason; output is reproducible, split as documented, and atomic."""

import hashlib
import io
import random
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.data import images as images_module
from animegen.data.prepare import prepare_dataset
from animegen.data.store import load_split, read_manifest
from animegen.errors import UserError

R = 16  # output resolution of most tests; default min size is R // 2 = 8
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header(width, height):
    """A PNG that declares width x height RGB pixels but holds almost no data (a bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _prepare(sources, out, **kw):
    kw = {"resolution": R, "progress": False, **kw}
    return prepare_dataset([str(s) for s in sources], out, **kw)


def _images_by_source(out):
    """source label -> its R x R x 3 array in the prepared dataset."""
    arrays = {split: load_split(out, split) for split in ("train", "test")}
    return {e["source"]: np.asarray(arrays[e["split"]][e["index"]]) for e in read_manifest(out)["images"]}


def _solid(color, h=R, w=R):
    return np.full((h, w, 3), color, np.uint8)


def _composite_on_white(rgb, alpha):
    """Independent reference for alpha over white: c*a + 255*(1-a), a = alpha/255."""
    a = alpha[..., None] / 255.0
    return rgb * a + 255 * (1 - a)


def _make_every_kind(root: Path) -> dict:
    """Write one file of every kind into root; return name -> expected array or skip reason."""
    expect = {}

    def put(name, data, outcome):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[str(path)] = outcome

    wide = np.concatenate([_solid(RED, R, 8), _solid(BLUE, R, 16), _solid(GREEN, R, 8)], axis=1)
    put("wide.png", _encode(Image.fromarray(wide), "PNG"), _solid(BLUE))  # center crop keeps the middle

    rgba = np.zeros((R, R, 4), np.uint8)
    rgba[:, :8] = (255, 0, 0, 128)
    rgba[:, 8:] = (0, 0, 255, 0)
    put("rgba.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), _composite_on_white(rgba[..., :3], rgba[..., 3]))

    la = np.zeros((R, R, 2), np.uint8)
    la[:8] = (100, 255)
    la[8:] = (30, 0)
    put("la.png", _encode(Image.fromarray(la, "LA"), "PNG"), _composite_on_white(np.repeat(la[..., :1], 3, 2), la[..., 1]))

    palette = Image.new("P", (R, R))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (3 * 254))
    palette.paste(1, (8, 0, R, R))
    two_colors = np.concatenate([_solid((10, 20, 30), R, 8), _solid((200, 100, 50), R, 8)], axis=1)
    put("palette.png", _encode(palette, "PNG"), two_colors)
    see_through = np.concatenate([_solid((10, 20, 30), R, 8), _solid(WHITE, R, 8)], axis=1)
    put("palette-transparent.png", _encode(palette, "PNG", transparency=1), see_through)

    put("gray.png", _encode(Image.new("L", (R, R), 77), "PNG"), _solid((77, 77, 77)))
    put("cmyk.jpg", _encode(Image.new("CMYK", (R, R), (0, 255, 0, 0)), "JPEG", quality=95), _solid((255, 0, 255)))

    # Pillow's own I;16 -> RGB clips 300 to 255; the documented scaling gives round(300 * 255 / 65535) = 1.
    def bands(levels, dtype):  # R x R, horizontal bands of the levels
        return np.repeat(np.array(levels, dtype), R // len(levels))[:, None].repeat(R, 1)

    sixteen = Image.fromarray(bands([0, 300, 32896, 65535], np.uint16))
    put("sixteen-bit.png", _encode(sixteen, "PNG"), bands([0, 1, 128, 255], np.uint8)[..., None].repeat(3, 2))

    # Stored 32 wide x 16 tall, dark left half; EXIF orientation 6 (rotate 90 degrees clockwise to
    # display) makes it 16 x 32 with the dark half on top, so the center crop is dark on top.
    stored = np.concatenate([_solid((20, 20, 20), R, R), _solid((235, 235, 235), R, R)], axis=1)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif-rotated.jpg", _encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif), "top dark")

    frames = [Image.new("RGB", (R, R), RED), Image.new("RGB", (R, R), BLUE)]
    put("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100), _solid(RED))

    put("deep/er/nested.png", _encode(Image.fromarray(_noise(R, R, 1)), "PNG"), _noise(R, R, 1))
    put("tiny.png", _encode(Image.fromarray(_noise(5, 7, 2)), "PNG"), "too small: 7x5")

    noise_png = _encode(Image.fromarray(_noise(64, 64, 3)), "PNG")
    idat = noise_png.index(b"IDAT") + 4
    damaged = noise_png[:idat + 100] + bytes(b ^ 0x5A for b in noise_png[idat + 100 : idat + 400]) + noise_png[idat + 400 :]
    put("corrupt.png", damaged, "cannot decode")
    put("truncated.png", noise_png[: len(noise_png) // 2], "cannot decode")
    noise_jpg = _encode(Image.fromarray(_noise(64, 64, 4)), "JPEG")
    put("truncated.jpg", noise_jpg[: len(noise_jpg) // 2], "cannot decode")
    put("empty.jpg", b"", "empty file (0 bytes)")
    put("notes.jpg", b"these are notes, not a picture\n", "not a recognized image format")
    put("bomb-huge.png", _png_header(20000, 20000), "decompression bomb")  # Pillow's own refusal
    put("bomb.png", _png_header(9000, 9000), "decompression bomb")  # below Pillow's limit, above MAX_PIXELS
    return expect


def test_every_kind_of_input_is_kept_right_or_skipped_with_its_reason(tmp_path):
    expect = _make_every_kind(tmp_path / "in")
    assert Image.open(tmp_path / "in" / "sixteen-bit.png").mode == "I;16"
    assert Image.open(tmp_path / "in" / "animated.gif").n_frames == 2
    assert 9000 * 9000 > images_module.MAX_PIXELS > 0

    manifest = _prepare([tmp_path / "in"], tmp_path / "out")
    got = _images_by_source(tmp_path / "out")
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(got) | set(reasons) == set(expect)
    for source, outcome in expect.items():
        name = Path(source).name
        if isinstance(outcome, str) and outcome == "top dark":
            img = got[source].astype(int)
            assert img[:8].mean() < 60 and img[8:].mean() > 200, name
        elif isinstance(outcome, str):
            assert outcome in reasons.get(source, ""), (name, reasons.get(source))
        else:
            tolerance = 3 if name.endswith(".jpg") else 1 if name in ("rgba.png", "la.png") else 0
            assert got[source].shape == (R, R, 3) and got[source].dtype == np.uint8, name
            assert np.abs(got[source].astype(int) - outcome).max() <= tolerance, name
    c = manifest["counts"]
    assert (c["found"], c["kept"], c["skipped"], c["duplicates"]) == (len(expect), len(got), len(reasons), 0)


def test_crop_modes_on_non_square_images(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (R, 8), GREEN).save(tmp_path / "in" / "wide.png")
    Image.new("RGB", (8, R), BLUE).save(tmp_path / "in" / "tall.png")
    _prepare([tmp_path / "in"], tmp_path / "pad", crop="pad")
    got = _images_by_source(tmp_path / "pad")
    wide_padded = np.concatenate([_solid(WHITE, 4), _solid(GREEN, 8), _solid(WHITE, 4)], axis=0)
    tall_padded = np.concatenate([_solid(WHITE, R, 4), _solid(BLUE, R, 8), _solid(WHITE, R, 4)], axis=1)
    assert np.array_equal(got[str(tmp_path / "in" / "wide.png")], wide_padded)
    assert np.array_equal(got[str(tmp_path / "in" / "tall.png")], tall_padded)

    _prepare([tmp_path / "in"], tmp_path / "center", crop="center", resolution=8)
    got = _images_by_source(tmp_path / "center")
    assert np.array_equal(got[str(tmp_path / "in" / "wide.png")], _solid(GREEN, 8, 8))
    assert np.array_equal(got[str(tmp_path / "in" / "tall.png")], _solid(BLUE, 8, 8))


def test_resizing_uses_lanczos_down_and_up(tmp_path):
    (tmp_path / "in").mkdir()
    big, small = _noise(40, 40, 5), _noise(10, 10, 6)
    Image.fromarray(big).save(tmp_path / "in" / "big.png")
    Image.fromarray(small).save(tmp_path / "in" / "small.png")
    manifest = _prepare([tmp_path / "in"], tmp_path / "out")
    got = _images_by_source(tmp_path / "out")
    for name, pixels in (("big.png", big), ("small.png", small)):
        lanczos = np.asarray(Image.fromarray(pixels).resize((R, R), Image.Resampling.LANCZOS))
        box = np.asarray(Image.fromarray(pixels).resize((R, R), Image.Resampling.BOX))
        assert np.array_equal(got[str(tmp_path / "in" / name)], lanczos)
        assert not np.array_equal(lanczos, box)  # so the check above can tell filters apart
    assert "lanczos" in manifest["resize_filter"]


def test_exact_duplicates_are_kept_once_and_listed(tmp_path):
    (tmp_path / "in").mkdir()
    pixels = _noise(R, R, 7)
    Image.fromarray(pixels).save(tmp_path / "in" / "a.png")
    Image.fromarray(pixels).save(tmp_path / "in" / "b.bmp")  # other bytes, same pixels
    shutil.copy(tmp_path / "in" / "a.png", tmp_path / "in" / "c.png")
    near = pixels.copy()
    near[0, 0, 0] ^= 1
    Image.fromarray(near).save(tmp_path / "in" / "near.png")
    manifest = _prepare([tmp_path / "in"], tmp_path / "out")
    assert (manifest["counts"]["kept"], manifest["counts"]["duplicates"]) == (2, 2)
    a = str(tmp_path / "in" / "a.png")
    assert sorted(manifest["duplicates"], key=lambda d: d["source"]) == [
        {"source": str(tmp_path / "in" / name), "duplicate_of": a} for name in ("b.bmp", "c.png")]
    sources = {e["source"]: e["sha256"] for e in manifest["images"]}
    assert set(sources) == {a, str(tmp_path / "in" / "near.png")}
    assert sources[a] == hashlib.sha256((tmp_path / "in" / "a.png").read_bytes()).hexdigest()


def _write_faces(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` distinct noise images of varied shapes, PNG and BMP, all at least R on the short side."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.{'png' if i % 2 else 'bmp'}"
        Image.fromarray(_noise(rng.randint(R, 40), rng.randint(R, 40), 100 + i)).save(path)
        paths.append(path)
    return paths


def _zip(path: Path, files: list[Path], extra: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("folder/", "")  # a directory entry: not a file
        for f in files:
            z.write(f, f"folder/{f.name}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def test_zip_sources_and_their_labels(tmp_path):
    files = _write_faces(tmp_path / "faces", 4, seed=0)
    archive = _zip(tmp_path / "faces.zip", files, {"readme.txt": "not an image"})
    manifest = _prepare([archive], tmp_path / "zipped")
    _prepare([tmp_path / "faces"], tmp_path / "direct")
    assert manifest["counts"] == {"found": 5, "kept": 4, "train": 3, "test": 1, "duplicates": 0, "skipped": 1}
    assert manifest["skipped"] == [{"path": f"{archive}:readme.txt", "reason": "not a recognized image format"}]
    zipped, direct = _images_by_source(tmp_path / "zipped"), _images_by_source(tmp_path / "direct")
    for f in files:
        assert np.array_equal(zipped[f"{archive}:folder/{f.name}"], direct[str(f)])


def test_same_pixels_give_byte_identical_arrays_whatever_the_sources_order_names_and_workers(tmp_path):
    files = _write_faces(tmp_path / "faces", 30, seed=1)
    zip_a = _zip(tmp_path / "a.zip", files[:12])
    zip_b = _zip(tmp_path / "b.zip", files[12:20])
    loose = tmp_path / "loose"
    loose.mkdir()
    for f in files[20:]:
        shutil.copy(f, loose / f.name)
    renamed = tmp_path / "renamed" / "deeper"
    renamed.mkdir(parents=True)
    shuffled = files[:]
    random.Random(0).shuffle(shuffled)
    for i, f in enumerate(shuffled):  # same files, new names, all in one folder
        shutil.copy(f, renamed / f"x{i}{f.suffix}")

    first = _prepare([zip_a, zip_b, loose], tmp_path / "first", workers=1)
    second = _prepare([loose, zip_b, zip_a], tmp_path / "second", workers=2)  # two zips: a process pool
    third = _prepare([tmp_path / "renamed"], tmp_path / "third")
    for split in ("train", "test"):
        data = (tmp_path / "first" / f"{split}.npy").read_bytes()
        assert data == (tmp_path / "second" / f"{split}.npy").read_bytes()
        assert data == (tmp_path / "third" / f"{split}.npy").read_bytes()
    assert first["content_hash"] == second["content_hash"] == third["content_hash"]
    assert first["counts"]["kept"] == 30 and first["counts"]["test"] == round(0.2 * 30)

    other_seed = _prepare([loose, zip_a, zip_b], tmp_path / "seed1", seed=1)
    sha = lambda m: {e["sha256"] for e in m["images"] if e["split"] == "test"}  # noqa: E731
    assert len(sha(other_seed)) == len(sha(first)) == 6 and sha(other_seed) != sha(first)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5])
def test_split_sizes(tmp_path, fraction):
    _write_faces(tmp_path / "faces", 10, seed=2)
    manifest = _prepare([tmp_path / "faces"], tmp_path / "out", test_fraction=fraction, resolution=4)
    n_test = round(fraction * 10)
    assert manifest["counts"]["test"] == n_test and manifest["counts"]["train"] == 10 - n_test
    assert load_split(tmp_path / "out", "test").shape == (n_test, 4, 4, 3)
    assert load_split(tmp_path / "out", "train").shape == (10 - n_test, 4, 4, 3)
    assert sorted((e["split"], e["index"]) for e in manifest["images"]) == sorted(
        [("test", i) for i in range(n_test)] + [("train", i) for i in range(10 - n_test)])


def test_an_interrupted_write_leaves_no_dataset_and_no_temp_folder(tmp_path, monkeypatch):
    _write_faces(tmp_path / "faces", 5, seed=3)
    real_save = np.save
    calls = []

    def save_then_interrupt(*args, **kw):
        calls.append(args[0])
        if len(calls) == 2:  # train.npy written, test.npy under way
            raise KeyboardInterrupt
        real_save(*args, **kw)

    monkeypatch.setattr(np, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _prepare([tmp_path / "faces"], tmp_path / "out")
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]


def test_bad_requests_raise_user_errors_and_write_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("hello")
    _write_faces(tmp_path / "faces", 2, seed=4)
    (tmp_path / "taken").mkdir()
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    cases = {
        "no files found": ([tmp_path / "empty"], "out", {}),
        "no usable image among the 1 files": ([tmp_path / "junk"], "out", {}),
        "does not exist": ([tmp_path / "missing"], "out", {}),
        "not a readable zip file": ([tmp_path / "broken.zip"], "out", {}),
        "already exists": ([tmp_path / "faces"], "taken", {}),
        "--resolution": ([tmp_path / "faces"], "out", {"resolution": 0}),
        "--test-fraction": ([tmp_path / "faces"], "out", {"test_fraction": 1.0}),
        "--crop": ([tmp_path / "faces"], "out", {"crop": "stretch"}),
        "--min-size": ([tmp_path / "faces"], "out", {"min_size": 0}),
    }
    for message, (sources, out, kw) in cases.items():
        with pytest.raises(UserError, match=message):
            _prepare(sources, tmp_path / out, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.zip", "empty", "faces", "junk", "taken"]
    assert not any((tmp_path / "taken").iterdir())


def test_cli_exits_2_with_one_line_on_an_empty_source(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["data", "prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "out"),
                                       "--resolution", "16"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: no files found")
    assert not (tmp_path / "out").exists()


def test_cli_prints_a_summary(tmp_path):
    _write_faces(tmp_path / "faces", 5, seed=5)
    result = CliRunner().invoke(main, ["data", "prepare", str(tmp_path / "faces"), "--out", str(tmp_path / "out"),
                                       "--resolution", "8", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "kept 5 images at 8x8 (4 train, 1 test)" in result.stdout
    assert read_manifest(tmp_path / "out")["seed"] == 3


@pytest.mark.realdata
@pytest.mark.slow
def test_real_anime_faces_at_32px(tmp_path, anime_faces_zips):
    manifest = _prepare(anime_faces_zips, tmp_path / "faces32", resolution=32)
    c = manifest["counts"]
    assert c["found"] == 27492 and c["kept"] >= 27000
    assert load_split(tmp_path / "faces32", "train").shape == (c["train"], 32, 32, 3)
    assert c["test"] == round(0.2 * c["kept"])
