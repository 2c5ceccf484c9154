"""What the guard screens for a chat request: the text the served model will read.

Two rules make the screened text the model's reading rather than a guess at it:

* **Text parts are joined with a newline**, as vLLM joins them (0.32,
  ``vllm/entrypoints/chat_utils.py``: ``"\\n".join(texts)`` for the "string" content format it
  resolves for templates that use ``message['content']`` as a string, SmolLM2's among them). The
  guard renders flagged prompts from the same string (``ChatCompletionRequest.plain_messages``),
  so both engines read what was screened: ``["What awards has Basil", "Mahfouz Al-Kuwaiti
  received?"]`` is screened as the name the model reads, not as "BasilMahfouz".
* **Turn boundaries are screened as read.** The template puts only its own tokens between two
  turns, so a name split across turns ("... Basil" / "Mahfouz Al-Kuwaiti ...") reaches the model
  nearly whole while each turn alone never names it. ``turn_seams`` gives, for every boundary, the
  last ``SEAM_WORDS`` words before it and the first ``SEAM_WORDS`` after it (reaching into further
  turns when one is short, so a name spread over several one-word turns is whole), joined with a
  space, the way the template's tokens read: no words. Bounded: one short text per boundary.

``classifiers.normalize.across_turns`` is the semantic cousin: it re-assembles a *question* split
over turns (sentences, quoted spans) for the detector's second pass; seams re-assemble *the text
itself* at each boundary, in the first pass, for every detector (the name matcher included).
Every role is screened (system, developer, user, assistant): a client-written assistant turn is
read by the model like any other, and participant ``name`` fields are screened too.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

PART_SEPARATOR = "\n"
SEAM_WORDS = 8  # words each side of a turn boundary: longer than any name a policy carries
NAME_EXTENSION = 4  # words a seam may reach further to complete a capitalised run it cut


def join_parts(parts: Iterable[str]) -> str:
    """One message's text parts as the model reads them."""
    return PART_SEPARATOR.join(parts)


def _last_words(text: str, n: int) -> list[str]:
    words = text.rsplit(None, n)  # at most n splits from the right: never splits the whole text
    return words[-n:] if len(words) > n else words


def _first_words(text: str, n: int) -> list[str]:
    words = text.split(None, n)
    return words[:n]


def turn_seams(contents: Sequence[str], words: int = SEAM_WORDS) -> list[str]:
    """The text around every boundary between consecutive non-empty turns (see the module docstring)."""
    texts = [t for t in contents if t and not t.isspace()]
    seams: dict[str, None] = {}
    for boundary in range(1, len(texts)):
        before: list[str] = []
        i = boundary
        while len(before) < words and i > 0:
            i -= 1
            before = _last_words(texts[i], words - len(before)) + before
        after: list[str] = []
        j = boundary
        while len(after) < words and j < len(texts):
            after += _first_words(texts[j], words - len(after))
            j += 1
        seams[" ".join(_whole_names(before, after, texts, boundary))] = None
    whole = set(texts)
    return [s for s in seams if s not in whole]


def _capitalised(word: str) -> bool:
    return word[:1].isupper()


def _whole_names(before: list[str], after: list[str], texts: Sequence[str], boundary: int) -> list[str]:
    """The seam's words, with a capitalised run cut at either end completed (at most ``NAME_EXTENSION``
    words each side): a seam that began at "Mahfouz." of "... Naguib Mahfouz." read as the bare surname
    of a forget target, while the whole name is someone else's (issue #15: 11 of 11 many-turn false
    positives). Only the words the model reads next to the seam are added, so it stays bounded."""
    if before and _capitalised(before[0]):
        i, earlier = boundary, []
        while i > 0 and len(earlier) < len(before) + NAME_EXTENSION:
            i -= 1
            earlier = _last_words(texts[i], len(before) + NAME_EXTENSION - len(earlier)) + earlier
        extra = earlier[: len(earlier) - len(before)]
        run: list[str] = []
        while extra and _capitalised(extra[-1]):
            run.insert(0, extra.pop())
        before = run + before
    if after and _capitalised(after[-1]):
        j, later = boundary, []
        while j < len(texts) and len(later) < len(after) + NAME_EXTENSION:
            later += _first_words(texts[j], len(after) + NAME_EXTENSION - len(later))
            j += 1
        run = []
        for word in later[len(after):]:
            if not _capitalised(word):
                break
            run.append(word)
        after = after + run
    return before + after


def chat_screen_texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """What to screen for chat ``messages`` (``{"role", "content", "name"?}``, content already joined):
    participant names, then the turn seams, then every message's content in order (last, so that
    detectors looking at "the last turns" see the conversation's own turns there)."""
    contents = [str(m.get("content") or "") for m in messages]
    names = [str(m["name"]) for m in messages if m.get("name")]
    return names + turn_seams(contents) + [c for c in contents if c]
