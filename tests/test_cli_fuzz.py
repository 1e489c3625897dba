"""Property: bad input to `animegen data prepare|synth|info|export`, `fid`, `kid`, `train`
(new and resumed, every `--set` key), `sample` (per family's sampling options, and its
latent files, directions and edits), `eval`, `ema`, `runs info`, `interpolate`, `style-mix`
and `directions sefa|fit` fails cleanly.

Each case runs one command in-process with valid base arguments, some of them replaced by
values it must refuse (out of range, the wrong type, empty, absurd, a path it cannot use),
and asserts: exit code 2, exactly one line "error: ..." on stderr, nothing on stdout, no
traceback, and nothing created (no output, no temporary folder, no cache entry).

To cover a new option, add a row to its command's table in BAD; paths are fixtures by name (At).
A command key may end in "@variant" (the same command with other base arguments).
"""

import contextlib
import json
import math
import shutil
import typing

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from PIL import Image

from animegen.cli import main
from animegen.data.limits import MAX_BATCH_SIZE, MAX_IMAGES, MAX_MIN_SIZE, MAX_WORKERS, MIN_RESOLUTION, MIN_SYNTH_RESOLUTION
from animegen.data.store import load_split
from animegen.data.synth import synthesize_dataset
from animegen.generate import MAX_COUNT, load_generator, sample_batches
from animegen.io import MAX_SCALE
from animegen.latent.codes import save_latents
from animegen.latent.directions import save_directions
from animegen.latent.discover import sefa
from animegen.models import registry
from animegen.posthoc import SIGMA_REL_MAX, SIGMA_REL_MIN
from animegen.settings import MAX_RESOLUTION, MAX_SEED, limits_of
from animegen.training.config import TrainConfig
from animegen.training.loop import Target, train

EXAMPLES = 200  # per command
FACES = 4  # PNG files in the `faces` fixture
SYNTH_COUNT = 8  # faces in the base `data synth` case


class At(str):
    """A fixture path by name (relative to the fixture folder), resolved when a case runs."""


# ---------------------------------------------------------------- values to refuse
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


def _parses(kind, text: str) -> bool:
    try:
        kind(text)
        return True
    except ValueError:
        return False


def bad_int(low: int, high: int):
    """Integers outside low..high, and text that is not an integer at all."""
    outside = st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1))
    return st.one_of(outside.map(str), TEXT.filter(lambda s: not _parses(int, s)), st.sampled_from(["1.5", "1e3", "0x10"]))


def no_training_image_left(n: int):
    """Fractions in [0, 1) that send all n images to the test split."""
    return st.floats(min_value=(n - 0.5) / n, max_value=1, exclude_max=True).filter(lambda f: round(n * f) >= n)


BAD_FRACTION = st.one_of(st.floats().filter(lambda f: not 0 <= f < 1).map(repr),
                         TEXT.filter(lambda s: not _parses(float, s)))


def not_one_of(*choices):
    return TEXT.filter(lambda s: s not in choices)


def _names_only_feature_metrics(text: str) -> bool:
    names = [m.strip() for m in text.split(",") if m.strip()]
    return bool(names) and set(names) <= {"fid", "kid", "pr"}


BAD_METRICS = st.one_of(st.text("fidkpreqt_, ", max_size=12), TEXT).filter(lambda s: not _names_only_feature_metrics(s))
BAD_NEW_FOLDER = st.sampled_from(["", At("ds"), At("empty"), At("file.txt"), At("file.txt/deeper")])
BAD_DATASET = st.sampled_from(["", At("missing"), At("empty"), At("faces"), At("file.txt"), At("junk-ds"), At("flat-ds")])
BAD_SOURCE = st.sampled_from(["", At("missing"), At("empty"), At("text"), At("file.txt"), At("broken.zip"), At("ds")])
BAD_IMAGE_SET = st.sampled_from(["", At("missing"), At("empty"), At("text"), At("file.txt"), At("broken.zip"),
                                 At("junk-ds"), At("flat-ds"), At("ds-no-test")])

