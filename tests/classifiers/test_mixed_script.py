"""Mixed-script words (UTS #39): which words mix Latin with another script, and the transliteration used in them."""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest
import regex

from classifiers.mixed_script import (
    BREAK,
    LATIN,
    NEUTRAL,
    OTHER,
    ascii_stand_in,
    letter_class,
    mixed_script_words,
    small_capital_of,
    transliterate,
)


def _classes(text: str) -> str:
    return "".join(letter_class(ch) for ch in text)


@pytest.mark.parametrize("ch, cls", [
    ("a", LATIN), ("ĸ", LATIN), ("ᴛ", LATIN), ("Ｍ", LATIN),
    ("τ", OTHER), ("Ж", OTHER), ("օ", OTHER), ("Ꭺ", OTHER),
    ("\u0301", NEUTRAL), ("漢", NEUTRAL), ("シ", NEUTRAL), ("한", NEUTRAL), ("𝐌", NEUTRAL),
    (" ", BREAK), ("-", BREAK), ("7", BREAK), ("'", BREAK),
])
def test_letter_class_follows_the_script_property(ch: str, cls: str) -> None:
    assert letter_class(ch) == cls


@pytest.mark.parametrize("text, words", [
    ("Basil Al-Kuwaiτi", ["Kuwaiτi"]),
    ("Βasil Mahfouz", ["Βasil"]),            # other script first
    ("Kuwai\u0301τi and ξ", ["Kuwai\u0301τi"]),  # a mark does not end a word
    ("Привет, Basil", []),                   # a Russian word next to a Latin one: no word mixes
    ("Москва μm", ["μm"]),
    ("Tシャツ 漢a", []),                      # Latin next to Han/kana is allowed (Highly Restrictive)
    ("", []),
])
def test_mixed_script_words_are_the_words_holding_latin_and_another_script(text: str, words: list[str]) -> None:
    assert [text[s:e] for s, e in mixed_script_words(_classes(text))] == words


@pytest.mark.parametrize("text", ["a" * 50_000 + "κ", "κ" * 50_000 + "a", ("a" * 999 + " ") * 50 + "κ",
                                  "\u0301" * 50_000 + "a"])
def test_long_words_are_searched_once(text: str) -> None:
    """A long word that is (or is not) mixed is one match or none: the search is anchored at word starts."""
    found = mixed_script_words(_classes(text))
    expected = [] if "κ" not in text or " " in text else [(0, len(text))]
    assert found == expected


@pytest.mark.parametrize("ch, ascii_form", [("κ", "k"), ("τ", "t"), ("Ж", "Zh"), ("ъ", ""), ("β", "v"), ("ʙ", "b")])
def test_transliteration_is_ascii_letters_with_case(ch: str, ascii_form: str) -> None:
    assert transliterate(ch) == ascii_form


@pytest.mark.parametrize("ch, prototype, stand_in", [
    ("в", "ʙ", "b"), ("н", "ʜ", "h"), ("τ", "ᴛ", "t"),   # prototype is a small capital: the letter it reads as
    ("κ", "ĸ", "k"), ("ε", "ꞓ", "e"), ("и", "ᴎ", "i"),   # other prototypes: the letter's transliteration
    ("Ж", "ж", "Zh"), ("ъ", "ˉb", ""),
])
def test_ascii_stand_in_prefers_a_small_capital_prototype_then_transliteration(ch: str, prototype: str, stand_in: str) -> None:
    assert ascii_stand_in(ch, prototype) == stand_in


def test_small_capitals_are_read_from_unicode_names() -> None:
    assert [small_capital_of(c) for c in "ᴀʙᴛʜɢ"] == list("abthg")
    assert small_capital_of("ᴎ") is None and small_capital_of("ĸ") is None and small_capital_of("ab") is None


def test_transliteration_writes_latin_letters_as_the_letter_they_are_named_after() -> None:
    """The measured reason for anyascii (Unidecode manages 666 of these 797): Latin letters whose
    Unicode name is one ASCII letter with a shape or mark (small capital, turned, hook, stroke)."""
    latin = regex.compile(r"\p{Script=Latin}")
    named = re.compile(r"LATIN (?:SMALL |CAPITAL )?LETTER "
                       r"(?:SMALL CAPITAL |TURNED |REVERSED |SCRIPT |DOTLESS )?([A-Z])(?: WITH .*)?$")
    pairs = []
    for cp in range(0x80, sys.maxunicode + 1):
        ch = chr(cp)
        m = named.match(unicodedata.name(ch, "")) if unicodedata.category(ch).startswith("L") else None
        if m and latin.match(ch):
            pairs.append((ch, m.group(1).lower()))
    agree = sum(transliterate(ch).lower() == letter for ch, letter in pairs)
    assert len(pairs) > 700 and agree >= 0.9 * len(pairs)
