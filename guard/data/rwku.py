"""RWKU data: targets discovered from the data folder, their probe and utility sets.

RWKU ships one folder per target, ``<id>_<Name_With_Underscores>`` (e.g. ``1_Stephen_King``,
``10_Prince_Harry,_Duke_of_Sussex``, ``24_Beyoncé``), each holding JSON arrays. Nothing here
assumes which targets exist: the folder is scanned, so the same code runs on targets it has never
seen (RWKU's held-back 101–200). The target's name is taken from the data itself (``intro.json``'s
``target``, else the ``subject`` of its probes), never re-derived from the folder name, so commas
and non-ASCII characters survive exactly.

Sets (file -> name used in results):

========================  ===============  ==============================================
file                      set              what
========================  ===============  ==============================================
forget_level1.json        forget_fb        forget fill-in-the-blank (knowledge memorization)
forget_level2.json        forget_qa        forget question answering (manipulation)
forget_level3.json        forget_aa        forget adversarial attacks
neighbor_level1.json      neighbor_fb      neighbor fill-in-the-blank (must be kept)
neighbor_level2.json      neighbor_qa      neighbor question answering
retain_mmlu.json          mmlu             utility: general knowledge (MMLU)
retain_bbh.json           bbh              utility: reasoning (BBH, CoT)
truthful.json             truthfulqa       utility: truthfulness (TruthfulQA MC)
triviaqa.json             triviaqa         utility: factuality (TriviaQA)
fluency.json              fluency          utility: fluency (AlpacaEval instructions)
========================  ===============  ==============================================

Only targets 1–10 carry the utility files in the shared copy; a missing set is simply absent.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from guard.errors import ConfigError

PROBE_FILES: dict[str, str] = {
    "forget_fb": "forget_level1.json",
    "forget_qa": "forget_level2.json",
    "forget_aa": "forget_level3.json",
    "neighbor_fb": "neighbor_level1.json",
    "neighbor_qa": "neighbor_level2.json",
}
UTILITY_FILES: dict[str, str] = {
    "mmlu": "retain_mmlu.json",
    "bbh": "retain_bbh.json",
    "truthfulqa": "truthful.json",
    "triviaqa": "triviaqa.json",
    "fluency": "fluency.json",
}
SET_FILES: dict[str, str] = {**PROBE_FILES, **UTILITY_FILES}
FORGET_SETS = ("forget_fb", "forget_qa", "forget_aa")
NEIGHBOR_SETS = ("neighbor_fb", "neighbor_qa")
PROBE_SETS = FORGET_SETS + NEIGHBOR_SETS
UTILITY_SETS = tuple(UTILITY_FILES)
ALL_SETS = PROBE_SETS + UTILITY_SETS
# a folder is a target folder when it holds at least one of these
_MARKERS = ("intro.json",) + tuple(PROBE_FILES.values())
_FOLDER_RE = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class RwkuTarget:
    """One target folder. ``number`` is the RWKU id from the folder name (``None`` if it has none)."""

    folder: Path
    name: str
    number: int | None
    intro: str | None = None
    sets: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        """The folder name: unique, and what result files are named after."""
        return self.folder.name

    @property
    def has_utility(self) -> bool:
        return any(s in self.sets for s in UTILITY_SETS)

    def path(self, set_name: str) -> Path:
        try:
            return self.folder / SET_FILES[set_name]
        except KeyError:
            raise ConfigError(f"unknown RWKU set {set_name!r}; known: {', '.join(ALL_SETS)}", param="sets") from None

    def load(self, set_name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The items of one set (``[]`` when this target does not have it), first ``limit`` only."""
        if set_name not in self.sets:
            self.path(set_name)  # validates the name
            return []
        items = read_json_list(self.path(set_name))
        return items[:limit] if limit is not None else items


def rwku_dir(data_dir: Path | str) -> Path:
    """``DIR/rwku`` when it exists, else ``DIR`` itself (a folder of target folders)."""
    data_dir = Path(data_dir).expanduser()
    if (data_dir / "rwku").is_dir():
        return data_dir / "rwku"
    if not data_dir.is_dir():
        raise ConfigError(f"RWKU data folder not found: {data_dir} (pass --data pointing at shared/data or shared/data/rwku)",
                          param="data")
    return data_dir


def read_json_list(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); RWKU files are JSON arrays",
                          param="data") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", param="data") from None
    if isinstance(data, dict):  # the current HF intro.json is a bare object
        data = [data]
    if not isinstance(data, list):
        raise ConfigError(f"{path} holds a {type(data).__name__}; RWKU files are JSON arrays of objects", param="data")
    return data


def _name_of(folder: Path, intro: dict[str, Any] | None) -> str:
    if intro and isinstance(intro.get("target"), str) and intro["target"].strip():
        return intro["target"].strip()
    for file in PROBE_FILES.values():
        path = folder / file
        if path.exists():
            items = read_json_list(path)
            if items and isinstance(items[0].get("subject"), str):
                return items[0]["subject"].strip()
    m = _FOLDER_RE.match(folder.name)
    return (m.group(2) if m else folder.name).replace("_", " ")


