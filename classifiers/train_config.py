"""The detector trainer's configuration and the identities it hashes (see ``classifiers.train``).

``text_bucket`` is the deterministic hash split every stage of training uses (held-out exemplars,
calibration negatives, sampling), so the same text always falls on the same side.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

from classifiers.embedder import StaticEmbedder
from guard.policy import Policy, Target

Progress = Callable[[str], None]


@dataclass
class TrainConfig:
    mode: str = "cascade"              # static | sentence | cascade
    sentence_spec: str = "default"
    fpr: float = 0.005
    neighbour_fpr: float = 0.05        # FPR allowed on hard negatives (questions about co-mentioned entities)
    loose_fpr: float = 0.15
    general_pool: int = 4000
    hard_negatives: bool = True
    passage_focus: str = "contrast"    # all | mentions | contrast
    window_words: int = 48
    max_windows: int = 256
    c: float = 4.0
    max_other: int = 3000              # other targets' positives sampled as negatives per head
    cal_fraction: float = 0.25
    pos_holdout: float = 0.10
    seed: int = 0
    static_embedder: StaticEmbedder | None = None   # injected (tests); else distilled from sentence_spec
    facts: bool = True                 # distinctive dates/titles of the forget data as features (+ date re-renderings)
    long_negatives: int = 200          # long texts made of calibration negatives, for the long-input threshold (0: none)
    long_words: int = 1000

    @staticmethod
    def from_policy(policy: Policy) -> "TrainConfig":
        d = policy.detector
        return TrainConfig(mode=d.embedder_kind, sentence_spec=d.embedder, fpr=d.target_fpr, neighbour_fpr=d.neighbour_fpr,
                           general_pool=d.general_pool,
                           hard_negatives=d.hard_negatives, passage_focus=d.passage_focus, window_words=d.window_words,
                           max_windows=d.max_windows)


def text_bucket(text: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the text (and salt): the split every stage of training uses."""
    h = hashlib.blake2b((salt + text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64


def target_digest(target: Target) -> str:
    """Identity of what a target's head was trained from (names, description, queries, data content)."""
    h = hashlib.sha1()
    h.update(json.dumps([target.id, list(target.names), list(target.aliases), target.description, list(target.example_queries)],
                        ensure_ascii=False).encode())
    for src in tuple(target.forget_data) + tuple(target.keep_data):
        h.update(json.dumps([src.path.name, src.format, src.rows, src.field]).encode())
        try:
            h.update(hashlib.sha1(src.path.read_bytes()).digest())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()[:16]
