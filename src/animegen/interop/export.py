"""`animegen export RUN --format diffusers --out DIR`: a run's checkpoint (EMA weights by default)
as a diffusers folder (interop.diffusers_folder) with a model card that says what it is, what it
was trained on (the dataset's content hash) and how good it is (the run's FID and its protocol).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from animegen import __version__, runs
from animegen.errors import UserError
from animegen.generate import load_generator
from animegen.interop.diffusers_folder import DiffusersForm, write_folder
from animegen.models import registry
from animegen.settings import check_new_folder

FORMATS = ("diffusers",)


def export_run(run: str | os.PathLike, out: str | os.PathLike, fmt: str = "diffusers", checkpoint: str = "last",
               weights: str = "ema", license: str = "other") -> dict:
    """Write the folder; returns what was exported (also in DIR/animegen.json)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    check_new_folder("--out", out)
    model, state = load_generator(run, "cpu", weights=weights, checkpoint=checkpoint)
    if not model.capabilities.diffusers:
        able = ", ".join(registry.families_that(lambda can: can.diffusers))
        raise UserError(f"{state['model']} runs have no diffusers form; {able} runs do.")
    form = model.diffusers_form()
    provenance = {
        "exported_by": f"animegen {__version__}", "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "family": state["model"], "run": str(Path(run).resolve()), "checkpoint": state["checkpoint"],
        "step": state["step"], "kimg": state["nimg"] / 1000, "weights": weights,
        "dataset": {"path": state["config"].get("data"), "content_hash": state["config"].get("data_hash"),
                    "resolution": model.resolution},
        "timestep_scale": form.timestep_scale, "model_config": state["config"]["model_config"],
        "fid": _fid(run, state, weights),
    }
    write_folder(out, form, provenance, model_card(form, provenance, license))
    return provenance


def _fid(run, state: dict, weights: str) -> dict | None:
    """The newest FID measured of exactly these weights: an `animegen eval` of this checkpoint
    (unguided, not a post-hoc length), else its training snapshot; None if neither."""
    folder = runs.Run(run)
    evals = [e for e in folder.read_metrics() if e.get("event") == "eval"
             and "fid" in e and e.get("protocol", {}).get("checkpoint") == state["checkpoint"]
             and e["protocol"].get("weights") == weights and "guide" not in e["protocol"]
             and e["protocol"].get("ema_length") is None]
    if evals:
        p = evals[-1]["protocol"]
        return {"value": evals[-1]["fid"], "images": p["images"], "split": p["split"], "seeds": p["seeds"],
                "sample_options": p["sample_options"], "by": "animegen eval"}
    snapshot = state.get("snapshot")
    if snapshot and weights == "ema" and "fid" in snapshot:
        return {"value": snapshot["fid"], "images": snapshot["num"], "split": snapshot.get("split", "test"),
                "sample_options": snapshot.get("sample_options"), "by": "training's FID snapshot"}
    return None


# ---------------------------------------------------------------- the model card
def model_card(form: DiffusersForm, p: dict, license: str) -> str:
    fid, data = p["fid"], p["dataset"]
    name = Path(p["run"]).name
    header = [
        "---", f"license: {json.dumps(license)}", "library_name: diffusers", "pipeline_tag: unconditional-image-generation",
        "tags:", *(f"- {t}" for t in ("diffusers", "unconditional-image-generation", "anime", "animegen", p["family"])),
        "animegen:", f"  family: {p['family']}", f"  step: {p['step']}", f"  weights: {p['weights']}",
        f"  dataset_content_hash: {json.dumps(data['content_hash'])}",
    ]
    if fid is not None:
        header += ["model-index:", f"- name: {json.dumps(name)}", "  results:",
                   "  - task:", "      type: unconditional-image-generation", "    dataset:",
                   f"      name: {json.dumps(_dataset_name(data))}", "      type: animegen-prepared",
                   f"      revision: {json.dumps(data['content_hash'])}",
                   "    metrics:", "    - type: fid", f"      value: {fid['value']:.4g}",
                   f"      name: {json.dumps(_fid_name(fid))}"]
    body = [
        "---", "", f"# {name}: {p['family']} anime faces at {data['resolution']} px", "",
        f"Trained with animegen and exported by {p['exported_by']} on {p['exported_at']}: "
        f"{p['weights']} weights of step {p['step']} ({p['kimg']:g} kimg), `{p['checkpoint']}`.", "",
        "## Use", "", "```python", *_usage(form, p), "```", "",
        "## Training data", "",
        f"An animegen-prepared dataset at {data['resolution']} px (`animegen data prepare`), not distributed with "
        f"the model; its content hash (sha256 of the arrays) is `{data['content_hash']}`.", "",
        "## Evaluation", "", _evaluation(fid), "",
        "## Provenance", "", "`animegen.json` holds the run's full model configuration and where it came from.", "",
    ]
    return "\n".join(header + body)


def _dataset_name(data: dict) -> str:
    return f"animegen dataset {str(data['content_hash'])[:12]} ({data['resolution']} px)"


def _fid_name(fid: dict) -> str:
    return f"FID-{fid['images'] // 1000}k" if fid["images"] % 1000 == 0 else f"FID ({fid['images']} images)"


def _evaluation(fid: dict | None) -> str:
    if fid is None:
        return ("Not measured for these weights: run `animegen eval RUN --checkpoint ...` before exporting to put "
                "the FID here.")
    return (f"{_fid_name(fid)} **{fid['value']:.2f}** ({fid['by']}): {fid['images']} generated images against the "
            f"{fid['split']} split of the dataset above, TF-FID InceptionV3 features; sampling options "
            f"`{json.dumps(fid['sample_options'])}`.")


def _usage(form: DiffusersForm, p: dict) -> list[str]:
    """The lines that sample it: the pipeline, or the loop an EDM scheduler needs."""
    if form.pipeline is not None:
        return [
            "from diffusers import DDIMPipeline", "",
            'pipe = DDIMPipeline.from_pretrained("PATH_OR_REPO")  # DDPMPipeline: ancestral, all steps',
            "# animegen's DDIM: x0 clipped to [-1, 1] and eps recomputed from it",
            "images = pipe(batch_size=4, num_inference_steps=20, eta=0.0, use_clipped_model_output=True).images",
        ]
    scheduler = form.scheduler["_class_name"]
    return [
        "import torch", f"from diffusers import UNet2DModel, {scheduler}", "",
        'unet = UNet2DModel.from_pretrained("PATH_OR_REPO", subfolder="unet").eval()',
        f'scheduler = {scheduler}.from_pretrained("PATH_OR_REPO", subfolder="scheduler")',
        "scheduler.set_timesteps(18)",
        f"x = torch.randn(4, 3, {p['dataset']['resolution']}, {p['dataset']['resolution']}) * scheduler.sigmas[0]",
        "with torch.no_grad():", "    for t in scheduler.timesteps:",
        f"        # the U-Net's time input is {form.timestep_scale:g} x the scheduler's ln(sigma) / 4",
        f"        out = unet(scheduler.scale_model_input(x, t), t * {form.timestep_scale:g}).sample",
        "        x = scheduler.step(out, t, x).prev_sample",
        "images = (x / 2 + 0.5).clamp(0, 1)  # N x 3 x R x R in [0, 1]",
    ]
