"""`animegen compare`: a smoke comparison of three families on procedural 16 px faces
(two training steps each, FID-8), its report, and that running it again continues the
runs instead of training them again."""

import json
import re

import pytest
from click.testing import CliRunner

from animegen.cli import main
from animegen.compare import PAPER_1, PAPER_2, nfe_sweep, nfe_table, run_comparison
from animegen.training.loop import Target, train

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("vae", "dcgan", "stylegan3-t")
FAST = {"batch": 8, "log_every": "1", "grid_seeds": 4}


def _compare(data, out, lines, families=FAMILIES, kimg=0.016):
    return run_comparison(str(data), str(out), families, target=Target(kimg=kimg), fid_num=8, repeats=1,
                          device="cpu", sets=FAST, echo=lines.append)


def _table_rows(report: str, header: str) -> dict[str, list[str]]:
    """The rows of the markdown table after `header`, by their first cell."""
    section = report.split(header, 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return {row[0]: row for row in rows[1:]}


def test_smoke_comparison_and_rerun(tmp_path, faces16):
    out, lines = tmp_path / "cmp", []
    results = _compare(faces16, out, lines)
    assert results["signal"] is None
    on_disk = json.loads((out / "results.json").read_text())
    assert list(on_disk["models"]) == list(FAMILIES)
    report = (out / "report.md").read_text()

    # Both papers' tables, every paper row, our numbers beside theirs as results.json has them.
    paper1 = _table_rows(report, "## Paper 1, Table 1")
    paper2 = _table_rows(report, "## Paper 2, Table 1")
    assert set(paper1) == set(PAPER_1) and set(paper2) == set(PAPER_2)
    for family in ("vae", "dcgan"):
        assert paper1[family][1:] == [f"{PAPER_1[family]:.2f}", f"{on_disk['models'][family]['scores']['fid']['mean']:.2f}"]
    sg3 = on_disk["models"]["stylegan3-t"]["scores"]
    assert paper2["stylegan3-t"][1:] == ["4.62", f"{sg3['fid']['mean']:.2f}", "63.01", f"{sg3['eqt']:.2f}",
                                          "13.12", f"{sg3['eqr']:.2f}"]
    assert paper1["ddpm"][2] == "—" and paper2["stylegan2"][2] == "—"  # not in this comparison
    assert "FID-8 against the test split (8 images) after 0.016 kimg" in report

    # The full table: a row per model, with training facts, parameters and speed.
    full = _table_rows(report, "## All models")
    assert set(full) == set(FAMILIES)
    for family in FAMILIES:
        facts = on_disk["models"][family]
        assert facts["training"]["step"] == 2 and facts["training"]["kimg"] == 0.016
        assert facts["parameters"]["model"] > 0 and facts["sampling"]["img_per_s"] > 0
        assert full[family][1] == f"{facts['parameters']['model']:,}"
        assert (out / "grids" / f"{family}.png").is_file()
        assert f"grids/{family}.png" in report
    assert "eqt" not in on_disk["models"]["vae"]["scores"]  # EQ only where an input transform exists
    protocol = on_disk["protocol"]
    assert protocol["generated"] == 8 and protocol["num_real"] == 8 and protocol["split"] == "test"
    assert protocol["weights"] == "ema" and protocol["truncation_psi"] == 1.0 and protocol["device"] == "cpu"
    assert len(protocol["inception_sha256"]) == 12
    assert re.search(r"\[compare 2/7, .*\] training stylegan3-t \(3 of 3\).*ETA", "\n".join(lines))

    # Running it again trains nothing: every run already reached the budget.
    logs = {f: (out / "runs" / f / "metrics.jsonl").read_bytes() for f in FAMILIES}
    again = []
    _compare(faces16, out, again)
    assert sum("already reached 0.016 kimg" in line for line in again) == len(FAMILIES)
    assert {f: (out / "runs" / f / "metrics.jsonl").read_bytes() for f in FAMILIES} == logs

    # A larger budget continues the runs from their checkpoints (as after a kill).
    more = []
    _compare(faces16, out, more, families=("vae",), kimg=0.032)
    assert any("from step 2 to 0.032 kimg" in line for line in more)
    assert json.loads((out / "results.json").read_text())["models"]["vae"]["training"]["step"] == 4


@pytest.mark.slow  # 24 s: seven FID evaluations
def test_ddpm_fid_against_nfe(tmp_path, faces16):
    """Ancestral DDPM at all its timesteps; DDIM and DPM-Solver++ at each requested count below
    them and at all of them; one table row per sampler."""
    run = tmp_path / "ddpm"
    small = {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
             "time_embed_dim": 32, "timesteps": 12, "sample_steps": 2}
    train(str(run), model="ddpm", data=str(faces16), sets={**FAST, **small}, target=Target(steps=2), device="cpu",
          echo=lambda line: None)
    sweep = nfe_sweep(run, 8, "cpu", steps=(2, 5, 20))
    assert [(p["sampler"], p["nfe"]) for p in sweep] == [
        ("ddpm", 12), ("ddim", 2), ("ddim", 5), ("ddim", 12), ("dpm-solver++", 2), ("dpm-solver++", 5),
        ("dpm-solver++", 12)]
    assert all(p["fid"] > 0 for p in sweep)
    assert sweep[1]["fid"] != sweep[3]["fid"]  # the step count reaches the sampler
    table = nfe_table(sweep)
    assert table[0] == "| sampler | NFE 2 | NFE 5 | NFE 12 |"
    assert table[2].startswith("| ddpm | — | — | ") and len(table) == 5


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/o", "--kimg", "1"], "needs --data"),
    (["--out", "{tmp}/o", "--data", "{data}"], "needs --data and one of --minutes and --kimg"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--models", "vae,gpt"], "unknown model 'gpt'"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--fid-num", "1"], "--fid-num"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--repeats", "0"], "--repeats"),
    (["--out", "{tmp}/o", "--runs", "{tmp}/nowhere"], "holds no run"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--nfe-steps", "10,x"], "--nfe-steps"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--nfe-steps", "0"], "--nfe-steps"),
    (["--out", "{data}/manifest.json", "--data", "{data}", "--kimg", "1"], "is a file"),
])
def test_bad_input_is_one_line(tmp_path, faces16, args, message):
    args = [a.format(tmp=tmp_path, data=faces16) for a in args]
    result = CliRunner().invoke(main, ["compare", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
