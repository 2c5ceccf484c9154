"""Shared helpers for trained artifacts: base-model identity and manifests.

Every artifact that only makes sense on one base model (soft prompts, embedding corruptions
calibrated on one model, assistant models) records that model's identity in its manifest:

```json
"base_model": {"name": "smollm2-135m-instruct", "path": "...", "embedding_sha256": "…",
               "embedding_shape": [49152, 576], "hidden_size": 576, "vocab_size": 49152}
```

``embedding_sha256`` is the SHA-256 of the input-embedding matrix as contiguous little-endian
float32 bytes: the same value whether it is read from the model folder's safetensors (without
loading the model, as the vLLM engine does) or from a model loaded in memory. ``check_identity``
compares it with the served model and refuses a mismatch with a message naming both models and the
command that retrains the artifact.

``read_manifest`` loads an artifact's manifest JSON and checks its ``kind``, with errors that name
the policy field that pointed at it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from guard.engines.weights import load_input_embeddings
from guard.errors import ConfigError


def embedding_sha256(matrix: torch.Tensor) -> str:
    """SHA-256 of an embedding matrix as contiguous float32 bytes."""
    data = matrix.detach().to(torch.float32).contiguous().cpu()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def _model_dir_of(source: Any) -> Path | None:
    if isinstance(source, (str, Path)) and Path(str(source)).expanduser().is_dir():
        return Path(str(source)).expanduser().resolve()
    return None


def _identity(name: str, path: str | None, matrix: torch.Tensor) -> dict[str, Any]:
    return {
        "name": name,
        "path": path,
        "embedding_sha256": embedding_sha256(matrix),
        "embedding_shape": [int(s) for s in matrix.shape],
        "vocab_size": int(matrix.shape[0]),
        "hidden_size": int(matrix.shape[1]),
    }


def model_identity(source: Any) -> dict[str, Any]:
    """Identity of a base model: ``{name, path, embedding_sha256, embedding_shape, vocab_size, hidden_size}``.

    ``source`` is a model folder (only its embedding tensor is read), an input-embedding matrix, or
    a loaded transformers model (``get_input_embeddings()``). Nothing is cached here: an engine keeps
    its own model's identity (``Engine.model_identity``).
    """
    model_dir = _model_dir_of(source)
    if model_dir is not None:
        return _identity(model_dir.name, str(model_dir), load_input_embeddings(model_dir))
    if isinstance(source, torch.Tensor):
        return _identity("in-memory model", None, source)
    get = getattr(source, "get_input_embeddings", None)
    if get is None:
        raise ConfigError(f"cannot tell which base model {source!r} is: give a model folder, an embedding matrix or a model",
                          param="model")
    name = getattr(getattr(source, "config", None), "_name_or_path", None)
    return _identity(str(name or type(source).__name__), None, get().weight)


def check_identity(manifest: dict[str, Any], served: Any, *, artifact: str | Path = "the artifact",
                   retrain: str = "guard-train", param: str | None = None) -> dict[str, Any]:
    """Refuse an artifact trained for another base model than ``served``: the served model's identity
    (``Engine.model_identity()``) or anything ``model_identity`` takes.

    ``manifest`` is the artifact's manifest (with a ``base_model`` entry) or that entry itself.
    ``retrain`` is the command to suggest (e.g. ``"guard-train spul --policy P --out DIR"``).
    Returns the served model's identity.
    """
    expected = manifest.get("base_model", manifest)
    if not isinstance(expected, dict) or not expected.get("embedding_sha256"):
        raise ConfigError(f"{artifact} has no base-model identity in its manifest (base_model.embedding_sha256); "
                          f"it was not written by this version: retrain it with `{retrain}`", param=param)
    served = served if isinstance(served, dict) else model_identity(served)
    if served["embedding_sha256"] != expected["embedding_sha256"]:
        raise ConfigError(
            f"{artifact} was trained for base model {expected.get('name')!r} "
            f"(embedding hash {str(expected['embedding_sha256'])[:12]}…, shape {expected.get('embedding_shape')}), "
            f"but the served model is {served['name']!r} (embedding hash {served['embedding_sha256'][:12]}…, "
            f"shape {served['embedding_shape']}); retrain it for the served model with `{retrain} --model {served['name']}`",
            param=param)
    return served


def read_manifest(directory: Path, *, kind: str, filename: str = "manifest.json", param: str | None = None,
                  retrain: str = "guard-train") -> dict[str, Any]:
    """The manifest of the artifact directory ``directory``, checked to be of ``kind``."""
    directory = Path(directory)
    if not directory.exists():
        raise ConfigError(f"artifact {directory} does not exist; create it with `{retrain}`", param=param)
    if not directory.is_dir():
        raise ConfigError(f"artifact {directory} is not a directory (expected what `{retrain}` writes)", param=param)
    path = directory / filename
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"artifact {directory} has no {filename}; it is incomplete or not an artifact: rerun `{retrain}`",
                          param=param) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", param=param) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        found = manifest.get("kind") if isinstance(manifest, dict) else None
        raise ConfigError(f"artifact {directory} is a {found!r} artifact, expected {kind!r} (written by `{retrain}`)",
                          param=param)
    return manifest
