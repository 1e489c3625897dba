"""The comparison's figures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless server has no display
import matplotlib.pyplot as plt

from animegen.io import atomic_write_bytes


def fid_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """FID against training minutes (left) and against kimg (right), a line per family."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for family, points in curves.items():
        if points:
            for ax, key in zip(axes, ("minutes", "kimg")):
                ax.plot([p[key] for p in points], [p["fid"] for p in points], marker="o", label=family)
    counts = sorted({p["num"] for points in curves.values() for p in points})
    label = f"FID-{'/'.join(map(str, counts))}" if counts else "FID"
    for ax, xlabel in zip(axes, ("training minutes", "kimg (thousands of real images shown)")):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label)
    if counts:
        axes[0].set_yscale("log")
        axes[1].legend()
    else:
        axes[0].text(0.5, 0.5, "no FID snapshots recorded\n(train with --fid-every)", ha="center", va="center",
                     transform=axes[0].transAxes)
    figure.suptitle(f"{label} of the EMA weights during training")
    _save(figure, path)


def nfe_plot(sweep: list[dict], path: Path) -> None:
    """A DDPM's FID against network evaluations, a line per sampler."""
    figure, ax = plt.subplots(figsize=(6, 4.2))
    for sampler, style in zip(dict.fromkeys(p["sampler"] for p in sweep), ("-o", "--s", ":^")):
        points = [p for p in sweep if p["sampler"] == sampler]
        ax.plot([p["nfe"] for p in points], [p["fid"] for p in points], style, label=sampler)  # styles: overlaps show
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel(f"FID-{sweep[0]['num']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("DDPM: FID against sampling steps")
    _save(figure, path)


def ema_plot(sweeps: dict[str, list[dict]], path: Path) -> None:
    """FID against post-hoc EMA length, a line per family."""
    figure, ax = plt.subplots(figsize=(6, 4.2))
    for family, points in sweeps.items():
        ax.plot([p["ema_length"] for p in points], [p["fid"] for p in points], marker="o", label=family)
    ax.set_xlabel("EMA length (sigma_rel: the averaging profile's width, a fraction of training)")
    ax.set_ylabel(f"FID-{next(iter(sweeps.values()))[0]['num']}")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("FID against post-hoc EMA length")
    _save(figure, path)


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
