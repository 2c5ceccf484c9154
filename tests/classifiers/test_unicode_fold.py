"""The matching fold: default-ignorables dropped, dash and space classes folded, TR39 look-alikes mapped."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifiers.mixed_script import ascii_stand_in
from classifiers.unicode_fold import (
    PROTOTYPES,
    fold_char,
    is_invisible,
    match_fold,
    match_fold_with_map,
    unconfuse,
    unconfuse_char,
)


@pytest.mark.parametrize("ch", ["\ufe0f", "\U000e0020", "\U000e0041", "\U000e007f", "\u2066", "\u2069", "\u180b",
                                "\u180e", "\ufff9", "\ufffb", "\u200b", "\u200d", "\u00ad", "\u034f", "\u115f",
                                "\u3164", "\ufe00", "\u2064", "\U0001d173"])
def test_invisible_characters_are_dropped(ch: str) -> None:
    assert is_invisible(ch) and fold_char(ch) == ""
    assert match_fold(f"Ba{ch}sil") == "basil" and unconfuse(f"Ba{ch}sil") == "Basil"


def test_every_default_ignorable_code_point_is_dropped() -> None:
    """The Unicode property as a whole (from the ``regex`` package's tables), not a hand list: every
    code point of DerivedCoreProperties' Default_Ignorable_Code_Point ranges folds to nothing."""
    import regex

    di = regex.compile(r"\p{Default_Ignorable_Code_Point}")
    found = [cp for cp in range(sys.maxunicode + 1) if di.match(chr(cp))]
    assert len(found) > 4000 and 0xE0001 in found and 0x1D173 in found  # tags, musical format marks
    assert all(fold_char(chr(cp)) == "" for cp in found)


@pytest.mark.parametrize("dash", ["\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2015", "\u2212", "\ufe63",
                                  "\uff0d", "\u2e3a", "\u301c"])
def test_dash_classes_become_a_hyphen(dash: str) -> None:
    assert match_fold(f"Al{dash}Kuwaiti") == "al-kuwaiti"


def test_every_dash_punctuation_folds_to_a_hyphen() -> None:
    dashes = [chr(cp) for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Pd"]
    assert len(dashes) > 20 and all(fold_char(d) == "-" for d in dashes if not d.isascii())


@pytest.mark.parametrize("space", ["\t", "\n", "\r\n", "\u00a0", "\u1680", "\u2000", "\u2007", "\u200a", "\u2028",
                                   "\u2029", "\u202f", "\u205f", "\u3000", "\x85", "\x0b"])
def test_space_classes_fold_to_whitespace(space: str) -> None:
    folded = match_fold(f"Basil{space}Mahfouz")
    assert folded.startswith("basil") and folded.endswith("mahfouz") and folded[5:-7].isspace()


@pytest.mark.parametrize("text, expected", [
    ("Basıl", "basil"),            # dotless i
    ("ɑl-Kuwaiti", "al-kuwaiti"),  # Latin alpha
    ("Mahfօuz", "mahfouz"),        # Armenian oh
    ("Мahfоuz", "mahfouz"),        # Cyrillic capital em, small o
    ("Ｍａｈｆｏｕｚ", "mahfouz"),     # full-width
    ("𝐌𝐚𝐡𝐟𝐨𝐮𝐳", "mahfouz"),      # mathematical bold
    ("Beyoncé", "beyonce"),
    ("ⅿahfouz", "mahfouz"),        # prototype "rn" is written as the letter it stands for
    ("Straße", "strasse"),
])
def test_look_alikes_fold_to_the_letters_they_imitate(text: str, expected: str) -> None:
    assert match_fold(text) == expected


def test_ascii_keeps_its_letters() -> None:
    text = "Mill, 1961: I|l0O rn m"
    assert match_fold(text) == text.lower()


def test_prototypes_come_from_the_uts39_table() -> None:
    assert len(PROTOTYPES) > 6000 and PROTOTYPES["\u0131"] == "i" and PROTOTYPES["\u0585"] == "o"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_fold_map_points_back_to_the_original(text: str) -> None:
    folded, index = match_fold_with_map(text)
    assert folded == match_fold(text) and len(index) == len(folded)
    assert all(0 <= index[i] < len(text) for i in range(len(folded)))
    assert list(index) == sorted(index)
    # each folded character comes from the fold of the character it points at (or, in a mixed-script
    # word, from its transliteration)
    assert all(folded[i] in fold_char(src) or folded[i] in ascii_stand_in(src, fold_char(src)).lower()
               for i, src in ((i, text[index[i]]) for i in range(len(folded))))


# ------------------------------------------------------------------ mixed-script words (UTS #39)

def _per_character(text: str) -> str:
    return "".join(fold_char(ch) for ch in text)


@pytest.mark.parametrize("text, expected", [
    ("Al-Kuwaiτi", "al-kuwaiti"),           # Greek tau: TR39 prototype is the small capital T
    ("Κuwaiκi", "kuwaiki"),                 # Greek kappa: TR39 prototype is kra
    ("Kuwai\u200bτi", "kuwaiti"),           # an invisible character does not split the word
    ("Kuwai\u0301τi", "kuwaiti"),           # nor does a combining mark
    ("Жasil", "zhasil"),                    # transliteration may be longer than one letter
    ("вasil Maнfouz", "basil mahfouz"),     # Cyrillic ve/en: TR39 prototypes are the small capitals B/H
    ("Mahfouz Βasil", "mahfouz basil"),     # TR39 already maps beta to B: unchanged
])
def test_other_script_letters_in_a_latin_word_are_transliterated(text: str, expected: str) -> None:
    assert match_fold(text) == expected
    folded, index = match_fold_with_map(text)
    assert folded == expected and len(index) == len(folded)


@pytest.mark.parametrize("text", [
    "Привет, мир! Как дела у Басила?",       # a Russian sentence
    "Η Αθήνα είναι πρωτεύουσα.",            # a Greek one
    "Москва and Basil Mahfouz",             # Russian and English words side by side
    "τ Kuwait",                             # a lone Greek letter is its own word
    "Tシャツ 漢字a",                          # Latin next to Han/kana is allowed by UTS #39
    "Kuwai7τ",                              # a digit ends a word
])
def test_words_in_one_script_keep_the_per_character_fold(text: str) -> None:
    assert match_fold(text) == _per_character(text)


def test_unconfuse_transliterates_mixed_words_keeping_case() -> None:
    assert unconfuse("Βasil AL-KUWAIΤI of Κuwaiκi") == "Basil AL-KUWAITI of Kuwaiki"
    russian = "Привет, Basil"  # TR39 look-alikes still map letter by letter; nothing is transliterated
    assert unconfuse(russian) == "".join(unconfuse_char(ch) for ch in russian)


_MIXED_ALPHABET = "abkKtTiu τκΚΤβЖжвНнъıᴛ\u200b\u0301-7漢"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_MIXED_ALPHABET, max_size=60))
def test_fold_map_of_mixed_words_points_back_to_the_original(text: str) -> None:
    folded, index = match_fold_with_map(text)
    assert folded == match_fold(text) and len(index) == len(folded)
    assert list(index) == sorted(index) and all(0 <= i < len(text) for i in index)
    for i, ch in enumerate(folded):
        src = text[index[i]]
        assert ch in fold_char(src) or ch in ascii_stand_in(src, fold_char(src)).lower()
    # every source position that folds to something is pointed at, in order
    assert sorted(set(index)) == [i for i, ch in enumerate(text) if fold_char(ch)]


def test_a_name_found_in_the_fold_maps_back_to_the_name_as_written() -> None:
    """ECO maps name spans in the fold back to the text's characters (and from there to tokens)."""
    text = "Tell me about Жasil Mahfouz Al-Ku\u200bwaiτi's books, and Мосва."
    folded, index = match_fold_with_map(text)
    start = folded.index("al-kuwaiti")
    end = start + len("al-kuwaiti")
    assert text[index[start]:index[end - 1] + 1] == "Al-Ku\u200bwaiτi"
    start = folded.index("zhasil")
    assert text[index[start]:index[start + len("zhasil") - 1] + 1] == "Жasil"