METRIC_OPTIONS = {
    "A": BAD_IMAGE_SET,
    "B": BAD_IMAGE_SET,
    "--split": not_one_of("train", "test"),
    "--num": bad_int(1, MAX_IMAGES),
    "--device": not_one_of("auto", "cpu", "cuda"),
    "--batch-size": bad_int(1, MAX_BATCH_SIZE),
    "--inception": st.sampled_from(["", At("missing"), At("empty"), At("file.txt")]),
}
def bad_float(low: float, high: float):
    """Finite numbers outside [low, high], non-finite ones, and text that is no number."""
    outside = st.one_of(st.floats(max_value=low, exclude_max=True, allow_nan=False, allow_infinity=False),
                        st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False))
    return st.one_of(outside.map(repr), st.sampled_from(["nan", "inf", "-inf"]),
                     TEXT.filter(lambda s: not _parses(float, s)))


# ---------------------------------------------------------------- --set values to refuse, from the settings' types and limits
WRONG_TYPES = ['"text"', "abc", "[1]", "{}", "true", "null"]


def _outside(limit, integral: bool):
    """Numbers outside `limit` (its bounds themselves where they are open)."""
    values = []
    if limit.low is not None:
        below = st.integers(max_value=math.ceil(limit.low) - 1) if integral else st.floats(
            max_value=limit.low, exclude_max=not limit.low_open, allow_nan=False, allow_infinity=False)
        values.append(below)
    if limit.high is not None:
        above = st.integers(min_value=math.floor(limit.high) + 1) if integral else st.floats(
            min_value=limit.high, exclude_min=not limit.high_open, allow_nan=False, allow_infinity=False)
        values.append(above)
    return st.one_of(*values).map(json.dumps)


def bad_setting(hint, limit):
    """JSON texts that setting (type `hint`, limit `limit`) must refuse."""
    optional = typing.get_origin(hint) in (typing.Union, __import__("types").UnionType)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    wrong = st.sampled_from([w for w in WRONG_TYPES if not (optional and w == "null")])
    if base is bool:
        return st.sampled_from(["1", "0", '"yes"', "[]", *(["null"] if not optional else [])])
    if base is int:
        return st.one_of(_outside(limit, True), wrong, st.sampled_from(["1.5", "NaN"]))
    if base is float:
        return st.one_of(_outside(limit, False), wrong.filter(lambda w: w != "true"),
                         st.sampled_from(["NaN", "Infinity", "-Infinity"]))
    if base is str:
        if limit.choices is not None:
            return st.one_of(TEXT.filter(lambda t: t.strip() and t not in limit.choices and not _parses(json.loads, t)),
                             st.sampled_from(['""', "true", "null", "[]"]))
        return st.sampled_from(["-5", "abc", "5x", "nan", "inf", "-1kimg", "1e999", '""', "true", "[]",
                                *(["null"] if not optional else [])])
    if typing.get_origin(base) is tuple:  # Adam's betas
        return st.sampled_from(["[1.5, 0.9]", "[0.9]", "[0.9, 0.99, 0.999]", "0.9", '"x"', '[0.9, "a"]',
                                "[-0.1, 0.9]", "[0.9, 1]", "[NaN, 0.9]"])
    raise AssertionError(f"no bad values for settings of type {hint}")


def bad_set_rows(family: str) -> dict:
    """Setting name -> `name=value` texts that `train FAMILY --set` must refuse, for every setting."""
    spec = registry.get(family)
    rows = {}
    for cls in (spec.model.config_class, spec.objective.config_class, TrainConfig):
        hints, limits = typing.get_type_hints(cls), limits_of(cls)
        for name, hint in hints.items():
            if name != "resolution" and (name in limits or hint is bool):
                rows[name] = bad_setting(hint, limits.get(name)).map(lambda v, n=name: f"{n}={v}")
    return rows


def bad_sets(family: str):
    """`key=value` that `train FAMILY --set` must refuse: any setting of the family, and bad keys."""
    bad_keys = st.sampled_from(["lrr=1", "resolution=32", "=3", "noequals", "", " =1"])
    return st.one_of(*bad_set_rows(family).values(), bad_keys)


