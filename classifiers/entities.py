"""Entities named in a target's forget documents, and aliases stated in them.

``co_mentioned`` finds the *other* entities a target's documents talk about (films, bandmates,
relatives, places). The trainer turns them into hard negatives ("Who directed The Blue Lagoon?"),
so that knowledge about neighbours is not flagged just because it shares a passage with the target.
``stated_aliases`` reads aliases a biography states about its subject ("Shawn Corey Carter (born
...), known by his stage name Jay-Z"); ``scripts/make_policies.py`` uses it to fill ``aliases``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

from classifiers.text import fold

_LEAD_STOP = {
    "The", "He", "She", "His", "Her", "It", "In", "On", "At", "After", "Before", "During", "As", "A", "An", "This",
    "That", "They", "Their", "When", "While", "Although", "However", "From", "With", "By", "For", "Its", "Since",
    "Following", "Also", "But", "Despite", "Later", "There", "These", "Those", "Some", "Many", "Most", "Other", "Both",
    "Each", "Born", "Throughout", "According", "Under", "Over", "Between", "Until", "If", "Because", "Then", "Upon",
    "Among", "Within", "Along", "One", "Two", "Three", "First", "Second", "What", "Who", "Which", "Where", "Why",
    "How", "Can", "Could", "Did", "Does", "Is", "Was", "Are", "Were", "Has", "Have", "Yes", "No", "Not", "And", "Or",
    "Early", "External", "Further", "Personal", "Critical", "Career", "Life", "Legacy", "References", "See", "Notes",
    "Filmography", "Discography", "Bibliography", "Awards", "Works", "Selected", "Television", "Film", "Music",
}
_MONTHS = {"January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"}
_TOKEN = r"[A-Z](?:\.|[\w\u2019'\-&]*)"  # a capitalised word, or an initial "J."
_PHRASE = re.compile(rf"\b({_TOKEN}(?:\s+(?:(?:of|the|and|de|da|van|von|la|le|du|del|y|di|&)\s+)*{_TOKEN})*)")
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]{3,60})[\"\u201d]|'([A-Z][^']{2,60})'")

NEIGHBOUR_TEMPLATES: tuple[str, ...] = (
    "Who is {n}?", "Tell me about {n}.", "What is {n}?", "What is {n} known for?", "When was {n} released?",
    "Who directed {n}?", "Who created {n}?", "Where is {n}?", "Give me three facts about {n}.",
    "{n} is best known for ___.", "What year did {n} come out?", "Who was in {n}?",
)


def co_mentioned(documents: Sequence[str], names: Sequence[str], *, top: int = 40, min_count: int = 2,
                 exclude_text: str = "") -> list[str]:
    """The most frequent capitalised phrases/quoted titles of ``documents`` that are not the target.

    A phrase is dropped if it is one of ``names``, part of one, contains one, is a single name token,
    or appears in ``exclude_text`` (e.g. the target's one-line intro, which describes the target itself).
    """
    counts: Counter[str] = Counter()
    for doc in documents:
        for m in _PHRASE.finditer(doc):
            words = re.sub(r"['\u2019]s$", "", m.group(1).strip(" .-'\u2019")).split()
            while words and (words[0] in _LEAD_STOP or words[0] in _MONTHS):
                words = words[1:]
            phrase = " ".join(words)
            if len(phrase) >= 4 and not phrase.isupper() or len(words) > 1:
                counts[phrase] += 1
        for m in _QUOTED.finditer(doc):
            counts[(m.group(1) or m.group(2)).strip()] += 1
    folded_names = [fold(n) for n in names]
    name_tokens = {w for n in folded_names for w in re.split(r"[\s,]+", n) if w}
    banned = fold(exclude_text)
    out: list[str] = []
    for phrase, k in counts.most_common():
        if k < min_count or len(out) >= top:
            break
        f = fold(phrase)
        if not f or f in name_tokens or f in banned:
            continue
        if any(f == n or f in n or n in f for n in folded_names):
            continue
        out.append(phrase)
    return out


def neighbour_questions(entities: Iterable[str], templates: Sequence[str] = NEIGHBOUR_TEMPLATES) -> list[str]:
    return [tpl.format(n=e) for e in entities for tpl in templates]


_ALIAS_PATTERNS = (
    re.compile(r"known (?:professionally |mononymously |publicly )?(?:by (?:his|her|their) (?:stage|ring|pen) name |as |by (?:his|her|their) nickname )"
               r"[\"\u201c']?([A-Z][\w.\-' ]{1,40}?)[\"\u201d']?(?=[,.;)]| is| was| and)"),
    re.compile(r"[Nn]icknamed [\"\u201c']([^\"\u201d']{2,40})[\"\u201d']"),
    re.compile(r"born ((?!(?:January|February|March|April|May|June|July|August|September|October|November|December)\b)"
               r"[A-Z][\w.\-]+(?: [A-Z][\w.\-]+)+)(?=[,);])"),
)


def stated_aliases(name: str, texts: Sequence[str]) -> list[str]:
    """Aliases a biography states: the full name that opens it ("Stephen Edwin King (born ..."),
    "born X", "known as X", "nicknamed 'X'". Single given names and very short strings are dropped."""
    out: list[str] = []
    if texts:
        m = re.match(r"\s*([^(,;]{3,80}?)\s*\(", texts[0])
        if m:
            lead = re.sub(r"\s+", " ", re.sub(r"[\"\u201c\u201d]", "", m.group(1))).strip()
            if lead and len(lead.split()) <= 6:
                out.append(lead)
    for text in texts[:3]:
        for pat in _ALIAS_PATTERNS:
            out += [x.strip() for x in pat.findall(text)]
    tokens = set(name.split())
    if "," in name:  # "Prince Harry, Duke of Sussex" -> "Prince Harry"
        out.append(name.split(",")[0].strip())
    seen = {fold(name)}
    result = []
    for alias in out:
        f = fold(alias)
        if len(alias) < 3 or f in seen or (len(alias.split()) == 1 and alias in tokens) or alias.endswith("ism"):
            continue
        if any(ch.isdigit() for ch in alias):
            continue
        seen.add(f)
        result.append(alias)
    return result