def load_target(folder: Path) -> RwkuTarget:
    folder = Path(folder)
    intro_items = read_json_list(folder / "intro.json") if (folder / "intro.json").exists() else []
    intro = intro_items[0] if intro_items else None
    m = _FOLDER_RE.match(folder.name)
    sets = tuple(s for s in ALL_SETS if (folder / SET_FILES[s]).exists())
    return RwkuTarget(folder=folder, name=_name_of(folder, intro), number=int(m.group(1)) if m else None,
                      intro=(intro or {}).get("intro"), sets=sets)


def discover_targets(data_dir: Path | str) -> list[RwkuTarget]:
    """Every target folder under the RWKU data folder, ordered by RWKU id (then folder name)."""
    root = rwku_dir(data_dir)
    folders = [p for p in root.iterdir() if p.is_dir() and any((p / f).exists() for f in _MARKERS)]
    if not folders:
        raise ConfigError(f"no RWKU target folders under {root} (expected folders like 1_Stephen_King holding "
                          "forget_level1.json ...)", param="data")
    targets = [load_target(p) for p in folders]
    return sorted(targets, key=lambda t: (t.number is None, t.number or 0, t.key))


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def select_targets(targets: Sequence[RwkuTarget], spec: str | None) -> list[RwkuTarget]:
    """Pick targets. ``spec``: ``None``/``all``, or items separated by ``;`` (or by ``,`` in a list of
    numbers): ``1-3``, ``1,4,7``, ``1-3;Beyonce``,
    ``10_Prince_Harry,_Duke_of_Sussex`` (a folder name), ``Stephen King`` (a name, accents and case
    ignored). Numbers and ranges refer to RWKU ids."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(targets)
    chosen: list[RwkuTarget] = []

    def add(found: Iterable[RwkuTarget]) -> None:
        for t in found:
            if t not in chosen:
                chosen.append(t)

    by_folder = {t.key: t for t in targets}
    for part in _split_spec(spec, by_folder):
        part = part.strip()
        if not part:
            continue
        if part in by_folder:
            add([by_folder[part]])
            continue
        rng = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if rng:
            lo, hi = int(rng.group(1)), int(rng.group(2))
            found = [t for t in targets if t.number is not None and lo <= t.number <= hi]
        elif part.isdigit():
            found = [t for t in targets if t.number == int(part)]
        else:
            key = _fold(part.replace("_", " "))
            found = [t for t in targets if _fold(t.name) == key]
        if not found:
            known = ", ".join(t.key for t in targets[:5]) + (" ..." if len(targets) > 5 else "")
            raise ConfigError(f"no RWKU target matches {part!r} (have {len(targets)} targets: {known})", param="targets")
        add(found)
    return chosen


def _split_spec(spec: str, folders: dict[str, RwkuTarget]) -> list[str]:
    """Split on ';', and on ',' only between tokens that are not part of a folder name."""
    out: list[str] = []
    for chunk in spec.split(";"):
        chunk = chunk.strip()
        if chunk in folders:
            out.append(chunk)
            continue
        if re.fullmatch(r"[\d\s,\-]+", chunk):
            out.extend(chunk.split(","))
        else:
            out.append(chunk)
    return out


# ------------------------------------------------------------------------------ policies

def target_id(target: RwkuTarget) -> str:
    """A policy-valid id: ``rwku-10-prince-harry-duke-of-sussex``, ``rwku-24-beyonce``."""
    slug = re.sub(r"[^a-z0-9]+", "-", _fold(target.name)).strip("-") or "target"
    prefix = f"rwku-{target.number}-" if target.number is not None else "rwku-"
    return (prefix + slug)[:128]


def aliases(target: RwkuTarget) -> list[str]:
    """Obvious short forms: the part before a comma ("Prince Harry" for "Prince Harry, Duke of Sussex")."""
    out = []
    if "," in target.name:
        head = target.name.split(",", 1)[0].strip()
        if len(head) > 2:
            out.append(head)
    return out


def policy_dict(targets: Sequence[RwkuTarget], action: str = "refuse", detector: str = "keyword",
                refusal_message: str | None = None) -> dict[str, Any]:
    """A policy forgetting ``targets`` (batch setting; one target -> the single-target setting).

    Zero-shot, as RWKU intends: each target is described only by its name and its ``intro.json``.
    """
    entries = []
    for t in targets:
        entry: dict[str, Any] = {"id": target_id(t), "names": [t.name], "aliases": aliases(t), "action": action}
        if t.intro:
            entry["description"] = t.intro
        if (t.folder / "intro.json").exists():
            entry["forget_data"] = [{"path": str((t.folder / "intro.json").resolve()), "format": "rwku_intro"}]
        entries.append(entry)
    policy: dict[str, Any] = {"version": 1, "detector": {"kind": detector}, "default_action": action, "targets": entries}
    if refusal_message:
        policy["refusal_message"] = refusal_message
    return policy
