"""Outputs a person reads: `eval` rounded with a readable protocol (`--json` whole), grids,
strips and videos enlarged (nearest neighbour by default) with labelled strips, and
`data export` of a few images."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.io import LABEL_SIZE
from animegen.training.loop import Target, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def dcgan(tmp_path_factory, faces16):
    run = tmp_path_factory.mktemp("runs") / "dcgan"
    train(str(run), model="dcgan", data=str(faces16), sets={"batch": 8, "sample_every": "0", "tensorboard": False},
          target=Target(steps=2), device="cpu", echo=lambda line: None)
    assert _cli("directions", "sefa", run, "--out", run.parent / "dirs.safetensors", "--num", "2")[0] == 0
    return run


def test_eval_prints_rounded_numbers_and_a_readable_protocol(dcgan, cheap_inception):
    args = ("eval", dcgan, "--metrics", "fid,kid,pr", "--num", "8", "--device", "cpu", "--no-record")
    code, out, _ = _cli(*args)
    assert code == 0, out
    lines = out.splitlines()
    assert all(re.fullmatch(r"( {2})*[a-z_0-9]+:( .+)?", line) for line in lines), out
    assert "{" not in out and "[" not in out
    code, raw, _ = _cli(*args, "--json")
    exact = json.loads(raw)
    assert f"fid: {exact['fid']:.2f}" in lines and f"kid: {exact['kid']:.2f}" in lines
    assert not re.search(r"\d\.\d{5,}", out)  # never 210.231543130447
    protocol = lines[lines.index("protocol:") + 1:]
    assert "  model: dcgan" in protocol and "  seeds: 0, 7" in protocol and "  images: 8" in protocol
    assert "  sample_options:" in protocol and any(line.startswith("    ") for line in protocol)


def test_strips_and_grids_are_enlarged_and_labelled(dcgan, tmp_path):
    strip = tmp_path / "strip.png"
    code, out, err = _cli("sample", dcgan, "--count", "2", "--out", tmp_path / "s", "--device", "cpu", "--directions",
                          dcgan.parent / "dirs.safetensors", "--edit", "sefa0", "--strengths", "-2,0,2", "--grid", strip)
    assert code == 0, err
    picture = np.asarray(Image.open(strip))
    band, cell = LABEL_SIZE + 6, 16 * 8  # 16 px faces at 128 px, labels above the columns
    assert picture.shape == (band + 2 + 2 * (cell + 2), 2 + 3 * (cell + 2), 3)
    for column in range(3):  # some text over each column
        x = 2 + column * (cell + 2)
        assert (picture[:band, x : x + cell] < 128).any()
    # Nearest neighbour: each pixel of the saved image a cell x cell block, nothing invented.
    first = np.asarray(Image.open(tmp_path / "s" / "seed000000-sefa0-2.png"))
    np.testing.assert_array_equal(picture[band + 2 : band + 2 + cell, 2 : 2 + cell],
                                  first.repeat(8, axis=0).repeat(8, axis=1))
    smooth = tmp_path / "smooth.png"
    assert _cli("sample", dcgan, "--count", "2", "--out", tmp_path / "t", "--device", "cpu", "--grid", smooth,
                "--scale", "3", "--resample", "lanczos")[0] == 0
    lanczos = np.asarray(Image.open(smooth))
    assert lanczos.shape == (2 + 50, 2 + 2 * 50, 3)
    assert not np.array_equal(lanczos[2:50, 2:50], first.repeat(3, axis=0).repeat(3, axis=1))
    code, _, err = _cli("sample", dcgan, "--count", "2", "--out", tmp_path / "u", "--grid", tmp_path / "u.png",
                        "--scale", "0")
    assert code == 2 and err.startswith("error: --scale must be an integer from 1 to 64") and err.count("\n") == 1


def test_data_export_of_a_few_images(faces16, tmp_path):
    code, out, _ = _cli("data", "export", faces16, "--count", "2", "--out", tmp_path / "two")
    assert code == 0 and "wrote 2 PNG files" in out
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["0.png", "1.png"]
    assert _cli("data", "export", faces16, "--split", "train", "--indices", "3,10-11,3", "--out", tmp_path / "some")[0] == 0
    assert sorted(p.name for p in (tmp_path / "some").iterdir()) == ["03.png", "10.png", "11.png"]  # index in the split
    for bad, message in ((["--count", "2", "--indices", "1"], "--count or --indices, not both"),
                         (["--indices", "8"], "from 0 to 7"), (["--indices", "2-1"], "from 0 to 7"),
                         (["--count", "9"], "--count must be an integer from 1 to 8")):
        code, _, err = _cli("data", "export", faces16, *bad, "--out", tmp_path / "bad")
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "bad").exists()
