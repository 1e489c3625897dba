"""Does a direction fitted to labelled seeds move hair colour? (`animegen directions fit`)

On a run trained on the procedural faces (animegen data synth), each generated image's hair
"warmth" is measured by a pixel rule: the median over a patch of the top rows (rows 3/32 to
8/32, columns 10/32 to 22/32 of the image: the crown, above the forehead in every face) of
red minus blue, in [-255, 255]. Warm hair (R > B in synth.HAIR_COLORS: brown, blonde, orange,
red, pink, green) is above 0, the rest below. The rule is first checked against the dataset's
own hair-colour labels. Then:

1. seeds 0..FIT-1 are labelled warm (1) / cool (0) by the rule and written as a seed,label CSV;
2. a direction is fitted from it (latent.discover.fit_from_labels: logistic regression on z or W);
3. TEST new seeds are rendered at strengths -3..3 and their warmth measured: the table shows
   the mean per strength, the share of warm hair, and the share of seeds whose warmth rises
   monotonically with the strength; a random direction with the same scale is the baseline.

    python benchmarks/hair_direction.py RUN DATASET --work DIR [--grid strip.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from animegen.data.store import load_split, read_manifest
from animegen.data.synth import HAIR_COLORS
from animegen.generate import load_generator, sample_batches
from animegen.io import save_grid, to_uint8
from animegen.latent.directions import Direction, save_directions
from animegen.latent.discover import fit_from_labels

STRENGTHS = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
TOLERANCE = 15  # R-B units: orange hair (R-B ~ 190) turning blonde (~ 110) is warm hair getting "cooler" by this rule


def warmth(images: np.ndarray) -> np.ndarray:
    """Median red minus blue of the hair patch of uint8 N x R x R x 3 images."""
    r = images.shape[1]
    patch = images[:, 3 * r // 32 : 8 * r // 32, 10 * r // 32 : 22 * r // 32].astype(np.float64)
    return np.median((patch[..., 0] - patch[..., 2]).reshape(len(images), -1), axis=1)


def check_rule(dataset: str) -> float:
    """Share of the test split whose rule verdict (warm: > 0) matches its labelled hair colour."""
    images = load_split(dataset, "test")
    names = [label["hair_color"] for label in read_manifest(dataset)["labels"]["test"]]
    warm = np.array([HAIR_COLORS[n][0] > HAIR_COLORS[n][2] for n in names])
    return float(((warmth(np.asarray(images)) > 0) == warm).mean())


def render(model, seeds, edits, options):
    return np.concatenate([to_uint8(x) for x in sample_batches(model, seeds, 64, options, edits=edits)])


def strip_stats(model, direction: Direction, seeds, options) -> tuple[np.ndarray, list[np.ndarray]]:
    """Warmth (seeds x strengths) along `direction`, and the images per strength."""
    images = [render(model, seeds, [(direction, s)], options) for s in STRENGTHS]
    return np.stack([warmth(x) for x in images], axis=1), images


def summarize(name: str, values: np.ndarray) -> None:
    steps = np.diff(values, axis=1)
    rho = np.mean([spearmanr(STRENGTHS, v)[0] if np.ptp(v) > 0 else 0.0 for v in values])
    print(f"\n{name}: share of seeds whose warmth is non-decreasing in the strength: {np.mean((steps >= 0).all(1)):.2f}; "
          f"with no drop over {TOLERANCE}: {np.mean((steps >= -TOLERANCE).all(1)):.2f}; largest drop {-steps.min():.1f}; "
          f"mean rise -3 to +3 {np.mean(values[:, -1] - values[:, 0]):.1f}; mean Spearman rho {rho:.3f}")
    print(f"{'strength':>9} {'mean R-B':>9} {'sd':>7} {'warm share':>11}")
    for k, s in enumerate(STRENGTHS):
        print(f"{s:>9g} {values[:, k].mean():>9.1f} {values[:, k].std():>7.1f} {(values[:, k] > 0).mean():>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("dataset", help="the run's synth dataset (to check the pixel rule against its labels)")
    parser.add_argument("--work", required=True, help="folder for the labels CSV and the directions file")
    parser.add_argument("--fit-seeds", type=int, default=2000)
    parser.add_argument("--test-seeds", type=int, default=50)
    parser.add_argument("--test-start", type=int, default=1_000_000, help="first test seed (unseen by the fit)")
    parser.add_argument("--grid", default=None, help="write an edit strip grid PNG (8 seeds x 7 strengths)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.process_time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"pixel rule vs the dataset's hair-colour labels (test split): {check_rule(args.dataset):.3f} agree")

    model, state = load_generator(args.run, "cpu")
    options = model.resolve_sample_options({})
    fit_seeds = range(args.fit_seeds)
    labels = (warmth(render(model, fit_seeds, [], options)) > 0).astype(int)
    csv = work / "hair_labels.csv"
    csv.write_text("seed,label\n" + "".join(f"{s},{y}\n" for s, y in zip(fit_seeds, labels)))
    direction = fit_from_labels(model, csv, "warm_hair")
    save_directions(work / "hair.safetensors", model, [direction])
    print(f"{state['checkpoint']} (step {state['step']}): {args.fit_seeds} seeds, warm share {labels.mean():.2f}; "
          f"fit: {direction.details}, scale {direction.scale:.3f}")

    seeds = range(args.test_start, args.test_start + args.test_seeds)
    values, images = strip_stats(model, direction, seeds, options)
    summarize(f"fitted direction, {args.test_seeds} new seeds", values)
    vector = torch.randn(direction.vector.shape, generator=torch.Generator().manual_seed(0))
    baseline = Direction("random", vector / vector.norm(), "random", direction.layers, direction.scale, {})
    summarize("baseline: a random direction of the same scale", strip_stats(model, baseline, seeds, options)[0])
    if args.grid:
        rows = np.stack([x[:8] for x in images], axis=1)  # seed-major: a row per seed, a column per strength
        save_grid(rows.reshape(-1, *rows.shape[2:]), args.grid, columns=len(STRENGTHS))
        print(f"\ngrid: {args.grid} (rows: seeds {seeds[0]}..{seeds[7]}; columns: strengths {STRENGTHS})")
    print(f"CPU time {time.process_time() - start:.1f} s")


if __name__ == "__main__":
    main()
