"""What each detector head is trained on, derived from the policy (see ``classifiers.train``):
positives per target, hard negatives about entities its documents co-mention, the shared negative
bank with its calibration groups, and the target's distinctive facts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from classifiers.data import TargetTexts, dedupe, policy_negatives, target_texts
from classifiers.entities import co_mentioned, neighbour_questions
from classifiers.facts import date_keys, date_variants, fact_hits, mask_names, target_facts
from classifiers.features import name_parts
from classifiers.templates import entity_questions, general_pool, partial_name_negatives, surname_questions
from classifiers.text import fold, name_alternation
from classifiers.train_config import TrainConfig, text_bucket
from guard.errors import ConfigError
from guard.policy import Policy, Target


# groups of the negative bank: each gets its own conformal threshold (FPR is controlled per group)
GROUP_GENERAL, GROUP_KEEP_STATEMENT, GROUP_KEEP_QUESTION, GROUP_HARD = 0, 1, 2, 3
GROUP_NAMES = {GROUP_GENERAL: "general", GROUP_KEEP_STATEMENT: "keep_statements", GROUP_KEEP_QUESTION: "keep_questions",
               GROUP_HARD: "hard"}


def keep_group(text: str) -> int:
    return GROUP_KEEP_QUESTION if text.rstrip().endswith("?") else GROUP_KEEP_STATEMENT


@dataclass
class TargetData:
    target_id: str
    names: tuple[str, ...]
    exemplars: list[str]            # forget data sentences/QA + example queries (indexed)
    name_questions: list[str]       # templates about the names (positives, not indexed)
    hard: list[str]                 # neighbour questions (negatives for this head)
    holdout: list[str] = field(default_factory=list)   # exemplars held out of this head (Platt + metrics)
    facts: dict[str, list[str]] = field(default_factory=dict)  # distinctive dates/titles (``classifiers.facts``)


def _name_filter(all_names: Sequence[str]) -> Callable[[str], bool]:
    """True if a text names any of ``all_names`` (whole word, folded)."""
    source = name_alternation(fold(n) for n in all_names)
    if source is None:
        return lambda text: False
    pat = re.compile(source)
    return lambda text: bool(pat.search(fold(text)))


_PRONOUN_OPEN = re.compile(r"^\W*(he|she|his|her|him|they|their|them)\b", re.IGNORECASE)


_HEADER = re.compile(r"^\s*(?:=+[^=]*=+\s*)+")   # "=== 1966-1970: American roles ===" opening a passage sentence


def surnames(names: Sequence[str]) -> list[str]:
    """The last word of each name ("Lee", "King"), however short or common: in the target's own
    documents it stands for the target."""
    out = []
    for n in names:
        toks = n.split(",")[0].split()
        if len(toks) >= 2 and len(toks[-1].strip(".")) >= 2:
            out.append(toks[-1].strip("."))
    return out


def _mention_filter(names: Sequence[str]) -> Callable[[str], bool]:
    """True if a sentence of the target's documents is about the target: it names it (a name, a
    distinctive part, its surname) or opens with a pronoun (in a biography, the subject). Section
    headers ("=== Career ===") are ignored."""
    by_name = _name_filter(list(names) + name_parts(names) + surnames(names))

    def about(s: str) -> bool:
        body = _HEADER.sub("", s)
        return by_name(body) or bool(_PRONOUN_OPEN.match(body))
    return about


def prepare_target(target: Target, index: int, cfg: TrainConfig, names_filter: Callable[[str], bool]) -> TargetData:
    tt: TargetTexts = target_texts(target, index)
    positives = list(tt.positives)
    off_target: list[str] = []
    if cfg.passage_focus != "all" and tt.passage_sentences:
        mentions = _mention_filter(target.all_names)
        off_target = [s for s in tt.passage_sentences if not mentions(s)]
        drop = set(off_target)
        positives = [p for p in positives if p not in drop]
    exemplars = dedupe(positives + tt.queries)
    if not exemplars and not target.all_names:
        raise ConfigError(f"target {target.id!r} has neither names nor forget data", param=f"targets.{index}")
    holdout = [t for t in exemplars if text_bucket(t, "pos") < cfg.pos_holdout and t not in tt.queries] if len(exemplars) >= 10 else []
    hold = set(holdout)
    hard: list[str] = []
    if cfg.hard_negatives and tt.documents:
        ents = co_mentioned(tt.documents, target.all_names, exclude_text=tt.summary)
        hard = [q for q in neighbour_questions(ents) if not names_filter(q)]
    if cfg.passage_focus == "contrast":
        # sentences of the target's documents that are about something else (a film, a bandmate...)
        hard += [t for t in off_target if not names_filter(t)]
    # made-up people sharing one name part with the target are not the target...
    parts = name_parts(target.all_names)
    hard += [q for q in partial_name_negatives(parts, seed=cfg.seed) if not names_filter(q)]
    # ...but a question using the target's own surname alone usually is
    questions = entity_questions(target.all_names)
    toks = target.names[0].replace(",", " ").split()
    if len(toks) >= 2 and toks[-1].lower().strip(".") in parts:
        questions += surname_questions(toks[-1])
    train_exemplars = [t for t in exemplars if t not in hold]
    facts: dict[str, list[str]] = {}
    if cfg.facts:
        facts = target_facts(tt.documents)
        questions += fact_positives(train_exemplars, target.all_names, facts)
    return TargetData(target.id, target.all_names, train_exemplars, dedupe(questions), dedupe(hard), holdout, facts)


def fact_positives(exemplars: Sequence[str], names: Sequence[str], facts: dict[str, list[str]]) -> list[str]:
    """The target's sentences that state one of its facts, with the name taken out ("Who are some
    characters from this person's book 'A Whisper in the Wind'?"), and everything with its dates
    written other ways ("05/11/1991" -> "November 5, 1991"): a fact identifies the target without
    its name, and a date in any rendering."""
    name_src = name_alternation(fold(n) for n in list(names) + name_parts(names) + surnames(names))
    name_re = re.compile(name_src) if name_src else None
    title_src = name_alternation(facts.get("titles", ()))
    titles = re.compile(title_src) if title_src else None
    out: list[str] = []
    for t in exemplars:
        variants = [t] + date_variants(t)
        out += variants[1:]
        if name_re is None:
            continue
        for v in variants:
            masked = mask_names(v, name_re)
            if masked != v and fact_hits(fold(masked), facts, titles):
                out.append(masked)
    return out


def shared_negatives(policy: Policy, cfg: TrainConfig, names_filter: Callable[[str], bool]) -> tuple[list[str], list[int]]:
    """(texts, group) of the negatives every head trains against."""
    all_names = [n for t in policy.targets for n in t.all_names]
    general = general_pool(cfg.general_pool, seed=cfg.seed, exclude_names=all_names) if cfg.general_pool else []
    keep = policy_negatives(policy)
    for i, target in enumerate(policy.targets):
        keep += target_texts(target, i).keep if target.keep_data else []
    if cfg.facts:
        keep += [v for t in keep for v in date_variants(t, limit=3)]
    texts, groups, seen = [], [], set()
    for items, group in ((general, None), (keep, "keep")):
        for t in items:
            if t in seen or names_filter(t):
                continue
            seen.add(t)
            texts.append(t)
            groups.append(GROUP_GENERAL if group is None else keep_group(t))
    return texts, groups


def drop_common_facts(tds: Sequence[TargetData], negatives: Sequence[str]) -> None:
    """A date or title that also occurs in the shared negatives (or belongs to several targets)
    does not single a target out: drop it."""
    owners: dict[tuple[str, str], int] = {}
    for td in tds:
        for kind, values in td.facts.items():
            for v in values:
                owners[(kind, v)] = owners.get((kind, v), 0) + 1
    if not owners:
        return
    seen: set[tuple[str, str]] = {k for k, n in owners.items() if n > 1}
    titles = [v for kind, v in owners if kind == "titles"]
    source = name_alternation(titles)
    pattern = re.compile(source) if source else None
    for text in negatives:
        folded = fold(text)
        if any(ch.isdigit() for ch in folded):
            seen |= {("dates", k) for k in date_keys(folded)}
        if pattern is not None:
            seen |= {("titles", m.group(0)) for m in pattern.finditer(folded)}
    for td in tds:
        td.facts = {kind: [v for v in values if (kind, v) not in seen] for kind, values in td.facts.items()}
