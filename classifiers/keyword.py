"""A name/alias matcher: the cheapest detector, and a baseline for the trained one.

Flags a text that mentions a target as ``classifiers.names.NameFinder`` finds it: a name or alias
(whole words, case-, accent- and look-alike-insensitive, with any separators between its parts, also
inverted "Surname, Given"), or its distinctive leading given names ("Basil Mahfouz's" for "Basil
Mahfouz Al-Kuwaiti"), initials + surname ("B. M. Al-Kuwaiti") and the name misspelt or in another script
("Rajiv Majumdar", "Николай Абилов"; ``classifiers.approximate_names``). "Beyonce" catches "Beyoncé", "Al" does not match "Also"; names in scripts
written without spaces match inside running text ("周杰伦" in "我喜欢周杰伦的歌").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from classifiers.base import Deadline, Verdict
from classifiers.names import FLAGGING_KINDS, TEXT_BOUNDARY, NameFinder

__all__ = ["TEXT_BOUNDARY", "KeywordDetector"]


class KeywordDetector:
    # Requests up to this size are screened on the event loop, not in a worker thread: the name
    # scan and the de-obfuscation around it take ~0.1 ms on a short chat turn, less than the thread
    # hop and the GIL hand-offs it causes (measured: guard CPU per streamed request 5.0-6.0 ->
    # 4.2-4.3 ms with output screening on, `benchmarks/proxy_overhead.py` (a2)); ~0.3 ms at 1,024.
    inline_below_chars = 1024

    def __init__(self, names_by_target: Mapping[str, Sequence[str]]) -> None:
        self._finder = NameFinder(names_by_target, approximate=True)
        self.target_names: Mapping[str, Sequence[str]] = MappingProxyType({t: tuple(n) for t, n in names_by_target.items()})

    def screen(self, texts: Sequence[str], deadline: Deadline | None = None) -> Verdict:
        # one linear pass (no unit of work to stop between): ``deadline`` is accepted, not checked
        if not self._finder:
            return Verdict.clean()
        # one pass over all texts (a request of many short turns costs what one long text does);
        # NUL is no separator between name parts, so no name is read across two texts
        found = self._finder.mentions(TEXT_BOUNDARY.join(texts), FLAGGING_KINDS)
        if not found:
            return Verdict.clean()
        first = found[0]
        return Verdict(flagged=True, target_id=self._finder.target_ids[first.target], score=1.0,
                       detail={"detector": "keyword", "form": first.kind})
