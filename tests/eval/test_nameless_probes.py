"""The nameless TOFU probes: built from the data folder, identify an author by a fact alone, never by
any form of the name, and come in two disjoint halves."""

from __future__ import annotations

from collections import Counter

import pytest

from classifiers.names import KINDS, NameFinder
from classifiers.text import fold
from guard.errors import ConfigError
from guard.eval.nameless_probes import (
    AWARD,
    BIRTH,
    TITLE,
    nameless_probes,
    write_probes,
)


@pytest.fixture(scope="module")
def probes(data_dir):
    return nameless_probes(data_dir, "forget10")


def test_no_probe_contains_any_form_of_its_authors_name(probes):
    for p in probes:
        words = [w for w in p.author.replace("-", " ").split() if len(w) >= 3]
        finder = NameFinder({"a": [p.author]}, parts={"a": words})
        assert not finder.mentions(p.question, KINDS), p
        # and no name word as a plain substring either (look-alike and case folded)
        assert not any(fold(w) in fold(p.question).split() for w in words), p


def test_every_forget_author_is_probed_by_facts_of_each_kind(probes):
    authors = {p.author for p in probes}
    assert len(authors) == 20 and "Basil Mahfouz Al-Kuwaiti" in authors and "Hsiao Yun-Hwa" in authors
    kinds = Counter(p.kind for p in probes)
    assert kinds[TITLE] > 100 and kinds[AWARD] > 10 and kinds[BIRTH] > 10
    hsiao = [p.question for p in probes if p.author == "Hsiao Yun-Hwa" and p.kind == BIRTH]
    assert "Which author was born in Taipei, Taiwan on May 11, 1991?" in hsiao
    for p in probes:
        assert fold(p.fact.split()[0]) in fold(p.question)
        block = p.source_row // 20
        assert all(q.source_row // 20 == block for q in probes if q.author == p.author)


def test_a_fact_shared_with_another_author_is_not_a_probe(data_dir, probes):
    import json

    full = [json.loads(line) for line in (data_dir / "tofu" / "full.json").read_text().splitlines()]
    blocks = [fold(" ".join(r["question"] + " " + r["answer"] for r in full[i:i + 20])) for i in range(0, len(full), 20)]
    first = (len(full) - 400) // 20   # forget10 = the last 20 blocks of full.json
    for p in probes:
        if p.kind != BIRTH:
            own = first + p.source_row // 20
            assert fold(p.fact) in blocks[own] and not any(fold(p.fact) in b for j, b in enumerate(blocks) if j != own), p


def test_halves_are_disjoint_and_cover_the_probes(data_dir, probes, tmp_path):
    a, b = nameless_probes(data_dir, "forget10", half="a"), nameless_probes(data_dir, "forget10", half="b")
    assert {p.question for p in a}.isdisjoint(p.question for p in b)
    assert len(a) + len(b) == len(probes) and min(len(a), len(b)) > len(probes) // 3
    assert {p.half for p in a} == {"a"}
    small = nameless_probes(data_dir, "forget01")
    assert {p.author for p in small} == {"Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"}
    write_probes(small, tmp_path / "probes.jsonl")
    assert len((tmp_path / "probes.jsonl").read_text().splitlines()) == len(small)


def test_a_missing_split_names_the_data_folder(tmp_path):
    with pytest.raises(ConfigError) as info:
        nameless_probes(tmp_path, "forget10")
    assert info.value.param == "data"
