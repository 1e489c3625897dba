"""The comparison's report: the figures (compare.plots), results.json, and one list of
sections (tables, notes, figures) built from results.json's content, written as report.md
and as a self-contained index.html (images inlined as data: URIs, a Content-Security-Policy
that forbids every request)."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from animegen.compare import plots
from animegen.io import atomic_write_bytes, atomic_write_json
from animegen.metrics.equivariance import EQ_METRICS

# Table 1 of each paper: FID (and EQ in dB) as published.
PAPER_1 = {"vae": 198.35, "dcgan": 222.64, "stylegan2": 4.17, "ddpm": 19.07}
PAPER_2 = {"stylegan2": (5.14, None, None), "stylegan3-t": (4.62, 63.01, 13.12), "stylegan3-r": (4.50, 66.65, 40.48)}
PAPERS = {"paper1_table1": PAPER_1,  # as results.json records them
          "paper2_table1": {k: dict(zip(("fid", "eqt", "eqr"), v)) for k, v in PAPER_2.items()}}
NOTE_1 = ("The paper states neither its FID sample count nor its reference set, and trained each model to "
          "convergence at 64 px (30 min to 3 days on one RTX 3090); ours is FID-{num} against the {split} split "
          "({num_real} images) after {budget}.")
NOTE_2 = ("The paper's numbers come from full training with NVlabs' metrics (FID-50k against the training set, EQ "
          "over 50,000 latents); ours is FID-{num} against the {split} split ({num_real} images) and EQ over "
          "{eq_images} latents after {budget}. StyleGAN2 has no input transform, so EQ is not measured for it.")
CAVEAT = ("A small budget and a small FID count both push FID up, so the papers' columns are a reference point, not "
          "a target: what carries over between reports made under the same protocol is the ranking and the gaps.")


def write_report(out: Path, results: dict) -> None:
    """OUT/fid_curves.png, OUT/<family>_nfe.png (per family with an NFE sweep), OUT/ema_lengths.png
    (with an EMA-length sweep), OUT/results.json, OUT/report.md and OUT/index.html (which inlines
    the figures, so they come first)."""
    models = results["models"]
    plots.fid_curves({family: m["curve"] for family, m in models.items()}, out / "fid_curves.png")
    for family, m in models.items():
        if "nfe_sweep" in m:
            plots.nfe_plot(m["nfe_sweep"], out / f"{family}_nfe.png")
    sweeps = {family: m["ema_sweep"] for family, m in models.items() if "ema_sweep" in m}
    if sweeps:
        plots.ema_plot(sweeps, out / "ema_lengths.png")
    atomic_write_json(out / "results.json", results)
    parts = sections(results)
    atomic_write_bytes(out / "report.md", markdown(parts).encode())
    atomic_write_bytes(out / "index.html", html_page(parts, out).encode())


@dataclass
class Section:
    title: str
    header: list[str] = field(default_factory=list)  # a table when set
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to the report)
    numbers_right: bool = True  # a table of numbers (not of settings)


def sections(results: dict) -> list[Section]:
    protocol, models = results["protocol"], results["models"]
    facts = {"num": protocol["generated"], "split": protocol["split"], "num_real": protocol["num_real"],
             "budget": protocol["budget"], "eq_images": protocol["eq_images"]}
    out = [Section("Protocol", ["item", "value"], [[key, _text(value)] for key, value in protocol.items()], [CAVEAT],
                   numbers_right=False),
           Section("Paper 1, Table 1 (FID, 64x64 anime faces)", ["model", "paper FID", "our FID"],
                   [[family, f"{fid:.2f}", _score(models, family, "fid")] for family, fid in PAPER_1.items()],
                   [NOTE_1.format(**facts)]),
           Section("Paper 2, Table 1 (FID, EQ-T dB, EQ-R dB)",
                   ["model", "paper FID", "our FID", "paper EQ-T", "our EQ-T", "paper EQ-R", "our EQ-R"],
                   [[family, f"{fid:.2f}", _score(models, family, "fid"), _number(eqt), _score(models, family, "eqt"),
                     _number(eqr), _score(models, family, "eqr")] for family, (fid, eqt, eqr) in PAPER_2.items()],
                   [NOTE_2.format(**facts)]),
           _full_table(models, protocol["generated"])]
    if models:
        out.append(Section("FID during training", figures=[("FID against training time and kimg", "fid_curves.png")],
                           notes=[_curve_note(models)]))
    for family, m in models.items():
        if "nfe_sweep" in m:
            header, rows = nfe_table(m["nfe_sweep"])
            out.append(Section(f"{family.upper()}: FID-{m['nfe_sweep'][0]['num']} against NFE", header, rows,
                               ["NFE: network evaluations per image, as the sampler spends them (a second-order "
                                "step takes two)."], [("FID against NFE", f"{family}_nfe.png")]))
    sweeps = {family: m["ema_sweep"] for family, m in models.items() if "ema_sweep" in m}
    if sweeps:
        out.append(ema_section(sweeps, models))
    guided = {family: m for family, m in models.items() if "guided" in m}
    if guided:
        out.append(Section("Autoguidance", ["model", "guide", "guide kimg", "w", f"FID-{protocol['generated']}",
                                            "guided FID"],
                           [[family, m["guided"]["guide"]["checkpoint"], f"{m['guided']['guide']['kimg']:g}",
                             f"{m['guided']['guidance']:g}", _number(m["repeats"][0]["fid"]), _number(m["guided"]["fid"])]
                            for family, m in guided.items()],
                           ["D = D_guide + w (D - D_guide), the guide's EMA weights; the same seeds and sampler as "
                            "the first repeat. Each evaluation also runs the guide."], numbers_right=False))
    out.append(Section("Same-seed grids (seeds 0-63)", notes=[_shared_z_note(models)],
                       figures=[(family, m["grid"]) for family, m in models.items()]))
    return out


def _full_table(models: dict, num: int) -> Section:
    header = ["model", "params G", "params D", "kimg", "img/s", "train min", "peak MB", f"FID-{num}",
              "KID x 10^3", "precision", "recall", "EQ-T", "EQ-T frac", "EQ-R", "sample img/s", "NFE"]
    rows = []
    for family, m in models.items():
        t, p, s = m["training"], m["parameters"], m["sampling"]
        rows.append([family, f"{p['model']:,}", f"{sum(v for k, v in p.items() if k != 'model'):,}", f"{t['kimg']:g}",
                     _number(t["img_per_s"], ".1f"), f"{t['minutes']:.2f}", _number(t["peak_mem_mb"], ".0f"),
                     _score(models, family, "fid"),
                     f"{_score(models, family, 'kid')} (std {m['scores']['kid_std']:.2f})",
                     *(_score(models, family, k) for k in ("precision", "recall", *EQ_METRICS)),
                     f"{s['img_per_s']:.1f}", str(s.get("nfe", "—"))])
    return Section("All models", header, rows, [
        "params G: the model's networks (the VAE's encoder and decoder, the DDPM's denoiser); params D: the nets only "
        "training uses (discriminators). img/s and minutes count training steps only, not FID snapshots. KID x 10^3: mean "
        "± sd over repeats, and its std over subsets (first repeat). sample img/s: the EMA generator on the report's device, batch 64."])


def nfe_table(sweep: list[dict]) -> tuple[list[str], list[list[str]]]:
    """A sampler per row, an NFE per column."""
    counts = sorted({point["nfe"] for point in sweep})
    fids = {(point["sampler"], point["nfe"]): point["fid"] for point in sweep}
    samplers = list(dict.fromkeys(point["sampler"] for point in sweep))
    return ["sampler", *(f"NFE {n}" for n in counts)], [[s, *(_number(fids.get((s, n))) for n in counts)]
                                                         for s in samplers]


def ema_section(sweeps: dict[str, list[dict]], models: dict) -> Section:
    """A family per row, a post-hoc EMA length per column, and the ema_kimg EMA (the scores
    above) measured on the same seeds."""
    lengths = [p["ema_length"] for p in next(iter(sweeps.values()))]
    num = next(iter(sweeps.values()))[0]["num"]
    rows = [[family, *(_number(p["fid"]) for p in points), _number(models[family]["repeats"][0]["fid"])]
            for family, points in sweeps.items()]
    return Section(f"FID-{num} against post-hoc EMA length", ["model", *(f"{s:g}" for s in lengths), "ema_kimg EMA"],
                   rows, ["Each column is the EMA of that length (sigma_rel: the standard deviation of its averaging "
                          "profile as a fraction of training, EDM2's power-function EMA) made after training from the "
                          "run's post-hoc snapshots (animegen ema); the last is the run's own EMA (ema_kimg), on the "
                          "same seeds."], [("FID against EMA length", "ema_lengths.png")])


def _curve_note(models: dict) -> str:
    counts = sorted({point["num"] for m in models.values() for point in m["curve"]})
    if not counts:
        return "No run recorded FID snapshots (train with --fid-every to draw these curves)."
    return (f"FID-{'/'.join(map(str, counts))} snapshots written while training (seeds 0..N-1 of the EMA weights), "
            "read from each run's metrics.jsonl; training time excludes the snapshots.")


def _shared_z_note(models: dict) -> str:
    groups: dict[str, list[str]] = {}
    for family, m in models.items():
        groups.setdefault("x".join(map(str, m["z_shape"])), []).append(family)
    return "Seed s draws the same z in every family of a group: " + "; ".join(
        f"z {shape}: {', '.join(names)}" for shape, names in groups.items()) + "."


def _score(models: dict, family: str, key: str) -> str:
    """mean ± sd of a repeated score, a single score, or a dash where it was not measured."""
    value = models.get(family, {}).get("scores", {}).get(key)
    if value is None:
        return "—"
    if isinstance(value, dict):
        return _number(value["mean"]) + (f" ± {value['sd']:.2f}" if value["sd"] is not None else "")
    return _number(value)


def _number(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# ---------------------------------------------------------------- writers
def markdown(parts: list[Section]) -> str:
    lines = ["# Model comparison"]
    for part in parts:
        lines += ["", f"## {part.title}", ""]
        if part.header:
            lines += [_md_row(part.header), "|" + "---|" * len(part.header), *map(_md_row, part.rows), ""]
        for note in part.notes:
            lines += [note, ""]
        if len(part.figures) > 1:  # side by side
            lines += [_md_row([caption for caption, _ in part.figures]), "|" + "---|" * len(part.figures),
                      _md_row([f"![{caption}]({path})" for caption, path in part.figures])]
        lines += [f"![{caption}]({path})" for caption, path in part.figures if len(part.figures) == 1]
    return "\n".join(lines).rstrip() + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


NUMBER = re.compile(r"^(—|[-+]?[\d,.]+( ± [\d.]+)?( \(std [\d.]+\))?)$")  # right-aligned in the page
STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.num{text-align:right}p{max-width:60em;color:#444}
.figures{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{text-align:center;font-weight:600}
img{image-rendering:pixelated}.figures img{width:200px}.wide img{max-width:100%}"""


def html_page(parts: list[Section], folder: Path) -> str:
    """One file with no external request: CSS inline, images as data: URIs."""
    body = []
    for part in parts:
        body.append(f"<h2>{html.escape(part.title)}</h2>")
        if part.header:
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in part.header) + "</tr>"
                        + "".join("<tr>" + "".join(_cell(c, part.numbers_right) for c in row) + "</tr>" for row in part.rows) + "</table>")
        body += [f"<p>{html.escape(note)}</p>" for note in part.notes]
        if part.figures:
            kind = "figures" if len(part.figures) > 1 else "wide"
            body.append(f'<div class="{kind}">' + "".join(
                f'<figure><img alt="{html.escape(caption)}" src="{_data_uri(folder / path)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>" for caption, path in part.figures) + "</div>")
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
            f"<title>animegen comparison</title><style>{STYLE}</style></head><body><h1>Model comparison</h1>"
            + "\n".join(body) + "</body></html>\n")


def _cell(text: str, numbers_right: bool) -> str:
    numeric = numbers_right and NUMBER.match(text) is not None
    return f"<td{' class=num' if numeric else ''}>{html.escape(text)}</td>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
