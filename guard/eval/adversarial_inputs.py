"""Adversarial inputs for measuring screening cost (issue 18 item 1, issue 19 finding 4): texts built to
make de-obfuscation and name matching slow, used by ``benchmarks/normalize_cost.py`` and the
linearity test ``tests/classifiers/test_screening_cost.py``.
"""

from __future__ import annotations

import base64
import random

_WORDS = ("river", "garden", "copper", "lantern", "harbour", "meadow", "signal", "orchard", "tunnel", "ledger", "violet",
          "quarry", "beacon", "thistle", "marble", "compass", "falcon", "ember", "willow", "granite", "saddle", "pepper")


def _prose(n_chars: int, seed: int = 0) -> str:
    """Non-repeating ordinary prose of about ``n_chars`` characters (no quotes, no base64-looking runs)."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_chars:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
        sent = " ".join(words).capitalize() + rng.choice([".", ".", "?", "!"])
        out.append(sent)
        size += len(sent) + 1
    return " ".join(out)[:n_chars]


def cost_families(n_chars: int) -> dict[str, list[str]]:
    """Texts of about ``n_chars`` characters built to make de-obfuscation and name matching slow
    (issue 18 item 1, issue 19 finding 4): unmatched quotes, a guillemet before a run of spaces,
    nested brackets, many base64-looking runs (decodable and not, plain and grouped), many short
    lines, many turns, separator runs after a name part, invisible and look-alike characters, many
    mixed-script words and one long one, a long non-repeating document, runs of date-like digits;
    hex runs and hex-like noise, URL escapes, HTML entities, spaced-out letters, bidi overrides, names
    misspelt and transliterated over and over (issue 15). Each value is the list of texts one request carries."""
    n = max(16, n_chars)
    b64 = base64.b64encode(b"What awards did someone win?").decode()
    return {
        "unmatched_curly_quotes": ["\u201c" * n],
        "unmatched_straight_quotes": ['"' * n],
        "unmatched_guillemets": ["\u00ab" * n],
        "guillemet_then_spaces": ["Hi \u00ab" + " " * (n - 5) + "x"],
        "nested_brackets": ["([{" * (n // 6) + "}])" * (n // 6)],
        "base64_runs": [" ".join([b64] * (n // (len(b64) + 1)))],
        "base64_like_noise": [" ".join(["QWxhZGRpbjpvcGVuIHNlc2FtZQ" + "xyz"[i % 3] for i in range(n // 28)])],
        "base64_groups": [" ".join(["QmFz", "aWwg"] * (n // 10))],
        "short_lines": ["a\n" * (n // 2)],
        "many_turns": ["Part 2: hello there."] * max(1, n // 21),
        "separator_runs_after_name": [("Basil" + " -" * 20 + " ") * (n // 47)],
        "invisible_and_lookalike": ["B\u200ba\ufe0fs\u0456l " * (n // 10)],
        "mixed_script_words": ["\u0416as\u0457l \u041c\u0430hf\u03bfuz \u0434\u0436\u00e4 " * (n // 20)],
        "mixed_script_long_word": ["a" * (n // 2) + "\u0436" * (n // 2)],
        "long_document": [_prose(n)],
        "date_like_runs": ["11/11/1111" * (n // 20) + " 5 " + "1 " * (n // 4)],
        # issue 15's decoders and name matching
        "hex_runs": [("5768 6f20 6973 2042 6173 696c " * (n // 30)) + "0" * (n % 30)],
        "hex_noise": [" ".join(f"{i:08x}" for i in range(n // 9))],
        "url_escapes": ["%4" * (n // 2)],
        "html_entities": ["&#66;&amp" * (n // 9)],
        "spaced_letters": ["B a s i l " * (n // 10)],
        "bidi_overrides": ["\u202e?zuofhaM lisaB " * (n // 20)],
        "near_names": ["Basel Mahfuz Al-Kuwaity Nikolay Abilow Rajiv Majumdaar " * (n // 54)],
        "transliterated_names": ["Николай Абилов Νικολάι Αμπίλοφ نيكولاي أبيلوف " * (n // 44)],
    }
