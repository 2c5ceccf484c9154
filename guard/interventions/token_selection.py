"""Which prompt tokens ECO corrupts.

* ``entity``: the tokens that overlap a mention of the target's names or aliases, wherever the
  model reads it: the content of every message whatever its role (system, developer, user,
  assistant: a question placed in a system turn is answered as readily as one in a user turn),
  anything else the template renders (participant names), and a name split across two turns
  (the contents joined as the model reads them, template tokens left out). Mentions are found
  case- and accent-insensitively ("beyonce" finds "Beyoncé", "BASIL mahfouz" finds "Basil
  Mahfouz") by the keyword detector's own matcher (``classifiers.names``: look-alike letters,
  invisible characters, any separators between the parts of a name, inverted order, distinctive
  leading given names), so ECO corrupts exactly what the detector flagged; the character spans are then mapped onto the served model's tokens
  through the tokenizer's offsets (a token is selected when its characters overlap a mention, so
  byte-level tokens that carry part of a multi-byte character are selected too). Names written in
  scripts without spaces between words (CJK, kana, Hangul, Thai...) match inside running text;
  names in other scripts only match as whole words ("Al" does not match "Also").
  If no mention is found, the whole content is selected (``all_content``): the detector flagged
  the request for what it says, and that may sit in any turn.
* ``all_content``: every token of every message's content, whatever its role. ``all_user`` is its
  older name (from when only user turns were corrupted), still accepted in policies and artifacts.

Only content is selected, never the chat template's own tokens (role headers, end-of-turn, a
default system prompt the template adds), so the model still sees a well-formed conversation. When
the template hides the content from us (it rewrites messages, so no span is known), the whole
prompt text except special tokens is the content. A flagged prompt is therefore never left
uncorrupted unless it has no content at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import numpy as np
import torch

from classifiers.names import find_name_spans  # the keyword detector's matcher: ECO finds what it flagged
from guard.engines.base import MessageSpan, RenderedPrompt

MODES = ("entity", "all_content", "all_user")
_LEGACY_MODES = {"all_user": "all_content"}


def find_mentions(text: str, names: Iterable[str]) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``text`` where any of ``names`` is mentioned (merged, sorted):
    exactly what the keyword detector flags (``classifiers.names``: look-alike letters, invisible
    characters, any separators between the parts, inverted order, distinctive given names)."""
    return find_name_spans(text, names)


@dataclass(frozen=True)
class Selection:
    """The positions to corrupt in a rendered prompt, and why they were chosen."""

    positions: tuple[int, ...]
    mode: str  # 'entity' (name mentions), 'all_content' (all content), 'none' (nothing to select)
    mentions: tuple[tuple[int, int], ...] = ()  # character spans of the mentions found
    length: int = 0

    def mask(self, length: int | None = None) -> torch.Tensor:
        out = np.zeros(self.length if length is None else length, dtype=bool)  # numpy: no parallel kernel
        out[list(self.positions)] = True
        return torch.from_numpy(out)


def canonical_mode(mode: str) -> str:
    """``mode`` under its current name (``all_user`` -> ``all_content``); ValueError if unknown."""
    if mode not in MODES:
        raise ValueError(f"select must be one of {', '.join(MODES)}, got {mode!r}")
    return _LEGACY_MODES.get(mode, mode)


def content_regions(rendered: RenderedPrompt) -> list[MessageSpan]:
    """Every message's content in prompt order, whatever its role; the whole text when the template
    hid the content from us (no span is known)."""
    if rendered.spans:
        return sorted(rendered.spans, key=lambda s: s.char_start)
    return [MessageSpan("unknown", 0, len(rendered.token_ids), 0, len(rendered.text))]


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def mentions_as_read(rendered: RenderedPrompt, regions: Sequence[MessageSpan],
                     names: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of ``rendered.text`` where the model reads one of ``names``.

    Two searches: the rendered text itself (any role's content, participant names or anything else
    a template renders), and the contents joined with a space, which is how a name split across a
    turn boundary reads once the template's tokens between the turns are left out ("... Basil" /
    "Mahfouz Al-Kuwaiti ..."); a mention found there is mapped back onto both turns' characters.
    """
    spans = list(find_mentions(rendered.text, names))
    if len(regions) > 1:
        pieces: list[tuple[int, int, int]] = []  # (start in the joined view, start in rendered.text, length)
        cursor = 0
        for r in regions:
            pieces.append((cursor, r.char_start, r.char_end - r.char_start))
            cursor += r.char_end - r.char_start + 1
        joined = " ".join(rendered.text[r.char_start:r.char_end] for r in regions)
        for start, end in find_mentions(joined, names):
            for at, char_start, length in pieces:
                lo, hi = max(start, at), min(end, at + length)
                if lo < hi:
                    spans.append((char_start + lo - at, char_start + hi - at))
    return _merged(spans)


def tokens_overlapping(rendered: RenderedPrompt, spans: Sequence[tuple[int, int]],
                       special_ids: Collection[int] = ()) -> list[int]:
    """Positions of the tokens whose characters overlap any of ``spans`` (special tokens never).

    Linear in the prompt's characters and tokens (a coverage prefix sum), however many spans: a
    prompt of megabytes that names the target thousands of times costs one pass."""
    n_chars = len(rendered.text)
    delta = np.zeros(n_chars + 1, dtype=np.int64)
    for start, end in spans:
        delta[max(0, start)] += 1
        delta[min(n_chars, end)] -= 1
    covered = np.concatenate(([0], np.cumsum(np.cumsum(delta[:-1]) > 0)))
    offsets = np.asarray(rendered.offsets, dtype=np.int64).reshape(-1, 2).clip(0, n_chars)
    hit = (offsets[:, 1] > offsets[:, 0]) & (covered[offsets[:, 1]] > covered[offsets[:, 0]])
    if special_ids:
        hit &= ~np.isin(np.asarray(rendered.token_ids, dtype=np.int64), np.fromiter(special_ids, dtype=np.int64))
    return np.flatnonzero(hit).tolist()


def select_tokens(rendered: RenderedPrompt, names: Sequence[str], mode: str = "entity",
                  special_ids: Collection[int] = ()) -> Selection:
    """Positions of ``rendered`` to corrupt for a target with ``names`` (see the module docstring).

    Tokens are found by character overlap (not by the spans' token bounds), so a byte-level token
    holding the first bytes of a multi-byte first character is included. ``special_ids`` (the
    tokenizer's special tokens) are never selected.
    """
    mode = canonical_mode(mode)
    if not rendered.offsets or len(rendered.offsets) != len(rendered.token_ids):
        raise ValueError("the rendered prompt carries no token offsets; render it with return_offsets_mapping")
    n = len(rendered.token_ids)
    regions = content_regions(rendered)
    if mode == "entity" and names:
        mentions = mentions_as_read(rendered, regions, names)
        chosen = tokens_overlapping(rendered, mentions, special_ids) if mentions else []
        if chosen:
            return Selection(tuple(chosen), "entity", tuple(mentions), n)
    content = tokens_overlapping(rendered, [(r.char_start, r.char_end) for r in regions], special_ids)
    if content:
        return Selection(tuple(content), "all_content", (), n)
    return Selection((), "none", (), n)
