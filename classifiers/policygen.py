"""Build policies for the benchmark targets from the data folder (used by scripts/make_policies.py and
``guard-eval detector --suite``). Nothing is hard-coded about which targets exist: TOFU authors come
from the forget split's author blocks, RWKU targets from the folders present.

Policies reference data by paths relative to the policy file, so a policy written into
``policies/`` works wherever the checkout has ``shared/`` beside it.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from classifiers.entities import stated_aliases
from guard.errors import ConfigError

TOFU_QA_PER_AUTHOR = 20
TOFU_FORGET_SPLITS = ("forget01", "forget05", "forget10")
_NAME_RE = re.compile(r"\b([A-Z][\w\-]+(?:[\s\-](?:[A-Z][\w\-]+|al|bin|de|van|von|da|Al)){1,3})")


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


def slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_ = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"[^A-Za-z0-9]+", "-", ascii_).strip("-").lower()[:100] or "target"


# ----------------------------------------------------------------------------------------- TOFU


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def tofu_author_name(rows: Sequence[dict[str, Any]]) -> str:
    """The author's full name: the most frequent capitalised 2-4 word phrase of their QA block."""
    counts: Counter[str] = Counter()
    for r in rows:
        for text in (r["question"], r["answer"]):
            for m in _NAME_RE.finditer(text):
                counts[re.sub(r"['\u2019]s?$", "", m.group(1))] += 1
    if not counts:
        raise ConfigError("cannot find the author's name in a TOFU block", param="data")
    return counts.most_common(1)[0][0]


def tofu_policy(data_dir: Path, split: str, policy_dir: Path, *, half: str | None = None,
                artifact: Path | None = None, embedder_kind: str = "static") -> dict[str, Any]:
    """One target per author of ``split``; ``half``: 'first'/'second' trains on rows 0-9/10-19 of each block."""
    tofu = Path(data_dir) / "tofu"
    path = tofu / f"{split}.json"
    if not path.exists():
        raise ConfigError(f"TOFU split {split!r} not found at {path}", param="data")
    rows = _jsonl(path)
    n_authors = len(rows) // TOFU_QA_PER_AUTHOR
    full = _jsonl(tofu / "full.json")
    first_forget = len(full) - len(rows)
    targets = []
    for a in range(n_authors):
        block = rows[a * TOFU_QA_PER_AUTHOR:(a + 1) * TOFU_QA_PER_AUTHOR]
        name = tofu_author_name(block)
        lo = a * TOFU_QA_PER_AUTHOR
        if half == "first":
            lo, hi = lo, lo + TOFU_QA_PER_AUTHOR // 2
        elif half == "second":
            lo, hi = lo + TOFU_QA_PER_AUTHOR // 2, lo + TOFU_QA_PER_AUTHOR
        else:
            hi = lo + TOFU_QA_PER_AUTHOR
        targets.append({
            "id": f"tofu-{slug(name)}", "names": [name],
            "description": "a fictitious author from the TOFU benchmark",
            "forget_data": [{"path": _rel(path, policy_dir), "format": "tofu_qa", "rows": f"{lo}:{hi}"}],
        })
    return {
        "version": 1,
        "detector": {
            "kind": "trained",
            "artifact": _rel(artifact, policy_dir) if artifact else None,
            "embedder_kind": embedder_kind,
            "target_fpr": 0.005,
            # TOFU QA pairs name the author's own books/awards/places: they are not neighbours to protect
            "hard_negatives": False,
            # keep data: the retain authors, except full[0:400] (= retain_perturbed, the FPR test set)
            "negatives": [{"path": _rel(tofu / "full.json", policy_dir), "format": "tofu_qa", "rows": f"400:{first_forget}"}],
        },
        "default_action": "refuse",
        "targets": targets,
    }


# ----------------------------------------------------------------------------------------- RWKU


def rwku_folders(data_dir: Path) -> list[Path]:
    root = Path(data_dir) / "rwku" if (Path(data_dir) / "rwku").is_dir() else Path(data_dir)
    folders = [p for p in root.iterdir() if p.is_dir() and (p / "intro.json").exists()]
    if not folders:
        raise ConfigError(f"no RWKU target folders (with intro.json) under {root}", param="data")

    def key(p: Path) -> tuple[int, str]:
        m = re.match(r"(\d+)_", p.name)
        return (int(m.group(1)) if m else 1 << 30, p.name)

    return sorted(folders, key=key)


def rwku_target(folder: Path, policy_dir: Path) -> dict[str, Any]:
    intro = json.loads((folder / "intro.json").read_text(encoding="utf-8"))
    intro = intro[0] if isinstance(intro, list) else intro
    name = intro.get("target") or folder.name.split("_", 1)[-1].replace("_", " ")
    passages = json.loads((folder / "passage.json").read_text(encoding="utf-8")) if (folder / "passage.json").exists() else []
    first = [p["text"] for p in passages[:1]] + [intro.get("intro", "")]
    target: dict[str, Any] = {
        "id": f"rwku-{slug(folder.name)}", "names": [name], "aliases": stated_aliases(name, first),
        "forget_data": [{"path": _rel(folder / "intro.json", policy_dir), "format": "rwku_intro"}],
    }
    if passages:
        target["forget_data"].append({"path": _rel(folder / "passage.json", policy_dir), "format": "rwku_passage"})
    return target


GENERAL_SOURCES = (  # (file, field): general questions/instructions RWKU ships as utility sets
    ("fluency.json", "instruction"), ("triviaqa.json", "question"), ("truthful.json", "question"), ("retain_mmlu.json", "question"),
)


def general_negatives(data_dir: Path, policy_dir: Path, *, max_files: int = 2) -> list[dict[str, Any]]:
    """General-instruction negatives from the data folder: RWKU's utility sets. ``fluency.json``
    (AlpacaEval instructions, the detector's general-instruction *test* set) is used only for its
    hash half 'a'; the evaluation scores half 'b' (and drops anything trained on)."""
    out: list[dict[str, Any]] = []
    folders = rwku_folders(data_dir) if (Path(data_dir) / "rwku").is_dir() else []
    for fname, fld in GENERAL_SOURCES:
        have = [f for f in folders if (f / fname).exists()][:max_files if fname != "fluency.json" else len(folders)]
        for f in have:
            src: dict[str, Any] = {"path": _rel(f / fname, policy_dir), "format": "json_text", "field": fld}
            if fname == "fluency.json":
                src["half"] = "a"
            out.append(src)
    return out


def rwku_policy(data_dir: Path, folders: Sequence[Path], policy_dir: Path, *, artifact: Path | None = None,
                negative_folders: Sequence[Path] = (), embedder_kind: str = "static") -> dict[str, Any]:
    det: dict[str, Any] = {
        "kind": "trained", "artifact": _rel(artifact, policy_dir) if artifact else None,
        "embedder_kind": embedder_kind, "target_fpr": 0.005,
    }
    negs = [{"path": _rel(f / "passage.json", policy_dir), "format": "rwku_passage"}
            for f in negative_folders if (f / "passage.json").exists()]
    negs += general_negatives(data_dir, policy_dir)
    if negs:
        det["negatives"] = negs
    return {"version": 1, "detector": det, "default_action": "refuse",
            "targets": [rwku_target(f, policy_dir) for f in folders]}
