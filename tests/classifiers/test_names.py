"""Name matching across scripts: whole words in spaced scripts, substrings in CJK/Thai/... text."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from classifiers.features import NameMatcher
from classifiers.keyword import KeywordDetector

NAMES = {"jay": ["周杰伦", "Jay Chou"], "murakami": ["村上春樹"], "park": ["박지연"], "thai": ["ทักษิณ"],
         "al": ["Al"], "swift": ["Taylor Swift"]}


@pytest.mark.parametrize("text, target", [
    ("我喜欢周杰伦的歌", "jay"),                        # Han name inside Han text
    ("周杰伦", "jay"),
    ("村上春樹の小説について教えてください", "murakami"),  # Han name followed by kana
    ("박지연은 누구입니까?", "park"),                    # Hangul name with an attached particle
    ("ทักษิณเกิดที่ไหน", "thai"),                        # Thai, no spaces
    ("我喜欢Taylor Swift的歌", "swift"),                # Latin name between Han characters
    ("我喜欢JAY CHOU。", "jay"),
    ("Al was here", "al"),
])
def test_keyword_matches_names_in_any_script(text: str, target: str) -> None:
    v = KeywordDetector(NAMES).screen([text])
    assert v.flagged and v.target_id == target


@pytest.mark.parametrize("text", ["Also, nothing here", "Taylor Swiftie fan club", "周杰 is not the full name", "村上の本"])
def test_keyword_keeps_word_boundaries_in_spaced_scripts(text: str) -> None:
    assert not KeywordDetector(NAMES).screen([text]).flagged


def test_name_matcher_features_see_cjk_names() -> None:
    m = NameMatcher({"jay": ["周杰伦", "Jay Chou"], "zorb": ["Zorblax Quenton"]})
    got = m.matrix(["我喜欢周杰伦的歌", "Quenton的作品", "Quentonx", "Chou"])
    assert got[0, 0, :2].tolist() == [1.0, 1.0] and got[0, 1].sum() == 0
    assert got[1, 1, :2].tolist() == [0.0, 1.0]      # a name part next to Han characters
    assert got[2].sum() == 0                         # not inside a longer Latin word
    assert got[3, 0, :2].tolist() == [0.0, 1.0]


def test_a_given_name_alone_is_its_own_column() -> None:
    from classifiers.features import MATCH_COLUMNS

    part, given = MATCH_COLUMNS.index("part"), MATCH_COLUMNS.index("given")
    m = NameMatcher({"osmond": ["Marie Osmond"], "harry": ["Prince Harry, Duke of Sussex"]})
    got = m.matrix(["Marie is at the music store.", "Osmond sang Paper Roses.", "What did Harry say?"])
    assert got[0, 0, given] == 1 and got[0, 0, part] == 0
    assert got[1, 0, part] == 1 and got[1, 0, given] == 0
    assert got[2, 1, part] == 1          # "Harry" is what Prince Harry is called, not a given name beside a surname


def test_passage_sentences_naming_the_target_by_a_short_surname_are_about_it(data_dir) -> None:
    """RWKU's Bruce Lee passages call him "Lee" (3 letters, too short to be a distinctive name part) and
    open sections with "=== ... ===": such sentences are about the target, never hard negatives."""
    import json
    import re

    from classifiers.text import split_sentences
    from classifiers.train import _mention_filter

    passages = json.loads((data_dir / "rwku" / "3_Bruce_Lee" / "passage.json").read_text(encoding="utf-8"))
    sentences = [s for p in passages for s in split_sentences(p["text"])]
    about = _mention_filter(["Bruce Lee"])
    with_lee = [s for s in sentences if re.search(r"\bLee\b", s)]
    assert len(with_lee) > 50 and all(about(s) for s in with_lee)
    headed = [s for s in sentences if re.match(r"=+[^=]+=+\s*(He|His)\b", s)]
    assert headed and all(about(s) for s in headed)
    assert not about("Chuck Norris founded a martial arts discipline called Chun Kuk Do.")


# ------------------------------------------------------------------ written however a reader still reads the name

BASIL = "Basil Mahfouz Al-Kuwaiti"
FILLER = ("The committee met on Thursday to review the budget, the new bicycle lanes and the library hours. " * 8).strip()


@pytest.mark.parametrize("written", [
    "Basil Mahfouz Al\u2013Kuwaiti", "Basil Mahfouz Al\u2011Kuwaiti", "Basil Mahfouz Al\u2212Kuwaiti",
    "Basil Mahfouz Al Kuwaiti", "Basil Mahfouz AlKuwaiti", "Basil Mahfouz\nAl-Kuwaiti", "Basil\u2028Mahfouz Al-Kuwaiti",
    "Bas\u0131l Mahfouz Al-Kuwaiti", "Basil Mahfouz \u0251l-Kuwaiti", "Basil Mahf\u0585uz Al-Kuwaiti",
    "Ba\ufe0fsil Mah\U000e0041fouz Al-\u2066Kuwaiti\u2069", "Bas\u180bil Mahfo\ufff9uz Al-Kuwaiti",
    "Basil  Mahfouz\tAl-Kuwaiti", "Basil\u1680Mahfouz Al-Kuwaiti", "Al-Kuwaiti, Basil Mahfouz", "Basil Mahfouz's",
    "Basil_Mahfouz_Al_Kuwaiti", "BASIL MAHFOUZ AL-KUWAITI",
])
@pytest.mark.parametrize("long_text", [False, True])
def test_issue_19_name_variants_are_flagged_and_found(written: str, long_text: bool) -> None:
    from guard.interventions.token_selection import find_mentions

    text = f"What does {written} write about?"
    if long_text:  # texts over 64 words used to be matched differently
        text = f"{FILLER} {text} {FILLER}"
    verdict = KeywordDetector({"basil": [BASIL]}).screen([text])
    assert verdict.flagged and verdict.target_id == "basil"
    start = text.index(written)
    spans = find_mentions(text, [BASIL])
    assert len(spans) == 1 and spans[0][0] == start
    core = written[:-2] if written.endswith("'s") else written
    letters = [start + i for i, ch in enumerate(core) if ch.isalnum()]
    assert all(spans[0][0] <= i < spans[0][1] for i in letters)


@pytest.mark.parametrize("text", [
    "Basil Mahfouz Smith wrote a cookbook.",          # leading given names of someone else
    "The basil mahfouz recipe is from Lebanon.",      # lower case in a text with capitals
    "Basil is a herb; Mahfouz is a surname.",         # the words apart
    "Al-Kuwaiti airline schedules",                   # one distinctive word is not the name
    "J.R.R. Tolkien wrote The Hobbit.",
])
def test_given_name_forms_keep_their_protection(text: str) -> None:
    names = {"basil": [BASIL], "cash": ["Johnny Cash", "J. R. Cash"]}
    assert not KeywordDetector(names).screen([text]).flagged


def test_a_name_with_a_comma_matches_with_or_without_it() -> None:
    detector = KeywordDetector({"harry": ["Prince Harry, Duke of Sussex"]})
    assert detector.screen(["What did Prince Harry, Duke of Sussex say?"]).flagged
    assert detector.screen(["What did Prince Harry Duke of Sussex say?"]).flagged
    assert not detector.screen(["What did the Duke of Sussex say?"]).flagged


def test_trained_features_see_variants_as_the_full_name() -> None:
    m = NameMatcher({"basil": [BASIL]}, {})
    got = m.matrix(["Who is Bas\u0131l Mahfouz Al\u2011Kuwaiti?", "Al-Kuwaiti, Basil Mahfouz wrote it.",
                    "Ba\u200bsil Mahf\u0585uz's father"])
    assert got[0, 0, 0] == 1 and got[1, 0, 0] == 1
    assert got[2, 0, 0] == 0 and got[2, 0, 1] == 1  # given names: a part of the name, not the name


# ------------------------------------------------------------------ property tests over real TOFU names

def _tofu_names(data_dir) -> list[str]:
    from guard.eval.bypass import tofu_names

    return tofu_names(data_dir, "forget10")


def _look_alikes() -> dict[str, list[str]]:
    """ASCII letter -> non-ASCII characters the fold maps to it (from the UTS #39 table)."""
    from classifiers.unicode_fold import PROTOTYPES, fold_char

    out: dict[str, list[str]] = {}
    for src in PROTOTYPES:
        f = fold_char(src)
        if not src.isascii() and len(f) == 1 and f.isascii() and f.isalpha():
            out.setdefault(f, []).append(src)
    return out


_INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufe0f", "\ufe00", "\U000e0041", "\U000e0020", "\u2066",
              "\u2069", "\u180b", "\u180e", "\ufff9", "\ufffb", "\u00ad", "\u034f", "\u061c", "\u115f"]
