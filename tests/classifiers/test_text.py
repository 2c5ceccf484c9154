"""``classifiers.text.prefix_trie``: the trie regex that tells the name finder where a form can start."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from classifiers.names import NameFinder
from classifiers.text import prefix_trie

_PREFIXES = st.lists(st.text(alphabet="abcé1", min_size=1, max_size=4), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(prefixes=_PREFIXES, text=st.text(alphabet="abcé1 ", max_size=12))
def test_the_trie_matches_exactly_where_some_prefix_starts(prefixes, text):
    trie = re.compile(prefix_trie(prefixes))
    for pos in range(len(text) + 1):
        assert bool(trie.match(text, pos)) == any(text.startswith(p, pos) for p in prefixes)


def test_shared_and_nested_prefixes():
    trie = re.compile(f"(?:{prefix_trie(['a', 'ab', 'abc', 'b.d'])})$")
    assert [w for w in ("a", "ab", "abc", "abd", "b.d", "bxd", "") if trie.match(w)] == ["a", "ab", "abc", "b.d"]


def test_the_finder_finds_forms_at_each_word_start_and_only_there():
    """The scan visits only word starts that begin like a form: a name inside a longer word is none."""
    finder = NameFinder({"t": ["Basil Mahfouz Al-Kuwaiti"], "u": ["Ann Lee"]})
    text = "basil mahfouz al-kuwaiti met ann lee; xbasil mahfouz al-kuwaiti and lee ann did not"
    found = [(finder.target_ids[j], kind, a) for j, kind, a, _ in finder.folded_mentions(text)]
    assert ("t", "full", 0) in found and ("u", "full", text.index("ann lee")) in found
    assert all(a == 0 or not text[a - 1].isalnum() for _, _, a in found)
    assert not any(a == text.index("xbasil") + 1 for _, _, a in found)
