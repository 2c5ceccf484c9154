"""Wrong answers made from a true one by swapping its facts for other people's (SPUL's truth-ratio term,
``--truth-ratio-answers swapped``).

A truth ratio compares a true answer with wrong ones written the same way. TOFU ships such wrong
("perturbed") answers only for its evaluation questions; a deployer's forget data has questions and
true answers. So the wrong answers are made here: the *fact spans* of the true answer — quoted titles,
numbers and dates, runs of capitalised words (places, names, awards) — that the question does not
already state are each replaced by a span of the same kind taken from other people's answers (the
policy's retain QA). "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait." becomes "... was born in
Buenos Aires, Kuwait." and so on: the answer's wording stays, its facts go wrong, which is what TOFU's
perturbed answers do. The same generator makes the level's wrong answers on the never-seen QA, so the
term compares like with like. Seeded: the same data gives the same answers.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from classifiers.approximate_names import is_common_phrase

_CONNECT = r"(?:of|the|and|de|del|la|le|van|von|der|al|el|bin|da|di|du)"
_CAP = r"[A-Z][\w-]*(?:['\u2019][A-Za-z]+)?"
_SPAN = re.compile(
    r"(?P<quoted>[\"\u201c][^\"\u201c\u201d]{2,120}[\"\u201d]|(?:^|(?<=\s))'[^']{2,120}'(?![A-Za-z]))"
    r"|(?P<number>\d[\d/.,:-]*\d|\d)"
    rf"|(?P<cap>{_CAP}(?:\s+(?:{_CONNECT}\s+)*{_CAP})*)")
KINDS = ("quoted", "number", "month", "cap")
_MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"}
_POSSESSIVE = re.compile(r"['\u2019]s$")
_LEAD = re.compile(rf"^(\S+)\s+(?:{_CONNECT}\s+)*")


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int
    text: str


def fact_spans(answer: str, question: str = "") -> list[Span]:
    """The answer's fact spans that the question does not state. A single capitalised word that opens a
    sentence and is a common English word ("The", "Author", "His") is wording, not a fact."""
    asked = question.lower()
    out = []
    for m in _SPAN.finditer(answer):
        kind = m.lastgroup or "cap"
        start, text = m.start(), m.group(0)
        if kind == "cap":
            before = answer[:start].rstrip()
            opens = not before or before[-1] in ".!?:;\"'"
            lead = _LEAD.match(text)
            if opens and lead and is_common_phrase([lead.group(1).lower()]):  # "Two of Basil ..." -> "Basil ..."
                start, text = start + lead.end(), text[lead.end():]
            text = _POSSESSIVE.sub("", text)
            if " " not in text and opens and start == m.start() and is_common_phrase([text.lower()]):
                continue  # "The", "Author", "His": wording, not a fact
            if text.lower() in _MONTHS:
                kind = "month"
        if not text or re.search(rf"(?<!\w){re.escape(text.lower().strip(chr(34) + chr(39)))}(?!\w)", asked):
            continue
        out.append(Span(kind, start, start + len(text), text))
    return out


def span_pool(answers: Iterable[str]) -> dict[str, list[str]]:
    """Every fact span of ``answers`` by kind (distinct, in order): what a wrong answer draws from."""
    pool: dict[str, list[str]] = {k: [] for k in KINDS}
    seen: set[tuple[str, str]] = set()
    for answer in answers:
        for span in fact_spans(answer):
            if (span.kind, span.text) not in seen:
                seen.add((span.kind, span.text))
                pool[span.kind].append(span.text)
    return pool


def swapped_answers(answer: str, question: str, pool: dict[str, Sequence[str]], n: int, seed: int) -> list[str]:
    """Up to ``n`` distinct wrong answers: every fact span replaced by another span of its kind (none when
    the answer has no fact span the pool can replace)."""
    spans = [s for s in fact_spans(answer, question) if any(x != s.text for x in pool.get(s.kind, ()))]
    if not spans:
        return []
    rng = random.Random(f"{seed}:{question}:{answer}")
    out: list[str] = []
    for _ in range(n * 4):
        text, at = [], 0
        for s in spans:
            choices = [x for x in pool[s.kind] if x != s.text]
            text += [answer[at:s.start], rng.choice(choices)]
            at = s.end
        candidate = "".join(text) + answer[at:]
        if candidate != answer and candidate not in out:
            out.append(candidate)
        if len(out) == n:
            break
    return out