_SEPARATORS = [" ", "  ", "\t", "\n", "\r\n", " \n ", "\u00a0", "\u1680", "\u2028", "\u2029", "\u3000", "-", "\u2010",
               "\u2011", "\u2013", "\u2014", "\u2212", "\ufe63", "_", ""]


@st.composite
def name_variant(draw, names: list[str], look_alikes: dict[str, list[str]]):
    """(the name as written, the canonical name): confusables, separator and dash/space class swaps,
    inserted invisibles, inversion, case, optionally leading given names + possessive."""
    name = draw(st.sampled_from(names))
    words = name.split()
    form = draw(st.sampled_from(["plain", "inverted", "given"] if len(words) >= 3 else ["plain", "inverted"]))
    if form == "inverted":
        k = draw(st.integers(1, len(words) - 1))
        words = words[k:] + [","] + words[:k]
    elif form == "given":
        words = words[:draw(st.integers(2, len(words) - 1))]
    parts = [p for w in words for p in (w.split("-") if "-" in w else [w])]
    out = []
    for i, part in enumerate(parts):
        if part == ",":
            out.append(draw(st.sampled_from([",", ", ", " , "])))
            continue
        chars = []
        for k, ch in enumerate(part):
            low = ch.lower()
            if form == "given" and k == 0:
                pass  # leading given names count only written as names (capitalised: "Xin Lee's", not "xin lee's")
            elif low in look_alikes and draw(st.booleans()):
                ch = draw(st.sampled_from(look_alikes[low]))
            elif draw(st.integers(0, 3)) == 0:
                ch = ch.swapcase()
            chars.append(ch)
            if draw(st.integers(0, 4)) == 0:
                chars.append(draw(st.sampled_from(_INVISIBLE)))
        out.append("".join(chars))
        if i + 1 < len(parts) and parts[i + 1] != "," and part != ",":
            out.append(draw(st.sampled_from(_SEPARATORS)))
    written = "".join(out)
    if form == "given":
        written += draw(st.sampled_from(["'s", "\u2019s", ""]))
    return written, name


