"""Payloads hidden in a request, in the forms a model decodes: base64, hex, URL-encoding, HTML
entities, ROT13 and reversed text (the last two are candidates only: see ``classifiers.normalize``).

A model reads base64 whatever its layout, so the screen decodes all of these:

* a plain run (standard or URL-safe alphabet, padded or not): ``QmFzaWwgTWFoZm91eg==``;
* a run broken into lines (MIME, PEM: lines of 76 or 64 characters) or into groups separated by
  spaces (``QmFz aWwg TWFo ...``): consecutive whitespace-separated chunks of one length that is a
  multiple of 4, the last one possibly shorter;
* payloads inside payloads, down to ``MAX_DEPTH`` levels.

Every run in the text is decoded (no "first N" cap: the work is linear in the text, and a question
placed after any number of decoys is found). What cannot be decoded within the bounds is not
passed silently: a payload still nested below ``MAX_DEPTH`` levels, or a run longer than
``MAX_PAYLOAD_CHARS``, raises ``ScreeningIncomplete`` so the pipeline applies the policy's fail mode.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from collections.abc import Iterator
from urllib.parse import unquote

from classifiers.base import ScreeningIncomplete

MAX_DEPTH = 4                 # levels of base64 inside base64 that are decoded
MAX_PAYLOAD_CHARS = 16 << 20  # above any body the guard accepts: padding a payload does not hide it
MIN_PAYLOAD_CHARS = 12        # shorter runs are ordinary words ("Mississippi1")
_TRIM = 2                     # words a grouped run may carry on either side ("this: QmFz aWwg ...")

_ALPHABET = r"A-Za-z0-9+/_\-"
_B64_RE = re.compile(rf"(?<![{_ALPHABET}=])[{_ALPHABET}]{{{MIN_PAYLOAD_CHARS},}}={{0,2}}(?![{_ALPHABET}=])")
_CHUNK_RE = re.compile(r"\S+")
_PURE = re.compile(rf"[{_ALPHABET}]+={{0,2}}")
_EDGE = "\"'`()[]{}<>.,;:!?*«»“”‘’"


def decode_run(run: str) -> str | None:
    """The text a base64 run encodes, if it is printable text (not binary, not a long word)."""
    raw = run.rstrip("=")
    if len(raw) > MAX_PAYLOAD_CHARS:
        raise ScreeningIncomplete(f"a base64 run of {len(raw)} characters is longer than the {MAX_PAYLOAD_CHARS} "
                                  "the screen decodes", param="messages")
    if len(raw) < MIN_PAYLOAD_CHARS or len(raw) % 4 == 1:
        return None
    if raw.isalpha() or raw.isdigit():  # a long word or a number, not base64-looking
        return None
    padded = raw + "=" * (-len(raw) % 4)
    try:
        data = (base64.urlsafe_b64decode(padded) if ("-" in raw or "_" in raw) else base64.b64decode(padded, validate=True))
        text = data.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return text if readable(text) else None


def readable(text: str) -> bool:
    """Printable text, mostly letters: what an encoder was given, not binary noise."""
    printable = sum(ch.isprintable() or ch in "\n\t\r" for ch in text)
    return bool(text.strip()) and printable >= 0.95 * len(text) and sum(ch.isalpha() for ch in text) >= 0.5 * len(text.replace(" ", ""))


def _grouped_runs(text: str) -> Iterator[list[str]]:
    """Maximal sequences of whitespace-separated chunks that look like one broken-up run: all of one
    length ``L`` (a multiple of 4), the last one at most ``L`` long (it may carry the padding)."""
    chunks: list[str | None] = []
    for m in _CHUNK_RE.finditer(text):
        c = m.group(0).strip(_EDGE)
        chunks.append(c if c and _PURE.fullmatch(c) else None)
    i, n = 0, len(chunks)
    while i < n:
        first = chunks[i]
        if first is None or len(first) % 4 or "=" in first:
            i += 1
            continue
        size, k = len(first), i + 1
        while k < n and (c := chunks[k]) is not None and len(c) == size and "=" not in c:
            k += 1
        if k < n and (c := chunks[k]) is not None and len(c) <= size:
            k += 1
        if k - i >= 2:
            yield chunks[i:k]  # type: ignore[misc]
            i = k
        else:
            i += 1


def _decode_grouped(parts: list[str]) -> str | None:
    """Decode a grouped run, allowing up to ``_TRIM`` ordinary words glued on either side; a
    candidate of whole 4-character quanta (what an encoder writes) is preferred to a padded one."""
    spans = [(start, len(parts) - cut) for start in range(min(_TRIM, len(parts) - 2) + 1)
             for cut in range(min(_TRIM, len(parts) - start - 2) + 1)]
    lengths = {(a, b): sum(len(p) for p in parts[a:b]) for a, b in spans}
    for a, b in sorted(spans, key=lambda sp: lengths[sp] % 4 != 0):
        decoded = decode_run("".join(parts[a:b]))
        if decoded is not None:
            return decoded
    return None


def payloads_in(text: str) -> list[str]:
    """The texts hidden at the first level of ``text`` (plain runs, then broken-up runs), deduplicated."""
    found: list[str] = []
    for m in _B64_RE.finditer(text):
        decoded = decode_run(m.group(0))
        if decoded is not None:
            found.append(decoded)
    for parts in _grouped_runs(text):
        decoded = _decode_grouped(parts)
        if decoded is not None:
            found.append(decoded)
    return list(dict.fromkeys(found))


def base64_payloads(text: str, *, depth: int = MAX_DEPTH) -> list[str]:
    """Every text hidden in ``text`` as base64, nested up to ``depth`` levels (outer ones first).

    Raises ``ScreeningIncomplete`` when a payload at the last level still holds another one."""
    found: dict[str, None] = {}
    level = [text]
    for d in range(depth + 1):
        nxt = [p for p in dict.fromkeys(p for t in level for p in payloads_in(t)) if p not in found]
        if not nxt:
            break
        if d == depth:
            raise ScreeningIncomplete(f"the request hides base64 nested more than {depth} levels deep; the screen "
                                      f"decodes {depth}", param="messages")
        found.update(dict.fromkeys(nxt))
        level = nxt
    return list(found)


# --- hex, URL-encoding, HTML entities, ROT13, reversal -------------------------------------------

MIN_HEX_BYTES = 6
# byte pairs, optionally "\x"-prefixed or separated by one space/colon ("42 61 73", "42:61", "\x42\x61")
_HEX_RE = re.compile(rf"(?<![0-9A-Fa-f])(?:(?:\\x)?[0-9A-Fa-f]{{2}}[ :]?){{{MIN_HEX_BYTES},}}")
_HEX_DIGITS = re.compile(r"[^0-9A-Fa-f]+")
_URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_HTML_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_BIDI_OVERRIDES = ("\u202e", "\u202d", "\u2067", "\u2066", "\u2068")


def hex_payloads(text: str) -> list[str]:
    """Texts hidden in ``text`` as hex bytes (UTF-8), every run, readable ones only."""
    found: list[str] = []
    for m in _HEX_RE.finditer(text):
        run = m.group(0)
        if len(run) > MAX_PAYLOAD_CHARS:
            raise ScreeningIncomplete(f"a hex run of {len(run)} characters is longer than the {MAX_PAYLOAD_CHARS} "
                                      "the screen decodes", param="messages")
        # an ordinary word of hex letters may lead the run ("decode 57686f..."): also try without it
        starts = [0] + [i + 1 for i, ch in enumerate(run[:_TRIM * 8]) if ch in " :"][:_TRIM]
        for start in starts:
            digits = _HEX_DIGITS.sub("", run[start:].replace("\\x", ""))
            try:
                decoded = bytes.fromhex(digits[:len(digits) // 2 * 2]).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
            if readable(decoded):
                found.append(decoded)
                break
    return list(dict.fromkeys(found))


def url_decoded(text: str) -> str | None:
    """``text`` with %XX escapes decoded (and "+" as a space when the text has no spaces), if it has any."""
    if "%" not in text or _URL_ESCAPE.search(text) is None:
        return None
    out = unquote(text, errors="replace")
    if " " not in text.strip():
        out = out.replace("+", " ")
    return out if out != text else None


def html_decoded(text: str) -> str | None:
    """``text`` with HTML character references decoded ("&#66;&#97;" -> "Ba"), if it has any."""
    if "&" not in text or _HTML_ENTITY.search(text) is None:
        return None
    out = html.unescape(text)
    return out if out != text else None


def rot13(text: str) -> str:
    return codecs.decode(text, "rot13")


def reversals(text: str) -> list[str]:
    """``text`` read backwards: all of it, and each word on its own ("zuofhaM lisaB", "lisaB zuofhaM")."""
    return [text[::-1], " ".join(w[::-1] for w in text.split(" "))]


def bidi_reversed(text: str) -> str | None:
    """What follows a bidi override/isolate character, reversed (how ``\u202e?fuohaM ...`` renders), if any."""
    cut = max(text.rfind(c) for c in _BIDI_OVERRIDES)
    if cut < 0:
        return None
    return text[:cut] + text[cut + 1:][::-1]