BAD_RUN = st.sampled_from(["", At("missing"), At("empty"), At("text"), At("file.txt"), At("ds"), At("run-damaged")])
BAD_CHECKPOINT = st.sampled_from(["", "0", "7", "-1", "newest", "last,best", At("missing"), At("file.txt"), At("ds")])
SCALE_OPTIONS = {"--scale": bad_int(1, MAX_SCALE), "--resample": not_one_of("nearest", "bilinear", "lanczos")}
SAMPLE_OPTIONS = {
    "RUN": BAD_RUN, "--count": bad_int(1, MAX_COUNT), "--out": BAD_NEW_FOLDER, "--seed": bad_int(0, MAX_SEED),
    "--batch-size": bad_int(1, 65536), "--device": not_one_of("auto", "cpu", "cuda"), "--checkpoint": BAD_CHECKPOINT,
    **SCALE_OPTIONS,
}
TRUNCATION = bad_float(-10, 10)
BAD_LATENTS = st.sampled_from(["", At("missing"), At("file.txt"), At("latents-vae.npz"), At("bad-shape.npy"),
                               At("broken.zip"), At("ds")])
BAD_DIRECTIONS = st.sampled_from(["", At("missing"), At("file.txt"), At("dirs-vae.safetensors"), At("ds")])
BAD_EDIT = st.sampled_from(["", "nope=1", "sefa0=x", "sefa0=nan", "sefa0=1e9", "sefa0=1@9-12", "sefa0=1@bogus", "=1"])
BAD_SEED_LIST = st.sampled_from(["", "a", "1,,2", "-1", str(MAX_SEED + 1), "1.5", ",".join(["1"] * 65)])
# 65 keyframes are fine for an interpolation (it takes up to 1000); too many rows of a style mix
BAD_SEED_ROWS = st.sampled_from(["", "a", "1,,2", "-1", str(MAX_SEED + 1), "1.5", ",".join(["1"] * 1001), "1", "1,2;3",
                                 "1,2;", ";"])
BAD_LAYERS = st.sampled_from(["", "9-12", "3-1", "bogus", "-1", "1-", "a-b"])
BAD_MEDIA_OUT = st.sampled_from(["", At("ds"), At("file.txt/x.gif"), "x.jpg", "x"])
BAD_LABELS = st.sampled_from(["", At("missing"), At("file.txt"), At("labels-short.csv"), At("labels-one-class.csv"),
                              At("labels-bad-seed.csv"), At("ds")])
