"""The trained detector's data (``DetectorModel``: stages, heads, thresholds, index, negative bank) and
its artifact files: written by ``guard-train classifier``, read at start-up and on reload.

Apart from ``classifiers.detector`` (which screens with a model) because the files outlive any one
way of screening: training, live updates and evaluation read and write them too. Everything loads
with ``np.load(allow_pickle=False)``, JSON and FAISS's own reader; a missing, modified or inconsistent
file is a ``ConfigError`` on ``detector.artifact`` naming the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.classifier import Heads
from classifiers.embedder import StaticEmbedder
from classifiers.features import CharNgrams
from classifiers.index import ForgetIndex
from guard.errors import ConfigError

ARTIFACT_KIND = "forget-detector"
ARTIFACT_VERSION = 1
STAGES = ("static", "sentence")


@dataclass
class Stage:
    """One embedder with its heads and thresholds."""

    name: str
    heads: Heads
    tau: float                      # global threshold on max_t p_t (strict, target FPR)
    tau_target: np.ndarray          # [T] per-target strict thresholds
    tau_loose: float = 0.0          # cascade gate (static stage only)
    tau_loose_target: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # thresholds for long inputs (screened in windows: the max over many segments), calibrated on
    # long texts made of held-out negatives; None: the strict ones (artifacts from before they existed)
    tau_long: float | None = None
    tau_long_target: np.ndarray | None = None

    def long_thresholds(self) -> tuple[float, np.ndarray]:
        if self.tau_long is None or self.tau_long_target is None or len(self.tau_long_target) != len(self.tau_target):
            return self.tau, self.tau_target
        return self.tau_long, self.tau_long_target


@dataclass
class DetectorModel:
    target_ids: list[str]
    names: dict[str, list[str]]
    target_digests: dict[str, str]
    mode: str                                       # static | sentence | cascade
    stages: dict[str, Stage]
    index: ForgetIndex                              # over the vectors of ``index_stage``
    index_stage: str
    char: CharNgrams
    static: StaticEmbedder | None
    sentence_spec: str | None
    fpr: float
    loose_fpr: float
    window_words: int = 48
    max_windows: int = 256
    manifest: dict[str, Any] = field(default_factory=dict)
    # bank of negatives kept for incremental updates: texts, kind ('shared'|'hard'), owner, split (0 train, 1 cal)
    neg_texts: list[str] = field(default_factory=list)
    neg_owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    neg_split: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    neg_sentence: np.ndarray | None = None          # sentence vectors of neg_texts (if a sentence stage exists)
    neg_group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # calibration group per negative
    # distinctive facts per target ({"dates": [...], "titles": [...]}, ``classifiers.facts``); empty in old artifacts
    facts: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def n_targets(self) -> int:
        return len(self.target_ids)


def _digest_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(model: DetectorModel, directory: Path) -> None:
    """Write the artifact into ``directory`` (the caller stages it atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    if model.static is not None:
        files["static"] = model.static.save(directory)
    for name, st in model.stages.items():
        fname = f"heads_{name}.npz"
        np.savez(directory / fname, w_dense=st.heads.w_dense.astype(np.float32), w_sparse=st.heads.w_sparse.astype(np.float16),
                 w_name=st.heads.w_name, bias=st.heads.bias, platt=st.heads.platt,
                 tau_target=np.asarray(st.tau_target, np.float32), tau_loose_target=np.asarray(st.tau_loose_target, np.float32),
                 tau=np.float64(st.tau), tau_loose=np.float64(st.tau_loose),
                 **({} if st.tau_long is None or st.tau_long_target is None else
                    {"tau_long": np.float64(st.tau_long), "tau_long_target": np.asarray(st.tau_long_target, np.float32)}))
        files[f"heads_{name}"] = fname
    files["index"] = model.index.save(directory)
    with open(directory / "negatives.jsonl", "w", encoding="utf-8") as fh:
        for t in model.neg_texts:
            fh.write(json.dumps(t, ensure_ascii=False) + "\n")
    np.save(directory / "negatives_owner.npy", model.neg_owner.astype(np.int32))
    np.save(directory / "negatives_split.npy", model.neg_split.astype(np.int8))
    np.save(directory / "negatives_group.npy", model.neg_group.astype(np.int8))
    files["negatives"] = "negatives.jsonl"
    if model.neg_sentence is not None:
        np.save(directory / "negatives_sentence.npy", model.neg_sentence.astype(np.float16))
        files["negatives_sentence"] = "negatives_sentence.npy"
    manifest = dict(model.manifest)
    manifest.update({
        "kind": ARTIFACT_KIND, "version": ARTIFACT_VERSION, "mode": model.mode,
        "targets": [{"id": t, "names": model.names[t], "digest": model.target_digests.get(t, ""),
                     "facts": model.facts.get(t, {})} for t in model.target_ids],
        "embedder": {"sentence": model.sentence_spec, "static_key": model.static.key if model.static else None,
                     "index_stage": model.index_stage},
        "char_ngrams": model.char.params(), "target_fpr": model.fpr, "loose_fpr": model.loose_fpr,
        "neighbour_fpr": (model.manifest.get("config") or {}).get("neighbour_fpr"),
        "window_words": model.window_words, "max_windows": model.max_windows,
        "thresholds": {name: {"global": st.tau, "loose": st.tau_loose, "long": st.tau_long,
                              "per_target": {t: float(v) for t, v in zip(model.target_ids, st.tau_target)}}
                       for name, st in model.stages.items()},
        "files": files,
    })
    manifest["checksums"] = {p.name: _digest_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def read_manifest(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / "manifest.json"
    if not directory.is_dir():
        raise ConfigError(f"detector artifact {directory} does not exist: run `guard-train classifier --policy POLICY --out {directory}`",
                          param="detector.artifact")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{directory} is not a detector artifact (no manifest.json); run `guard-train classifier`", param="detector.artifact") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"detector artifact manifest {path} is unreadable ({exc}); retrain with `guard-train classifier`", param="detector.artifact") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != ARTIFACT_KIND:
        raise ConfigError(f"{directory} is not a forget-detector artifact (kind {manifest.get('kind') if isinstance(manifest, dict) else None!r})",
                          param="detector.artifact")
    if manifest.get("version") != ARTIFACT_VERSION:
        raise ConfigError(f"detector artifact {directory} has version {manifest.get('version')}, this guard reads {ARTIFACT_VERSION}; retrain it",
                          param="detector.artifact")
    return manifest


def load_model(directory: Path, *, verify: bool = True) -> DetectorModel:
    directory = Path(directory)
    manifest = read_manifest(directory)
    if verify:
        for name, digest in (manifest.get("checksums") or {}).items():
            p = directory / name
            if not p.exists() or _digest_file(p) != digest:
                raise ConfigError(f"detector artifact {directory} is corrupt: {name} is missing or was modified; retrain with `guard-train classifier`",
                                  param="detector.artifact")
    try:
        files = manifest["files"]
        targets = manifest["targets"]
        target_ids = [t["id"] for t in targets]
        names = {t["id"]: list(t["names"]) for t in targets}
        digests = {t["id"]: t.get("digest", "") for t in targets}
        facts = {t["id"]: {k: list(v) for k, v in (t.get("facts") or {}).items()} for t in targets}
        static = StaticEmbedder.load(directory, files["static"]) if "static" in files else None
        stages: dict[str, Stage] = {}
        for name in STAGES:
            key = f"heads_{name}"
            if key not in files:
                continue
            with np.load(directory / files[key], allow_pickle=False) as z:
                heads = Heads(z["w_dense"].astype(np.float32), z["w_sparse"].astype(np.float32), z["w_name"].astype(np.float32),
                              z["bias"].astype(np.float32), z["platt"].astype(np.float32)).padded()
                stages[name] = Stage(name, heads, float(z["tau"]), z["tau_target"].astype(np.float32),
                                     float(z["tau_loose"]), z["tau_loose_target"].astype(np.float32),
                                     float(z["tau_long"]) if "tau_long" in z else None,
                                     z["tau_long_target"].astype(np.float32) if "tau_long_target" in z else None)
            if heads.n != len(target_ids):
                raise ConfigError(f"detector artifact {directory}: {heads.n} heads for {len(target_ids)} targets", param="detector.artifact")
        emb = manifest["embedder"]
        index_stage = emb["index_stage"]
        dim = stages[index_stage].heads.w_dense.shape[1]
        index = ForgetIndex.load(directory, files["index"], dim)
        with open(directory / files["negatives"], encoding="utf-8") as fh:
            neg_texts = [json.loads(line) for line in fh if line.strip()]
        neg_owner = np.load(directory / "negatives_owner.npy", allow_pickle=False)
        neg_split = np.load(directory / "negatives_split.npy", allow_pickle=False)
        neg_group = np.load(directory / "negatives_group.npy", allow_pickle=False)
        neg_sentence = (np.load(directory / files["negatives_sentence"], allow_pickle=False).astype(np.float32)
                        if "negatives_sentence" in files else None)
        char = CharNgrams(**manifest["char_ngrams"])
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise ConfigError(f"detector artifact {directory} is incomplete or corrupt ({type(exc).__name__}: {exc}); retrain with `guard-train classifier`",
                          param="detector.artifact") from None
    return DetectorModel(
        target_ids=target_ids, names=names, target_digests=digests, mode=manifest["mode"], stages=stages, index=index,
        index_stage=index_stage, char=char, static=static, sentence_spec=emb.get("sentence"), fpr=float(manifest["target_fpr"]),
        loose_fpr=float(manifest.get("loose_fpr", 0.2)), window_words=int(manifest.get("window_words", 48)),
        max_windows=int(manifest.get("max_windows", 256)), manifest=manifest, neg_texts=neg_texts, neg_owner=neg_owner,
        neg_split=neg_split, neg_sentence=neg_sentence, neg_group=neg_group, facts=facts,
    )
