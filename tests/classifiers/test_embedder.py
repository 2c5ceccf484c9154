"""The static table the trained detector embeds with: distilled by model2vec from the bundled
sentence model, cached per machine, stored and loaded as plain arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifiers.embedder import STATIC_KEY_PREFIX, StaticEmbedder, static_for
from guard.errors import ConfigError


@pytest.fixture(scope="module")
def table() -> StaticEmbedder:
    return static_for("default")  # distilled once per machine (~25 s), then read from the cache


def test_table_is_model2vecs_distillation_of_the_bundled_model(table: StaticEmbedder) -> None:
    assert table.key.startswith(f"{STATIC_KEY_PREFIX}256-")
    assert table.dim == 256
    assert table.word_local  # BERT's WordPiece: segment embeddings can be summed per word
    vocab = json.loads(table.tokenizer_json)["model"]["vocab"]
    assert not any(tok.startswith("[unused") for tok in vocab)  # model2vec drops the unused tokens
    assert len(table.vectors) == len(vocab)


def test_table_places_related_texts_closer(table: StaticEmbedder) -> None:
    a, b, c = table.encode(["Which novels did the author write about Paris?",
                            "What books has this writer published about France?",
                            "How do I reset the router's wifi password?"])
    assert np.isclose(np.linalg.norm(a), 1.0, atol=1e-5)
    assert float(a @ b) > float(a @ c) + 0.1


def test_table_round_trips_without_pickle(table: StaticEmbedder, tmp_path: Path) -> None:
    meta = table.save(tmp_path)
    again = StaticEmbedder.load(tmp_path, meta)
    text = ["Who is Basil Mahfouz Al-Kuwaiti?"]
    assert np.allclose(again.encode(text), table.encode(text), atol=1e-3)  # stored as float16
    (tmp_path / meta["vectors"]).write_bytes(b"not an array")
    with pytest.raises(ConfigError, match="retrain"):
        StaticEmbedder.load(tmp_path, meta)