TRAIN_OPTIONS = {
    "MODEL": not_one_of(*registry.names()),
    "--data": st.sampled_from(["", At("missing"), At("empty"), At("file.txt"), At("junk-ds"), At("flat-ds"),
                               At("faces")]),
    "--out": st.sampled_from(["", At("file.txt"), At("text"), At("file.txt/deeper"), At("run-vae")]),
    "--preset": not_one_of("tiny", "paper64"),
    "--set": bad_sets("vae"),
    "--steps": bad_int(1, Target.LIMITS["steps"]),
    "--kimg": st.one_of(bad_float(0, Target.LIMITS["kimg"]), st.just("0")),
    "--minutes": st.one_of(bad_float(0, Target.LIMITS["minutes"]), st.just("0")),
    "--device": not_one_of("auto", "cpu", "cuda"),
    "--seed": bad_int(0, MAX_SEED),
    "--fid-every": st.sampled_from(["-5", "abc", "5x", "nan", "inf", "-1kimg", ""]),
    "--fid-num": bad_int(2, 10**6),
    "--fid-real": bad_int(4, 10**8),
    "--init-from": st.sampled_from(["", At("missing"), At("empty"), At("file.txt"), At("ds"), At("run-damaged")]),
}
# Per command: option (or positional argument, in capitals) -> values that command must refuse.
BAD = {
    "data prepare": {
        "SOURCES": BAD_SOURCE,
        "--out": BAD_NEW_FOLDER,
        "--resolution": bad_int(MIN_RESOLUTION, MAX_RESOLUTION),
        "--test-fraction": st.one_of(BAD_FRACTION, no_training_image_left(FACES).map(repr)),
        "--seed": bad_int(0, MAX_SEED),
        "--crop": not_one_of("center", "pad"),
        "--min-size": bad_int(1, MAX_MIN_SIZE),
        "--workers": bad_int(1, MAX_WORKERS),
    },
    "data synth": {
        "--out": BAD_NEW_FOLDER,
        "--count": bad_int(1, MAX_IMAGES),
        "--resolution": bad_int(MIN_SYNTH_RESOLUTION, MAX_RESOLUTION),
        "--seed": bad_int(0, MAX_SEED),
        "--test-fraction": st.one_of(BAD_FRACTION, no_training_image_left(SYNTH_COUNT).map(repr)),
    },
    "data info": {
        "DATASET": BAD_DATASET,
        "--grid": st.sampled_from(["", At("ds"), At("empty"), At("file.txt/grid.png")]),
    },
    "data export": {
        "DATASET": BAD_DATASET,
        "--split": not_one_of("train", "test"),
        "--out": BAD_NEW_FOLDER,
        "--count": bad_int(1, 10**8),
        "--indices": st.sampled_from(["", "a", "1,,2", "-1", "5-2", "99999", "1.5", "0-99999"]),
    },
    "data fid-stats": {
        "DATASET": BAD_DATASET,
        "--split": not_one_of("train", "test"),
        "--batch-size": bad_int(1, MAX_BATCH_SIZE),
        "--device": not_one_of("auto", "cpu", "cuda"),
    },
    "fid": {**METRIC_OPTIONS, "--metrics": BAD_METRICS},
    "kid": METRIC_OPTIONS,
    "train": TRAIN_OPTIONS,
    "train@resume": {**{k: v for k, v in TRAIN_OPTIONS.items() if k not in ("MODEL", "--out")},
                     "MODEL": st.sampled_from(["dcgan", "ddpm", "stylegan2"]),  # not the run's family
                     "--preset": st.sampled_from(["paper64"]),  # not the run's preset
                     "--seed": st.sampled_from(["4", str(MAX_SEED)]),  # not the run's seed
                     "--data": st.sampled_from([At("ds-other")]),  # not the run's dataset
                     "--set": st.sampled_from(["batch=16", "keep=9", "lr=0.5", "channels=16"])},  # not the run's
    "sample@stylegan2": {**SAMPLE_OPTIONS, "--truncation": TRUNCATION, "--noise-mode": not_one_of("random", "const", "none"),
                         "--mix-seed": bad_int(0, MAX_SEED), "--mix-layer": bad_int(0, 5),
                         "--sampler": st.sampled_from(["ddim"]), "--rotate": st.sampled_from(["1"])},
    "sample@stylegan3": {**SAMPLE_OPTIONS, "--truncation": TRUNCATION, "--rotate": bad_float(-3600, 3600),
                         "--translate": st.sampled_from(["", "1", "1,2,3", "a,b", "nan,0", "0,inf", "11,0", "0,-11"]),
                         "--mix-seed": st.sampled_from(["1"])},
    "sample@ddpm": {**SAMPLE_OPTIONS, "--sampler": not_one_of("ddpm", "ddim", "dpm-solver++"),
                    "--steps": bad_int(1, 50), "--eta": bad_float(0, 1), "--truncation": st.sampled_from(["0.5"])},
    "eval": {"RUN": BAD_RUN, "--metrics": st.one_of(BAD_METRICS, st.sampled_from(["eqt", "fid,eqr", "eqt_frac"])),
             "--num": bad_int(1, MAX_COUNT), "--split": not_one_of("train", "test"),
             "--data": st.sampled_from(["", At("missing"), At("file.txt"), At("junk-ds"), At("ds-other")]),
             "--batch-size": bad_int(1, 65536), "--checkpoint": BAD_CHECKPOINT,
             "--device": not_one_of("auto", "cpu", "cuda"),
             # the run has no post-hoc EMA profiles, so even a good length is refused
             "--ema-length": st.sampled_from(["", "0.5", "nan", "x", "0.1,", "0.005", "0.1", "0.05,0.1"])},
    "ema": {"RUN": st.one_of(BAD_RUN, st.just(At("run-vae"))),
            "--length": st.one_of(bad_float(SIGMA_REL_MIN, SIGMA_REL_MAX),
                                  st.sampled_from(["0", "1e-300", "0.005", "0.29"])),
            "--out": BAD_NEW_FOLDER},
    "runs info": {"RUN": st.sampled_from(["", At("missing"), At("empty"), At("text"), At("file.txt"), At("ds")])},
    "sample@steering": {"--w": BAD_LATENTS, "--z": st.sampled_from([At("latents-vae.npz"), At("file.txt")]),
                        "--directions": BAD_DIRECTIONS, "--edit": BAD_EDIT,
                        "--strengths": st.sampled_from(["", "a", "1,,x", "nan", "101", ",".join(["1"] * 33)]),
                        "--plane": st.sampled_from(["-1 0", "0 nan", "1e7 0", "a b"]),
                        "--truncation": st.sampled_from(["0.5"]), "--count": st.sampled_from(["7"])},
    "interpolate": {"RUN": BAD_RUN, "--seeds": BAD_SEED_ROWS, "--frames": bad_int(1, 1000),
                    "--out": BAD_MEDIA_OUT, "--fps": st.one_of(bad_float(0, 120), st.just("0")),
                    "--space": not_one_of("z", "w"), "--edit": BAD_EDIT, "--directions": BAD_DIRECTIONS,
                    **SCALE_OPTIONS},
    "style-mix": {"RUN": st.one_of(BAD_RUN, st.just(At("run-vae"))), "--rows": BAD_SEED_LIST, "--cols": BAD_SEED_LIST,
                  "--layers": BAD_LAYERS, "--out": st.sampled_from(["", At("ds"), At("file.txt/x.png"), "x.gif"]),
                  **SCALE_OPTIONS},
    "directions sefa": {"RUN": st.one_of(BAD_RUN, st.just(At("run-ddpm"))), "--num": bad_int(1, 64),
                        "--layers": BAD_LAYERS, "--samples": bad_int(2, 10**8),
                        "--out": st.sampled_from(["", At("ds"), At("file.txt"), At("file.txt/x.safetensors")])},
    "project": {"RUN": BAD_RUN, "IMAGES": BAD_SOURCE, "--out": BAD_NEW_FOLDER, "--space": not_one_of("w", "w+", "z"),
                "--loss": st.sampled_from(["", "vgg", "pixel+", "-1*pixel", "nan*pixel", "2*", "pixel+pixel+x"]),
                "--steps": bad_int(0, 100_000), "--seed": bad_int(0, MAX_SEED)},
    "project@vae": {"--space": st.sampled_from(["w", "w+"]),
                    "--loss": st.sampled_from(["discriminator"])},
    "directions fit": {"--labels": BAD_LABELS, "--name": st.sampled_from(["", "../x", "a b", "x" * 65]),
                       "--layers": BAD_LAYERS},
}
# Valid arguments of each command (True: a flag); every case replaces some of them.
STEERING = {"RUN": At("run-stylegan2"), "--out": At("new"), "--device": "cpu"}
BASE = {
    "data prepare": {"SOURCES": At("faces"), "--out": At("new"), "--resolution": "16", "--workers": "1"},
    "data synth": {"--out": At("new"), "--count": str(SYNTH_COUNT), "--resolution": str(MIN_SYNTH_RESOLUTION)},
    "data info": {"DATASET": At("ds"), "--grid": At("new.png")},
    "data export": {"DATASET": At("ds"), "--out": At("new")},
    "data fid-stats": {"DATASET": At("ds"), "--device": "cpu"},
    "fid": {"A": At("ds"), "B": At("faces"), "--device": "cpu", "--json": True},
    "kid": {"A": At("ds"), "B": At("faces"), "--device": "cpu", "--json": True},
    "train": {"MODEL": "vae", "--data": At("ds"), "--out": At("new"), "--steps": "1", "--device": "cpu",
              "--set": "grid_seeds=4"},
    "train@resume": {"--out": At("run-vae"), "--resume": True, "--steps": "2", "--device": "cpu"},
    "sample@stylegan2": {"RUN": At("run-stylegan2"), "--count": "2", "--out": At("new"), "--device": "cpu"},
    "sample@stylegan3": {"RUN": At("run-stylegan3-t"), "--count": "2", "--out": At("new"), "--device": "cpu"},
    "sample@ddpm": {"RUN": At("run-ddpm"), "--count": "2", "--out": At("new"), "--device": "cpu",
                    "--sampler": "ddim", "--steps": "2"},
    "eval": {"RUN": At("run-vae"), "--num": "2", "--device": "cpu", "--json": True, "--no-record": True},
    "runs info": {"RUN": At("run-vae")},
    "ema": {"RUN": At("run-posthoc"), "--length": "0.1", "--out": At("new")},
    "sample@steering": {**STEERING, "--w": At("latents-stylegan2.npz"), "--directions": At("dirs.safetensors"),
                        "--edit": "sefa0=1"},
    "interpolate": {**STEERING, "--seeds": "1,2", "--frames": "2", "--out": At("new.gif")},
    "style-mix": {**STEERING, "--rows": "1,2", "--cols": "3", "--out": At("new.png")},
    "project": {**STEERING, "IMAGES": At("faces/0.png"), "--steps": "1"},
    "project@vae": {**STEERING, "RUN": At("run-vae"), "IMAGES": At("faces/0.png"), "--steps": "1"},
    "directions sefa": {"RUN": At("run-stylegan2"), "--out": At("new.safetensors"), "--num": "2", "--samples": "100",
                        "--device": "cpu"},
    "directions fit": {"RUN": At("run-stylegan2"), "--labels": At("labels.csv"), "--name": "x",
                       "--out": At("new.safetensors"), "--device": "cpu"},
}
# Fewer than EXAMPLES where hypothesis runs out of distinct cases.
FEWER_DISTINCT_CASES = {"runs info": 6, "project@vae": 3}
FEWER_EXAMPLES = {"sample@steering": 60, "interpolate": 60, "style-mix": 60, "directions sefa": 60, "directions fit": 60,
                  "project": 60, "project@vae": 4, "ema": 60}
