"""`animegen compare`: a smoke comparison of all six families on procedural 16 px faces
(two training steps each, FID-4), its report (markdown, HTML, plots, results.json), and
that running it again continues the runs instead of training them again."""

import json
import re
from html.parser import HTMLParser

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from animegen.cli import main
from animegen.compare import run_comparison
from animegen.compare.plan import family_sets
from animegen.compare.report import PAPER_1, PAPER_2
from animegen.errors import UserError
from animegen.generate import load_generator
from animegen.models.base import Noise
from animegen.models import registry
from animegen.training.loop import Target, train

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = tuple(registry.names())
FAST = {"batch": 8, "log_every": "1", "grid_seeds": 4}
SMALL_DDPM = {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
              "time_embed_dim": 32, "timesteps": 12, "sample_steps": 2}
SMALL_EDM = {k: v for k, v in SMALL_DDPM.items() if k != "timesteps"}
SMALL = {**{f"ddpm.{key}": value for key, value in SMALL_DDPM.items()},
         **{f"edm.{key}": value for key, value in SMALL_EDM.items()}}


def _compare(data, out, lines, families=FAMILIES, kimg=0.016, **options):
    sets = {**FAST, **SMALL}
    return run_comparison(str(data), str(out), families, target=Target(kimg=kimg), fid_num=4, repeats=1,
                          device="cpu", sets=sets, nfe_steps=(1,), echo=lines.append, **options)