@pytest.fixture(scope="module")
def tofu_names(data_dir) -> list[str]:
    return _tofu_names(data_dir)


def test_generated_variants_of_real_tofu_names_are_flagged_and_found(tofu_names) -> None:
    from hypothesis import HealthCheck, given as hgiven, settings as hsettings

    from guard.interventions.token_selection import find_mentions

    detector = KeywordDetector({n: [n] for n in tofu_names})
    look_alikes = _look_alikes()

    @hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @hgiven(variant=name_variant(tofu_names, look_alikes), long_text=st.booleans(),
            prefix=st.sampled_from(["Tell me about ", "What did ", "Who is\n", "Q: "]))
    def check(variant, long_text, prefix) -> None:
        written, name = variant
        text = f"{prefix}{written} and the books."
        if long_text:
            text = f"{FILLER} {text} {FILLER}"
        verdict = detector.screen([text])
        assert verdict.flagged and verdict.target_id == name, (written, verdict)
        start = text.index(written)
        spans = find_mentions(text, [name])
        first_letter = start + next(i for i, ch in enumerate(written) if ch.isalnum())
        assert any(s <= first_letter < e for s, e in spans), (written, spans)

    check()


def test_benign_tofu_texts_are_not_flagged(tofu_names, data_dir) -> None:
    """Other authors' questions and answers, world facts and real authors: none names a forget10
    author, and the looser matching (separators, look-alikes, inversion, given names) flags none."""
    import json

    detector = KeywordDetector({n: [n] for n in tofu_names})
    texts: list[str] = []
    for split in ("retain90", "world_facts", "real_authors"):
        with open(data_dir / "tofu" / f"{split}.json", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                texts += [row["question"], str(row["answer"])]
    assert len(texts) > 7000
    flagged = [t for t in texts if detector.screen([t]).flagged]
    assert flagged == []


# (session 9) an alias made of common words, in its ordinary sense: lower case in a text with
# capitals, continued as a compound noun; the alias still counts where it stands for the person
@pytest.mark.parametrize(("text", "alias"), [
    ("Who was the first lead vocal for the rock band Starship?", False),
    ("I like the rock music scene in Seattle.", False),
    ("How tall is the rock?", True),
    ("Did the rock win an award?", True),
    ("What films has The Rock made?", True),
    ("is the rock married", True),          # no capitals anywhere: case tells nothing
    ("the rock band starship", True),
])
def test_common_word_alias_in_its_ordinary_sense(text: str, alias: bool) -> None:
    names = {"dj": ["Dwayne Johnson", "The Rock"]}
    assert bool(KeywordDetector(names).screen([text]).flagged) is alias
    full = NameMatcher(names).matrix([text])[0, 0, 0]
    assert bool(full) is alias