RUN_FAMILIES = ("vae", "stylegan2", "stylegan3-t", "ddpm")
SMALL_RUN = {"batch": 4, "sample_every": "0", "tensorboard": False, "grid_seeds": 4}
SMALLER = {"ddpm": {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                    "time_embed_dim": 16, "timesteps": 50}}
_trained: dict = {}


# ---------------------------------------------------------------- fixtures and helpers
def make_fixtures(root):
    """The paths that At names: a synthesized dataset, a few PNGs, and things that are no input."""
    root.mkdir(exist_ok=True)
    synthesize_dataset(root / "ds", count=40, resolution=16, seed=0)
    synthesize_dataset(root / "ds-no-test", count=10, resolution=16, seed=0, test_fraction=0)
    (root / "faces").mkdir()
    for i, image in enumerate(load_split(root / "ds", "train")[:FACES]):
        Image.fromarray(np.asarray(image)).save(root / "faces" / f"{i}.png")
    (root / "empty").mkdir()
    (root / "text").mkdir()
    (root / "text" / "notes.txt").write_text("no images here")
    (root / "file.txt").write_text("a plain file")
    (root / "broken.zip").write_bytes(b"PK not really a zip")
    (root / "junk-ds").mkdir()
    (root / "junk-ds" / "manifest.json").write_text("{not json")
    (root / "junk-ds" / "train.npy").write_bytes(b"not numpy")
    (root / "flat-ds").mkdir()
    (root / "flat-ds" / "manifest.json").write_text(json.dumps({"content_hash": "0" * 64}))
    for split in ("train", "test"):
        np.save(root / "flat-ds" / f"{split}.npy", np.zeros(3, np.uint8))
    (root / "cache").mkdir()
    synthesize_dataset(root / "ds-other", count=40, resolution=16, seed=1)
    for family in RUN_FAMILIES:  # trained once per session, copied into every fixture folder
        if family not in _trained:
            _trained[family] = root.parent / f"trained-{family}"
            train(str(_trained[family]), model=family, data=str(root / "ds"), sets={**SMALL_RUN, **SMALLER.get(family, {})},
                  target=Target(steps=1), device="cpu", echo=lambda _: None)
        shutil.copytree(_trained[family], root / f"run-{family}")
    if "posthoc" not in _trained:  # one step: a single post-hoc snapshot, at the end of training
        _trained["posthoc"] = root.parent / "trained-posthoc"
        train(str(_trained["posthoc"]), model="vae", data=str(root / "ds"),
              sets={**SMALL_RUN, "posthoc_ema": [0.05, 0.1]}, target=Target(steps=1), device="cpu", echo=lambda _: None)
    shutil.copytree(_trained["posthoc"], root / "run-posthoc")
    shutil.copytree(root / "run-vae", root / "run-damaged")
    make_steering_fixtures(root)
    (root / "run-damaged" / "checkpoints" / "step-00000001" / "state.json").write_text("{")
    return root


