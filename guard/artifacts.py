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
import threading
from pathlib import Path
from typing import Any

import torch

from guard.errors import ConfigError

_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}
_LOCK = threading.Lock()


def embedding_sha256(matrix: torch.Tensor) -> str:
    """SHA-256 of an embedding matrix as contiguous float32 bytes."""
    data = matrix.detach().to(torch.float32).contiguous().cpu()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def _model_dir_of(source: Any) -> Path | None:
    path = getattr(source, "model_path", source)
    if isinstance(path, (str, Path)) and Path(str(path)).expanduser().is_dir():
        return Path(str(path)).expanduser().resolve()
    return None


def _name_of(source: Any, model_dir: Path | None) -> str:
    if model_dir is not None:
        return model_dir.name
    name = getattr(source, "served_model_name", None) or getattr(getattr(source, "config", None), "_name_or_path", None)
    return str(name or type(source).__name__)


def _folder_key(model_dir: Path) -> tuple[Any, ...]:
    files = sorted(model_dir.glob("*.safetensors"))
    return (str(model_dir),) + tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


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

    ``source`` is a model folder, an engine (its ``model_path`` folder is read, so this works before
    the engine has started), or a loaded transformers model (``get_input_embeddings()``). Results
    for folders are cached per process (keyed by the safetensors files' sizes and mtimes).
    """
    model_dir = _model_dir_of(source)
    if model_dir is not None:
        key = _folder_key(model_dir)
        with _LOCK:
            cached = _CACHE.get(key)
        if cached is not None:
            return dict(cached)
        from guard.engines.vllm import load_input_embeddings

        ident = _identity(model_dir.name, str(model_dir), load_input_embeddings(model_dir))
        with _LOCK:
            _CACHE[key] = ident
        return dict(ident)
    get = getattr(source, "get_input_embeddings", None)
    if get is None and getattr(source, "model", None) is not None:  # a started LocalEngine without a folder
        get = source.model.get_input_embeddings
    if get is None:
        raise ConfigError(f"cannot tell which base model {source!r} is: give a model folder, an engine or a model", param="model")
    return _identity(_name_of(source, None), None, get().weight)


def check_identity(manifest: dict[str, Any], engine: Any, *, artifact: str | Path = "the artifact",
                   retrain: str = "guard-train", param: str | None = None) -> dict[str, Any]:
    """Refuse an artifact trained for another base model than the one ``engine`` serves.

    ``manifest`` is the artifact's manifest (with a ``base_model`` entry) or that entry itself.
    ``retrain`` is the command to suggest (e.g. ``"guard-train spul --policy P --out DIR"``).
    Returns the served model's identity.
    """
    expected = manifest.get("base_model", manifest)
    if not isinstance(expected, dict) or not expected.get("embedding_sha256"):
        raise ConfigError(f"{artifact} has no base-model identity in its manifest (base_model.embedding_sha256); "
                          f"it was not written by this version: retrain it with `{retrain}`", param=param)
    served = model_identity(engine)
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
