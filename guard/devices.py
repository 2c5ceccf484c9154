"""Where torch models run: one rule for the local engine, the trainers and the evaluation."""

from __future__ import annotations

import torch

from guard.errors import ConfigError


def resolve_device(device: str, *, param: str = "device", label: str | None = None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` are
    checked and kept. Errors carry ``param`` and say ``label`` (default: ``param``), e.g. the config
    field ``local.device`` or the flag ``--device``."""
    label = label or param
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"{label} must be auto, cpu, cuda or cuda:N, got {device!r}", param=param)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{label} is {device!r} but no CUDA GPU is visible; use auto or cpu", param=param)
    return device