def make_steering_fixtures(root):
    """Latent files, directions files and label CSVs, good and bad."""
    for family in ("stylegan2", "vae"):
        model, _ = load_generator(root / f"run-{family}")
        drawn = []
        list(sample_batches(model, [0, 1], 2, drawn=drawn))
        save_latents(root / f"latents-{family}.npz", drawn[0], [0, 1], model, {})
        save_directions(root / ("dirs.safetensors" if family == "stylegan2" else "dirs-vae.safetensors"), model,
                        sefa(model, num=2, **({"samples": 100} if family == "stylegan2" else {})))
    np.save(root / "bad-shape.npy", np.zeros((2, 3), np.float32))
    rows = lambda labels: "seed,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels))  # noqa: E731
    (root / "labels.csv").write_text(rows([0, 1] * 10))
    (root / "labels-short.csv").write_text(rows([0, 1, 0]))
    (root / "labels-one-class.csv").write_text(rows([1] * 12))
    (root / "labels-bad-seed.csv").write_text(rows([0, 1] * 10).replace("\n3,", "\n-3,"))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fuzz"))


def argv(command: str, args: dict, root) -> list[str]:
    """The command line: options first, then "--" so that positional values may start with "-"."""
    resolve = lambda v: str(root / v) if isinstance(v, At) else v  # noqa: E731
    options, positional = [], []
    for name, value in args.items():
        if not name.startswith("--"):
            positional.append(resolve(value))
        else:
            options += [name] if value is True else [name, resolve(value)]
    return [*command.split("@")[0].split(), *options, "--", *positional]


