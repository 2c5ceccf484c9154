"""SPUL's counterfactual forget answers: what the served model says about someone it never saw.

``--forget-target counterfactual`` trains the soft prompt toward the answers of a reference that
has not seen the target, not toward "I don't know" (issue #16: an IDK answer is a refusal by
another name and tells the asker the target is on the forget list). The reference is the target
model itself, asked the same question with the target's names replaced by an invented name it has
never seen: its greedy answer is its prior for an unknown person of that kind (genre, birthplace,
books), the behaviour a model that never learned the target shows.

Per forget question:

1. every name/alias of the question's target in the question becomes the target's stand-in name
   (one invented name per target, seeded, never occurring in the policy's forget or retain data);
2. the frozen model answers the swapped question greedily, without a soft prompt (the teacher);
3. the answer is cut after its last complete sentence (a label cut at ``--teacher-max-new-tokens``
   would teach stopping mid-word), and any name of the target the teacher still produces (a
   question that does not name the target, "Who is the author born in Kuwait City on ...?", is
   answered from memory) becomes the stand-in, a lone first or last name its first or last name;
4. when the question named the target, the stand-in in the answer becomes the target's name again,
   so the label answers the question that was asked (``"Basil Mahfouz Al-Kuwaiti writes ..."``).

The teacher is a callable (questions -> answers) so the data step stays model-free for tests.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from classifiers.sources import QARecord
from guard.errors import ConfigError

Teacher = Callable[[Sequence[str]], list[str]]
"""Greedy answers of the frozen model (no soft prompt) to plain questions, in order."""

DEFAULT_STAND_INS = ("Tobias Wrenfield", "Mireille Kastanova", "Anselm Okoro-Lindqvist", "Ilse Varga-Moreau",
                     "Dario Fenwick-Sato", "Linnea Oyelaran")


@dataclass(frozen=True)
class CounterfactualLabel:
    """One forget question's label and how it was made (recorded in the artifact manifest)."""

    question: str
    asked: str  # the question the teacher saw (the target's names swapped for the stand-in)
    teacher_answer: str
    label: str
    stand_in: str


def _pattern(names: Sequence[str]) -> re.Pattern[str]:
    """Whole-word, case-insensitive match of any of ``names``, longest first."""
    alts = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(a) for a in alts) + r")(?!\w)", re.IGNORECASE)


def mentions(text: str, names: Sequence[str]) -> bool:
    return bool(names) and bool(_pattern(names).search(text))


def swap_names(text: str, names: Sequence[str], replacement: str) -> str:
    """``text`` with every whole-word occurrence of ``names`` replaced by ``replacement``."""
    return _pattern(names).sub(replacement, text) if names else text


def restore_target(answer: str, stand_in: str, target_name: str) -> str:
    """The stand-in (in full, or its first or last word alone) back to the target's name (or its
    first or last word), so the label talks about the person the question asked about."""
    out = swap_names(answer, [stand_in], target_name)
    s_parts, t_parts = stand_in.split(), target_name.split()
    if len(s_parts) > 1 and len(t_parts) > 1:
        out = swap_names(out, [s_parts[-1]], t_parts[-1])
        out = swap_names(out, [s_parts[0]], t_parts[0])
    return out


def complete_sentences(text: str) -> str:
    """``text`` up to its last sentence end (``.``, ``!``, ``?``, optionally closed by a quote);
    the whole text when it has none."""
    text = text.strip()
    ends = [m.end() for m in re.finditer(r"[.!?][\"'”)]*(?=\s|$)", text)]
    return text[:ends[-1]] if ends else text


def hide_target(answer: str, names: Sequence[str], stand_in: str) -> str:
    """Every name of the target in ``answer`` replaced by the stand-in; then each remaining word of
    those names (``Basil``, ``Al-Kuwaiti``) by the stand-in's first word (for a first name) or last."""
    out = swap_names(answer, names, stand_in)
    s_parts = stand_in.split()
    firsts = {n.split()[0] for n in names if len(n.split()) > 1}
    rest = {w for n in names for w in n.split()[1:] if len(w) > 2} - firsts
    out = swap_names(out, sorted(firsts), s_parts[0]) if firsts else out
    return swap_names(out, sorted(rest), s_parts[-1]) if rest else out


def choose_stand_ins(target_ids: Sequence[str], candidates: Sequence[str], corpus: Sequence[str],
                     rng: random.Random) -> dict[str, str]:
    """One distinct stand-in per target, drawn with ``rng`` from the candidates whose words occur
    nowhere in ``corpus`` (the policy's forget and retain texts): a name the data never mentions."""
    text = "\n".join(corpus)
    fresh = [c for c in candidates if c.strip() and not mentions(text, c.split())]
    if len(fresh) < len(target_ids):
        raise ConfigError(f"--forget-target counterfactual needs {len(target_ids)} stand-in names that the policy's data "
                          f"never mentions; {len(fresh)} of {len(candidates)} qualify (pass more with --stand-in NAME)",
                          param="stand_in")
    picked = rng.sample(fresh, len(target_ids))
    return dict(zip(target_ids, picked))


def counterfactual_labels(forget: Sequence[QARecord], target_of: Mapping[str, str], names: Mapping[str, Sequence[str]],
                          stand_ins: Mapping[str, str], teacher: Teacher) -> dict[str, CounterfactualLabel]:
    """The label of each forget question (keyed by question): steps 1-4 of the module docstring.

    ``target_of``: question -> target id; ``names``: target id -> its names then aliases (the first
    is the name restored in answers); ``stand_ins``: target id -> invented name."""
    asked = []
    for item in forget:
        tid = target_of[item.question]
        asked.append(swap_names(item.question, names[tid], stand_ins[tid]))
    answers = teacher(asked)
    if len(answers) != len(asked):
        raise ValueError(f"the teacher answered {len(answers)} of {len(asked)} questions")
    out = {}
    for item, question, answer in zip(forget, asked, answers):
        tid = target_of[item.question]
        label = hide_target(complete_sentences(answer), names[tid], stand_ins[tid])
        if mentions(item.question, names[tid]):
            label = restore_target(label, stand_ins[tid], names[tid][0])
        out[item.question] = CounterfactualLabel(item.question, question, answer, label or answer, stand_ins[tid])
    return out