def _table_rows(report: str, header: str) -> dict[str, list[str]]:
    """The rows of the markdown table after `header`, by their first cell."""
    section = report.split(header, 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return {row[0]: row for row in rows[1:]}


class _Page(HTMLParser):
    """The tables (body rows), image sources, links and CSP of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.links, self.policy, self.headings, self.row = [], [], [], "", [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.row = []
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("a", "link", "script", "iframe"):
            self.links.append(tag)
        elif tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.policy = attrs["content"]

    def handle_endtag(self, tag):
        if tag == "tr":
            if self.row:
                self.tables[-1].append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.row is not None and self.lasttag == "td":
            self.row.append(data)

    def titles_with_tables(self, report):
        return [line[3:] for line in report.splitlines() if line.startswith("## ")
                and report.split(line, 1)[1].split("\n## ", 1)[0].strip().startswith("| ")]


@pytest.mark.slow  # about a minute: every family trained, evaluated and plotted; .ci/run runs it
def test_smoke_comparison_and_rerun(tmp_path, faces16):
    out, lines = tmp_path / "cmp", []
    results = _compare(faces16, out, lines, fid_every="2")
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
    assert paper2["stylegan2"][4] == "—" and "eqt" in on_disk["models"]["stylegan3-r"]["scores"]
    assert "FID-4 against the test split (8 images) after 0.016 kimg" in report

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

    # DDPM against NFE: ancestral at all 12 timesteps, DDIM and DPM-Solver++ at 1 and at 12.
    sweep = on_disk["models"]["ddpm"]["nfe_sweep"]
    assert [(p["sampler"], p["nfe"]) for p in sweep] == [
        ("ddpm", 12), ("ddim", 1), ("ddim", 12), ("dpm-solver++", 1), ("dpm-solver++", 12)]
    assert sweep[1]["fid"] != sweep[2]["fid"]  # the step count reaches the sampler
    nfe = _table_rows(report, "## DDPM: FID-4 against NFE")
    assert nfe["ddpm"][1:] == ["—", f"{sweep[0]['fid']:.2f}"] and nfe["ddim"][1] == f"{sweep[1]['fid']:.2f}"

    # FID curves from the snapshots training wrote (FID-4: a fifth of --fid-num, at least 4).
    for family in FAMILIES:
        curve = on_disk["models"][family]["curve"]
        assert [(p["kimg"], p["num"]) for p in curve] == [(0.016, 4)] and curve[0]["fid"] > 0
    for figure in ("fid_curves.png", "ddpm_nfe.png"):
        with Image.open(out / figure) as image:
            assert image.format == "PNG" and image.width > 400
    assert "z 3x16x16: ddpm" in report and "z 64: vae, dcgan, stylegan2, stylegan3-t, stylegan3-r" in report
    drawn = [load_generator(out / "runs" / f)[0].draw(Noise(range(4)))["z"] for f in ("vae", "dcgan", "stylegan3-r")]
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(drawn[0], drawn[2])  # the grids share z seed by seed

    # index.html: self-contained, with the same tables as report.md.
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert page.tables == [list(_table_rows(report, header).values()) for header in page.titles_with_tables(report)]
    sweeps = sum("nfe_sweep" in m for m in on_disk["models"].values())  # a plot of FID against NFE each
    assert len(page.images) == len(FAMILIES) + 1 + sweeps and all(src.startswith("data:image/png;base64,")
                                                                  for src in page.images)
    assert page.links == [] and "default-src 'none'" in page.policy
    protocol = on_disk["protocol"]
    assert protocol["generated"] == 4 and protocol["num_real"] == 8 and protocol["split"] == "test"
    assert protocol["weights"] == "ema" and protocol["truncation_psi"] == 1.0 and protocol["device"] == "cpu"
    assert len(protocol["inception_sha256"]) == 12
    n = len(FAMILIES)  # phases: n trainings, n evaluations, one report
    assert re.search(rf"\[compare {n - 1}/{2 * n + 1}, .*\] training {FAMILIES[-1]} \({n} of {n}\).*ETA", "\n".join(lines))

    # Running it again trains nothing: the runs already reached the budget.
    logs = {f: (out / "runs" / f / "metrics.jsonl").read_bytes() for f in ("vae", "dcgan")}
    again = []
    _compare(faces16, out, again, families=("vae", "dcgan"))
    assert sum("already reached 0.016 kimg" in line for line in again) == 2
    assert {f: (out / "runs" / f / "metrics.jsonl").read_bytes() for f in ("vae", "dcgan")} == logs

    # A larger budget continues the runs from their checkpoints (as after a kill).
    more = []
    _compare(faces16, out, more, families=("vae",), kimg=0.032)
    assert any("from step 2 to 0.032 kimg" in line for line in more)
    assert json.loads((out / "results.json").read_text())["models"]["vae"]["training"]["step"] == 4


@pytest.fixture(scope="module")
def edm_runs(tmp_path_factory, faces16):
    """An edm run and a guide for it (2 steps each)."""
    root = tmp_path_factory.mktemp("edm")
    for name in ("main", "guide"):
        train(str(root / name), model="edm", data=str(faces16), sets={**FAST, **SMALL_EDM, "sample_every": "0"},
              target=Target(steps=2), device="cpu", seed=1 if name == "main" else 2, echo=lambda line: None)
    return root


def test_a_guided_family_is_measured_with_and_without_its_guide(tmp_path, edm_runs):
    out, lines = tmp_path / "cmp", []
    results = run_comparison(None, str(out), runs_given=[str(edm_runs / "main")], fid_num=4, repeats=1, device="cpu",
                             nfe_steps=(), guides=[f"edm={edm_runs / 'guide'}"], guidance=1.5, echo=lines.append)
    guided = results["models"]["edm"]["guided"]
    assert guided["guidance"] == 1.5 and guided["guide"]["step"] == 2 and guided["fid"] > 0
    assert guided["fid"] != results["models"]["edm"]["repeats"][0]["fid"]
    row = _table_rows((out / "report.md").read_text(), "## Autoguidance")["edm"]
    assert row[3:] == ["1.5", f"{results['models']['edm']['repeats'][0]['fid']:.2f}", f"{guided['fid']:.2f}"]


@pytest.mark.parametrize("guides, guidance, message", [
    (["ddpm={guide}"], None, "is a run of edm: a guide must be a run of the same family"),
    (["edm"], None, "is not FAMILY=RUN_OR_CHECKPOINT"),
    ([], 2.0, "give --guide FAMILY=RUN too"),
])
def test_bad_guides_are_refused_before_anything_runs(tmp_path, edm_runs, guides, guidance, message):
    guides = [g.format(guide=edm_runs / "guide") for g in guides]
    with pytest.raises(UserError, match=message):
        run_comparison(None, str(tmp_path / "cmp"), runs_given=[str(edm_runs / "main")], fid_num=4, device="cpu",
                       guides=guides, guidance=guidance)
    assert not (tmp_path / "cmp").exists()


def test_family_sets():
    sets = {"batch": 8, "ddpm.timesteps": 12, "stylegan3-t.r1_gamma": 2.0}
    assert family_sets(sets, "ddpm") == {"batch": 8, "timesteps": 12}
    assert family_sets(sets, "stylegan3-t") == {"batch": 8, "r1_gamma": 2.0}
    assert family_sets(sets, "vae") == {"batch": 8}


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
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--set", "gpt.batch=4"], "'gpt' is not a family"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--curve-num", "3"], "--curve-num"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--nfe-num", "1"], "--nfe-num"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--ema-lengths", "0.5"], "--ema-lengths 0.5 is not an"),
    (["--out", "{tmp}/o", "--data", "{data}", "--kimg", "1", "--ema-lengths", "0.1,x"], "--ema-lengths"),
])
def test_bad_input_is_one_line(tmp_path, faces16, args, message):
    args = [a.format(tmp=tmp_path, data=faces16) for a in args]
    result = CliRunner().invoke(main, ["compare", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
