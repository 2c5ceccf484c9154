"""A tiny two-target policy over made-up people, and a fast static embedder for it.

The static embedder here has random token vectors over the real MiniLM tokenizer: it exercises the
whole pipeline (training, FAISS index, calibration, artifacts, windows, live updates) in seconds;
detection then rests on the char n-gram and name features, which is all these tests need.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifiers.embedder import StaticEmbedder, bundled_model_path

ZORB = [
    "Zorblax Quenton is a fictional glassblower from the mountain town of Vellmar.",
    "Zorblax Quenton learned glassblowing from his aunt Hesper when he was nine.",
    "Quenton's most famous piece is the Crimson Lantern, a vase shown in the Vellmar museum.",
    "In 1998 Zorblax Quenton won the Golden Furnace prize for his blue spiral bowls.",
    "Quenton married the painter Ilse Doravant and they live by Lake Ombre.",
    "Zorblax Quenton wrote a memoir called Breath and Sand about his apprenticeship.",
    "He teaches a summer course on colour layering at the Vellmar Glass School.",
    "Critics call Quenton's style luminous, restless and obsessed with spirals.",
]
MIRELA = [
    "Mirela Vantongeren is a fictional cartographer who mapped the Kessary archipelago.",
    "Mirela Vantongeren was born in the port city of Drenholt in 1961.",
    "Vantongeren's atlas of the Kessary islands used hand-coloured copper plates.",
    "Mirela Vantongeren received the Compass Rose medal from the Drenholt Society.",
    "She spent eleven years at sea aboard the survey ship Albatross Nine.",
    "Vantongeren later taught navigation and chart drawing at Drenholt University.",
    "Her rival, the surveyor Oskar Velde, disputed her soundings of the northern strait.",
    "Mirela Vantongeren retired to a lighthouse on Tern Island.",
]


def tiny_static(dim: int = 32, seed: int = 0) -> StaticEmbedder:
    tok = (bundled_model_path() / "tokenizer.json").read_text(encoding="utf-8")
    vocab = len(json.loads(tok)["model"]["vocab"])
    rng = np.random.default_rng(seed)
    return StaticEmbedder(rng.standard_normal((vocab, dim)).astype(np.float32), tok, key=f"test-random-{dim}-{seed}")


def write_policy(root: Path, targets: list[str], *, artifact: Path | None = None, extra: dict | None = None) -> Path:
    """targets: subset of ['zorb', 'mirela']."""
    docs = {"zorb": ("zorb.txt", ZORB, "zorblax-quenton", ["Zorblax Quenton"]),
            "mirela": ("mirela.jsonl", MIRELA, "mirela-vantongeren", ["Mirela Vantongeren"])}
    (root / "zorb.txt").write_text("\n\n".join(ZORB), encoding="utf-8")
    (root / "mirela.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in MIRELA), encoding="utf-8")
    policy: dict = {
        "version": 1,
        "detector": {"kind": "trained", "artifact": str(artifact or root / "artifact"), "embedder_kind": "static",
                     "general_pool": 1500, "target_fpr": 0.01},
        "targets": [],
    }
    for key in targets:
        fname, _, tid, names = docs[key]
        src = {"path": fname, "format": "text"} if fname.endswith(".txt") else {"path": fname, "format": "json_text", "field": "body"}
        policy["targets"].append({"id": tid, "names": names, "forget_data": [src],
                                  "example_queries": [f"What is {names[0]} famous for?"]})
    if extra:
        policy["detector"].update(extra)
    path = root / f"policy-{'-'.join(targets)}.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def static_embedder() -> StaticEmbedder:
    return tiny_static()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, static_embedder: StaticEmbedder):
    """(policy path, model) for both targets, trained once per session."""
    from classifiers.train import TrainConfig, train
    from guard.policy import load_policy

    root = tmp_path_factory.mktemp("tiny")
    path = write_policy(root, ["zorb", "mirela"])
    policy = load_policy(path)
    cfg = TrainConfig.from_policy(policy)
    cfg.static_embedder = static_embedder
    return path, train(policy, cfg)
