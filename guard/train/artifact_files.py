"""What every ``guard-train`` artifact records about where it came from: the policy file (path and
hash), the time it was made, and the base model's identity (``guard.artifacts.model_identity``).
The artifacts themselves are directories written atomically (``guard.atomic.staged_dir``)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def policy_stamp(path: Path) -> dict[str, Any]:
    """``{"path", "sha256"}`` of the policy an artifact was trained from."""
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def loop_summary(result: dict[str, Any], best_val: float | None) -> dict[str, Any]:
    """The manifest's record of a training loop with held-out early stopping (SPUL, ULD)."""
    return {"initial_val": result["initial_val"], "best_val": best_val, "best_epoch": result["best_epoch"],
            "epochs_run": len(result["history"]), "stopped_early": result["stopped_early"],
            "steps_per_epoch": result["steps_per_epoch"]}