def run(command: str, args: dict, root):
    runner = CliRunner(env={"ANIMEGEN_CACHE": str(root / "cache"), "COLUMNS": "80"})
    return runner.invoke(main, argv(command, args, root))


def tree(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@contextlib.contextmanager
def restored(root):
    """Yields the tree of `root`; afterwards removes what the block added, so that one broken
    case cannot change what the next ones see (and a failure replays the same)."""
    before = tree(root)
    try:
        yield before
    finally:
        for added in sorted(set(tree(root)) - set(before), reverse=True):
            path = root / added
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def assert_clean_failure(result, root, before: list[str]):
    """Exit code 2 by UserError or usage error, one line "error: ..." and nothing written."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, (result.exception, result.output)
    assert "Traceback" not in result.output and result.stdout == "", result.output
    shown = result.stderr.split("\r")[-1]  # what a terminal shows once a progress bar is cleared
    assert shown.startswith("error: ") and shown.endswith("\n") and shown.count("\n") == 1, result.stderr
    assert shown[len("error: "):].strip(), result.stderr
    assert tree(root) == before, "a failed command created files"


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("command", BAD)
def test_base_arguments_are_valid(command, tmp_path):
    """Each case below differs from these in its bad values only, so those are what it refuses."""
    root = make_fixtures(tmp_path)
    if command in ("fid", "kid", "data fid-stats"):  # valid up to the network, which comes after every check
        # (test_metrics and test_snapshots run it)
        result = run(command, {**BASE[command], "--inception": At("missing")}, root)
        assert result.exit_code == 2 and "Inception weights" in result.stderr, result.output
    else:
        result = run(command, BASE[command], root)
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", BAD)
def test_bad_values_fail_cleanly(command, fixtures):
    table, tried = BAD[command], []
    cases = st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: table[name] for name in names}))

    @settings(max_examples=FEWER_EXAMPLES.get(command, EXAMPLES), deadline=None, database=None)
    @given(bad=cases)
    def check(bad):
        with restored(fixtures) as before:
            result = run(command, {**BASE[command], **bad}, fixtures)
            assert_clean_failure(result, fixtures, before)
        tried.append(bad)

    check()
    print(f"{command}: {len(tried)} cases")
    assert len(tried) >= FEWER_DISTINCT_CASES.get(command, min(50, FEWER_EXAMPLES.get(command, 50)))


@pytest.mark.parametrize("family", registry.names())
def test_every_setting_of_every_family_refuses_its_bad_values(family, fixtures):
    """Each `--set` key gets its own cases (the mixed fuzz above reaches each only now and then)."""
    tried = []
    for name, values in bad_set_rows(family).items():
        @settings(max_examples=6, deadline=None, database=None)
        @given(bad=values)
        def check(bad):
            args = {**BASE["train"], "MODEL": family, "--set": bad}
            with restored(fixtures) as before:
                assert_clean_failure(run("train", args, fixtures), fixtures, before)
            tried.append(bad)

        check()
    print(f"train {family} --set: {len(tried)} cases over {len(bad_set_rows(family))} settings")


@pytest.mark.parametrize("setting, message", [
    ("keep=0", "setting keep=0 is out of range: it must be in [1, 10000]."),
    ("batch=0", "setting batch=0 is out of range"),
    ("batch=-4", "setting batch=-4 is out of range"),
    ("batch=10000000000000000000000", "is out of range"),
    ("r1_gamma=abc", "setting r1_gamma='abc' should be a number or null."),
    ("lr=-1", "setting lr=-1 is out of range: it must be in [0, 10]."),
    ("lr=NaN", "setting lr=nan is out of range: it must be a finite number"),
    ("ema_rampup=fast", "setting ema_rampup='fast' should be a number or null."),
    ("fid_num=3", "setting fid_num=3 is out of range: it must be in [4, 1e+06]."),
    ("ckpt_every=-5", "setting ckpt_every=-5 is not accepted"),
    ("betas=[0.9, 1]", "setting betas=[0.9, 1] is out of range: it must be in [0, 1)."),
    ("channels=0", "setting channels=0 is out of range"),
    ("resolution=32", "the resolution comes from the dataset"),
])
def test_train_regressions(setting, message, fixtures):
    family = "stylegan2" if setting.startswith("r1_gamma") else "vae"
    with restored(fixtures) as before:
        result = run("train", {**BASE["train"], "MODEL": family, "--set": setting}, fixtures)
        assert_clean_failure(result, fixtures, before)
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("command, args, message", [
    ("data prepare", {"--resolution": "3"}, f"--resolution must be an integer from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got 3."),
    ("data prepare", {"--resolution": "100000"}, f"to {MAX_RESOLUTION}, got 100000."),
    ("data prepare", {"--test-fraction": "1"}, "--test-fraction must be a number from 0 up to (not including) 1, got 1.0."),
    ("data prepare", {"--test-fraction": "0.9"}, f"--test-fraction 0.9 leaves no training image out of {FACES}"),
    ("data prepare", {"--workers": "0"}, f"--workers must be an integer from 1 to {MAX_WORKERS}, got 0."),
    ("data prepare", {"--out": At("file.txt/deeper")}, "file.txt is a file, not a folder."),
    ("data synth", {"--count": "-5"}, f"--count must be an integer from 1 to {MAX_IMAGES}, got -5."),
    ("data synth", {"--count": str(10**12)}, f"--count must be an integer from 1 to {MAX_IMAGES}"),
    ("data synth", {"--count": str(MAX_IMAGES), "--resolution": str(MAX_RESOLUTION)}, "GiB, over the limit"),
    ("data synth", {"--count": "abc"}, "Invalid value for '--count': 'abc' is not a valid integer."),
    ("data synth", {"--seed": "-1"}, f"--seed must be an integer from 0 to {MAX_SEED}, got -1."),
    ("data synth", {"--out": ""}, "Invalid value for '--out': an empty string is not a path."),
    ("data info", {"DATASET": At("junk-ds")}, "is a damaged dataset (manifest.json:"),
    ("data info", {"--grid": At("empty")}, "is a folder; give the path of a file."),
    ("data export", {"DATASET": At("flat-ds")}, "test.npy is not a uint8 N x R x R x 3 array"),
    ("fid", {"--batch-size": "0"}, f"--batch-size must be an integer from 1 to {MAX_BATCH_SIZE}, got 0."),
    ("fid", {"--metrics": "fid,isc"}, "unknown metric(s) isc"),
    ("kid", {"--num": "0"}, f"--num must be an integer from 1 to {MAX_IMAGES}, got 0."),
    ("kid", {"A": At("ds-no-test")}, "the test split of"),
])
def test_regressions(command, args, message, fixtures):
    with restored(fixtures) as before:
        result = run(command, {**BASE[command], **args}, fixtures)
        assert_clean_failure(result, fixtures, before)
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("args", [["data", "synth"], ["data", "synth", "--bogus"], ["--bogus"], ["no-such-command"]])
def test_usage_errors_are_one_line_too(args, fixtures):
    with restored(fixtures) as before:
        result = CliRunner().invoke(main, args)
        assert_clean_failure(result, fixtures, before)
    assert "--help" in result.stderr


def test_help_is_still_help():
    assert "Usage:" in CliRunner().invoke(main, ["data"]).output  # a group alone shows its help
    result = CliRunner().invoke(main, ["data", "synth", "--help"])
    assert result.exit_code == 0 and "--count" in result.stdout
