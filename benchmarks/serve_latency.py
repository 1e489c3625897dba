"""Latency of one image from `animegen serve`, per family: what dragging a slider costs.

    python benchmarks/serve_latency.py                     # tiny presets at 32 px, CPU, 1 thread
    python benchmarks/serve_latency.py --resolution 64 --threads 2

Each family is trained for one step on procedural faces (latency does not depend on the
weights), served on 127.0.0.1, and asked for one image `--requests` times with a new seed
each time. Prints a Markdown table: the median and 90th percentile of the whole HTTP round
trip (JSON, PNG, base64) and of the rendering alone (Studio.generate, in process).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from click.testing import CliRunner

from animegen.cli import main as cli
from animegen.data.synth import synthesize_dataset
from animegen.models import registry
from animegen.web.app import BackgroundServer, create_app
from animegen.web.studio import Studio


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def milliseconds(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.0f} / {1000 * percentile(values, 0.9):.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--models", default=",".join(registry.names()))
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    data = root / "faces"
    synthesize_dataset(data, count=64, resolution=args.resolution, seed=0, test_fraction=0.25)
    print(f"| family | one {args.resolution} px image, HTTP round trip (median / p90) | rendering alone (median / p90) |")
    print("|---|---|---|")
    for family in args.models.split(","):
        run = root / family
        result = CliRunner().invoke(cli, ["train", family, "--data", str(data), "--out", str(run), "--preset", "tiny",
                                          "--steps", "1", "--device", "cpu"])
        if result.exit_code:
            raise SystemExit(result.output)
        studio = Studio([str(run)], work=root / "studio")
        alone = []
        for seed in range(args.requests):
            start = time.perf_counter()
            studio.generate({"run": 0, "seed": seed, "count": 1})
            alone.append(time.perf_counter() - start)
        trips = []
        with BackgroundServer(create_app(studio)) as url, httpx.Client() as client:
            for seed in range(args.requests):
                start = time.perf_counter()
                client.post(f"{url}/api/generate", json={"run": 0, "seed": 1000 + seed, "count": 1}).raise_for_status()
                trips.append(time.perf_counter() - start)
        print(f"| {family} | {milliseconds(trips)} | {milliseconds(alone)} |")


if __name__ == "__main__":
    main()
