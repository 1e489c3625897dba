"""Which torch device a command runs on."""

from __future__ import annotations

import torch

from animegen.errors import UserError

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str | torch.device, index: int = 0) -> torch.device:
    """"auto" (CUDA when there is a GPU), "cpu" or "cuda" -> a device; `index` is the GPU of
    this process (its local rank)."""
    if isinstance(choice, torch.device):
        return choice
    if choice not in CHOICES:
        raise UserError(f"unknown device {choice!r}; choose auto, cpu or cuda.")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available.")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)
