"""Name matching across scripts: whole words in spaced scripts, substrings in CJK/Thai/... text."""

from __future__ import annotations

import pytest

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
