"""Which prompt tokens ECO corrupts.

* ``entity``: the tokens of the **user** content that overlap a mention of the target's names or
  aliases. Mentions are found on the rendered prompt's text, case- and accent-insensitively
  ("beyonce" finds "Beyoncé", "BASIL mahfouz" finds "Basil Mahfouz"), with any run of whitespace
  between the words of a name; the character spans are then mapped onto the served model's tokens
  through the tokenizer's offsets (a token is selected when its characters overlap a mention, so
  byte-level tokens that carry part of a multi-byte character are selected too). Names written in
  scripts without spaces between words (CJK, kana, Hangul, Thai...) match inside running text;
  names in other scripts only match as whole words ("Al" does not match "Also").
  If no mention is found, every user-content token is selected (``all_user``).
* ``all_user``: every token of every user message's content.

Only content is selected, never the chat template's own tokens (role headers, end-of-turn), so the
model still sees a well-formed conversation. Without user content (only a system message) the other
non-assistant messages are the region; when the template hides the content from us (it rewrites
messages, so no span is known), the whole prompt text except special tokens is. A flagged prompt
is therefore never left uncorrupted unless it has no content at all.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Sequence

import numpy as np
import torch

from classifiers.text import fold, fold_with_map  # the keyword detector's folding: ECO finds what it flagged
from guard.engines.base import MessageSpan, RenderedPrompt

MODES = ("entity", "all_user")
_NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN",
                     "IDEOGRAPHIC", "HALFWIDTH KATAKANA", "BOPOMOFO", "YI ")


def _spaceless(ch: str) -> bool:
    """True for characters of scripts written without spaces between words."""
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return False
    return name.startswith(_NO_SPACE_SCRIPTS)


def _pattern(name: str) -> re.Pattern[str] | None:
    words = fold(name).split()
    if not words:
        return None
    body = r"\s+".join(re.escape(w) for w in words)
    head = "" if _spaceless(words[0][0]) or not words[0][0].isalnum() else r"(?<!\w)"
    tail = "" if _spaceless(words[-1][-1]) or not words[-1][-1].isalnum() else r"(?!\w)"
    return re.compile(head + body + tail)


def find_mentions(text: str, names: Iterable[str]) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``text`` where any of ``names`` is mentioned (merged, sorted)."""
    folded, index = fold_with_map(text)
    spans: list[tuple[int, int]] = []
    for name in sorted({n for n in names if n and n.strip()}, key=len, reverse=True):
        pattern = _pattern(name)
        if pattern is None:
            continue
        for m in pattern.finditer(folded):
            if m.end() > m.start():
                spans.append((index[m.start()], index[m.end() - 1] + 1))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass(frozen=True)
class Selection:
    """The positions to corrupt in a rendered prompt, and why they were chosen."""

    positions: tuple[int, ...]
    mode: str  # 'entity' (name mentions), 'all_user' (all user content), 'none' (nothing to select)
    mentions: tuple[tuple[int, int], ...] = ()  # character spans of the mentions found
    length: int = 0

    def mask(self, length: int | None = None) -> torch.Tensor:
        out = np.zeros(self.length if length is None else length, dtype=bool)  # numpy: no parallel kernel
        out[list(self.positions)] = True
        return torch.from_numpy(out)


def _regions(rendered: RenderedPrompt, roles: Sequence[str]) -> list[MessageSpan]:
    regions = [s for s in rendered.spans if s.role in roles]
    if regions:
        return regions
    # no user content (e.g. only a system message): the other non-assistant messages' content
    regions = [s for s in rendered.spans if s.role != "assistant"]
    if regions:
        return regions
    # no span is known (the template rewrote the content): the whole text is the region
    return [MessageSpan("user", 0, len(rendered.token_ids), 0, len(rendered.text))]


def select_tokens(rendered: RenderedPrompt, names: Sequence[str], mode: str = "entity",
                  roles: Sequence[str] = ("user",), special_ids: Collection[int] = ()) -> Selection:
    """Positions of ``rendered`` to corrupt for a target with ``names`` (see the module docstring).

    Region tokens are found by character overlap with the messages' content (not by the spans'
    token bounds), so a byte-level token holding the first bytes of a multi-byte first character is
    included. ``special_ids`` (the tokenizer's special tokens) are never selected.
    """
    if mode not in MODES:
        raise ValueError(f"select must be one of {', '.join(MODES)}, got {mode!r}")
    if not rendered.offsets or len(rendered.offsets) != len(rendered.token_ids):
        raise ValueError("the rendered prompt carries no token offsets; render it with return_offsets_mapping")
    n = len(rendered.token_ids)
    special = set(special_ids)
    regions = _regions(rendered, roles)
    region_tokens = sorted({i for r in regions for i, (s, e) in enumerate(rendered.offsets)
                            if e > s and s < r.char_end and e > r.char_start and rendered.token_ids[i] not in special})
    if mode == "entity" and names:
        mentions: list[tuple[int, int]] = []
        for r in regions:
            segment = rendered.text[r.char_start:r.char_end]
            mentions += [(r.char_start + s, r.char_start + e) for s, e in find_mentions(segment, names)]
        if mentions:
            chosen = sorted({i for i in region_tokens for s, e in mentions
                             if rendered.offsets[i][0] < e and rendered.offsets[i][1] > s})
            if chosen:
                return Selection(tuple(chosen), "entity", tuple(mentions), n)
    if region_tokens:
        return Selection(tuple(region_tokens), "all_user", (), n)
    return Selection((), "none", (), n)


def render_text_prompt(tokenizer: Any, prompt: str) -> RenderedPrompt:
    """A text-completion prompt as a ``RenderedPrompt``: the whole prompt is the user's content.

    Tokenised exactly as ``GuardRequest.prompt_ids`` does (the tokenizer's default special tokens).
    """
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = tuple(tuple(o) for o in enc["offset_mapping"])
    content = [i for i, (s, e) in enumerate(offsets) if e > s]
    start, end = (content[0], content[-1] + 1) if content else (0, 0)
    spans = (MessageSpan("user", start, end, 0, len(prompt)),) if content else ()
    return RenderedPrompt(text=prompt, token_ids=ids, spans=spans, offsets=offsets)
