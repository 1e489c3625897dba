from click.testing import CliRunner

from animegen.cli import main
from animegen.data.store import load_split, read_manifest


def test_demo_makes_data_and_grid_then_reuses_them(tmp_path):
    out = tmp_path / "demo"
    first = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert (out / "data-grid.png").stat().st_size > 1000
    assert load_split(out / "data", "train").shape == (1600, 32, 32, 3)
    content = read_manifest(out / "data")["content_hash"]
    second = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert second.exit_code == 0 and "reusing" in second.output
    assert read_manifest(out / "data")["content_hash"] == content
