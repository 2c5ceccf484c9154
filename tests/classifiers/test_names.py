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
