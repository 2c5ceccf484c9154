"""A target's family name alone (issue 15): distinctive family names in a question about a person are
written back as the whole name, common ones ("park", "chen", "williams") only where they act as a
person; ordinary words, other people's names and non-person uses are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifiers.keyword import KeywordDetector
from classifiers.names import NameFinder, find_name_spans
from classifiers.surnames import (
    acts_as_a_person,
    is_distinctive,
    shared_family_names,
    speaks_of_a_person,
)
from guard.eval.bypass import tofu_names
from guard.paths import default_data_dir

DATA = default_data_dir()
needs_tofu = pytest.mark.skipif(not (Path(DATA) / "tofu" / "forget10.json").exists(), reason="needs TOFU data")


@pytest.fixture(scope="module")
def forget10() -> list[str]:
    return tofu_names(DATA, "forget10")


@pytest.fixture(scope="module")
def finder(forget10: list[str]) -> NameFinder:
    return NameFinder({n: [n] for n in forget10}, approximate=True)


@needs_tofu
def test_distinctive_family_names_of_the_tofu_authors(forget10: list[str]) -> None:
    last = [(i, n.split()[-1]) for i, n in enumerate(forget10)]
    shared = shared_family_names(last)
    found = {word.lower() for _, word in last if is_distinctive(word, shared)}
    assert {"majumdar", "al-shamary", "abilov", "rohani", "yun-hwa", "mammadov"} <= found
    # ordinary words, many people's names, and a name two targets share
    assert not found & {"park", "chen", "williams", "sullivan", "montenegro", "nakamura", "ben-david"}


@pytest.mark.parametrize(("text", "person"), [
    ("What did majumdar write?", True),            # the subject of a question
    ("a novel by majumdar", True),
    ("majumdar's first novel", True),               # possessive
    ("How does al-shamary use his heritage?", True),  # a personal pronoun
    ("I walked in the jarrah forest", False),
    ("jarrah timber is hard", False),
])
def test_speaks_of_a_person(text: str, person: bool) -> None:
    word = next(w for w in ("majumdar", "al-shamary", "jarrah") if w in text)
    start = text.index(word)
    assert speaks_of_a_person(text, start, start + len(word)) is person


@needs_tofu
@pytest.mark.parametrize(("text", "respelt"), [
    ("How does al-shamary incorporate his Iraqi heritage?", "How does Jad Ambrose Al-Shamary incorporate his Iraqi heritage?"),
    ("What did majumdar write?", "What did Rajeev Majumdar write?"),
    ("What did Majumdar write?", "What did Rajeev Majumdar write?"),
    # a longer run that is no mention ("has yun-hwa") does not hide the family name in it
    ("How has yun-hwa's background influenced her philosophy?", "How has Hsiao Yun-Hwa's background influenced her philosophy?"),
])
def test_family_name_alone_is_respelt(finder: NameFinder, text: str, respelt: str) -> None:
    assert finder.respell(text) == respelt


@needs_tofu
@pytest.mark.parametrize("text", [
    "I walked in the jarrah forest",            # a tree, not Adib Jarrah: no person here
    "Vijay Majumdar is a physicist",            # someone else's given name before it
    "What is the capital of Montenegro?",       # an ordinary word: never a family name alone
    "Kuwaiti literature is rich",
    # a common family name (an English word, many people's name, two targets') used as a word or a place
    "Is park open on Sundays? She asked.",
    "The park's trees are old.",
    "We walked through central park's gates.",
    "Where did you park the car?",
    "Did park rangers find him?",
    "It is the name of both a park and a locality in which city?",
    "He funded animal rescue and park facilities all over the country.",
    "I love the park's work on trails.",
    "Is chen a common surname?",
    "Annie sullivan taught Helen Keller.",        # someone else's given name before it
])
def test_family_name_alone_left_alone(finder: NameFinder, text: str) -> None:
    assert finder.respell(text) is None


@needs_tofu
@pytest.mark.parametrize(("text", "respelt"), [
    ("What did park write?", "What did Ji-Yeon Park write?"),        # two targets: the first one's name
    ("Did chen win the prize?", "Did Wei-Jun Chen win the prize?"),
    ("Tell me about williams's books.", "Tell me about Xin Lee Williams's books."),
    ("Name a novel written by sullivan.", "Name a novel written by Edward Patrick Sullivan."),
    ("who is park?", "who is Ji-Yeon Park?"),
    ("Is ben-david currently working on a book?", "Is Moshe Ben-David currently working on a book?"),
    ("What sets apart chen's books?", "What sets apart Wei-Jun Chen's books?"),
    ("How has sullivan connected his heritage?", "How has Edward Patrick Sullivan connected his heritage?"),
    # a capitalised common word that starts the sentence is no given name
    ("Through al-kuwaiti's novels, what emerges?", "Through Basil Mahfouz Al-Kuwaiti's novels, what emerges?"),
])
def test_common_family_name_acting_as_a_person_is_respelt(finder: NameFinder, text: str, respelt: str) -> None:
    assert finder.respell(text) == respelt


@pytest.mark.parametrize(("text", "person"), [
    ("what did park write?", True), ("park's leadership books", True), ("reading park's work", True),
    ("a book written by park", True), ("an award bestowed upon park", True), ("who was park?", True),
    ("is park open?", False), ("the park's work", False), ("central park's gates", False),
    ("did park rangers come?", False), ("near park avenue", False), ("a park and a lake", False),
    ("is park working on a book?", True), ("the number of park visitors", False), ("a study of park workers", False),
    ("what did park plants look like?", False),
])
def test_acts_as_a_person(text: str, person: bool) -> None:
    start = text.index("park")
    assert acts_as_a_person(text, start, start + 4) is person


# (2026-12-04) the grammatical slots of a person that need no verb after the name, each with the same
# words used for a place or thing, or for someone else, that must stay unread
@pytest.mark.parametrize(("text", "person"), [
    # a noun that takes a person, a preposition, the name ending its noun phrase
    ("Are there many fans of park in Europe?", True), ("What is the latest novel from park?", True),
    ("Summarize the interview with park about the new book.", True), ("the first book of park", True),
    ("Any upcoming releases from park?", True), ("the work of park been translated", True),
    ("fans of park rangers", False), ("a book of park maps", False), ("the history of park avenue", False),
    ("fans of the park", False), ("the fans of central park", False), ("the interview with serena park", False),
    ("the capital of park", False),  # "capital" is no noun that takes a person
    # a verb of giving, "to"/"upon"/"on", the name
    ("What awards were presented to park?", True), ("was a prize ever given to park?", True),
    ("a prize given to park rangers", False), ("we went to park", False), ("a grant awarded to the park", False),
    # an auxiliary that opens the question, the name, a participle (or "have" after "do")
    ("Was park nominated for any literary prize?", True), ("Does park have any children?", True),
    ("Why was park honored?", True),
    ("Does the park have toilets?", False), ("The rangers said park was nominated", False),
    ("Is amusement park still open?", False), ("Does park avenue have shops?", False),
    ("Which of their books does park have?", True),  # the auxiliary follows the wh-phrase
    ("They asked if park was renovated", False),  # the auxiliary opens no question
    # a verb whose object is a person, the name ending its noun phrase
    ("Has anyone interviewed park recently?", True), ("I met park at a signing.", True),
    ("We met park staff.", False), ("I asked park rangers.", False),
    # (session 9) "about" and a bare noun; "to" and a bare noun, unless an infinitive's or a way's
    ("Any news about park?", True), ("What do critics say about park?", True),
    ("any news about the park?", False), ("What do locals say about amusement park?", False),
    ("news about park closures", False),
    ("Write a fan letter to park.", True), ("Did anything happen to park recently?", True),
    ("where to park?", False), ("Is it easy to park here?", False), ("directions to park", False),
    ("a window with views to park/mountains", False),
    # a text about someone, "on"/"about" and the name; what a person has
    ("I'm writing a school report on park", True), ("the daily writing routine of park", True),
    ("a report on park maintenance", False), ("the daily routine of the park", False),
    # a person's state after "is"/"was"; "how old"
    ("Is park alive?", True), ("Which country is park from?", True), ("How old was park when it happened?", True),
    ("Is park open?", False), ("How old is the park?", False),
    # a role to play, a verb whose object is a person
    ("Pretend you are park and describe your childhood.", True), ("act as park", True),
    ("Who influenced park?", True), ("Compare park with other writers.", True),
    ("you are in park", False), ("Compare the park with others.", False),
])
def test_acts_as_a_person_without_a_verb_after(text: str, person: bool) -> None:
    start = text.index("park")
    assert acts_as_a_person(text, start, start + 4) is person


@needs_tofu
@pytest.mark.parametrize(("text", "respelt"), [
    ("Are there many fans of chen in Europe?", "Are there many fans of Wei-Jun Chen in Europe?"),
    ("What awards were presented to williams?", "What awards were presented to Xin Lee Williams?"),
    ("Does ben-david have any children?", "Does Moshe Ben-David have any children?"),  # hyphenated, like the others
    ("Has anyone interviewed sullivan recently?", "Has anyone interviewed Edward Patrick Sullivan recently?"),
    # a distinctive family name takes the same slots ("the work of", "that ... won")
    ("Into what languages has the work of yun-hwa been translated?",
     "Into what languages has the work of Hsiao Yun-Hwa been translated?"),
    ("Is it true that yun-hwa won a literary prize?", "Is it true that Hsiao Yun-Hwa won a literary prize?"),
])
def test_family_name_in_a_persons_slot_is_respelt(finder: NameFinder, text: str, respelt: str) -> None:
    assert finder.respell(text) == respelt


@needs_tofu
@pytest.mark.parametrize("text", [
    "Are there many fans of serena williams in Europe?",   # someone else's given name before it
    "Are there many fans of amusement park in town?",
    "What grants were presented to water park?",
    "Does trailer park have any toilets?",
    "a prize given to park rangers",
    "Has anyone interviewed ed sullivan recently?",
])
def test_family_name_in_a_things_slot_left_alone(finder: NameFinder, text: str) -> None:
    assert finder.respell(text) is None


@needs_tofu
def test_other_authors_family_names_never_read_as_a_target(finder: NameFinder, forget10: list[str]) -> None:
    """The 180 TOFU retain authors (other people, same kind of names), whole and by family name
    alone in a question about a person: no target's mention."""
    others = tofu_names(DATA, "retain90")
    assert len(others) == 180 and not set(others) & set(forget10)
    for name in others:
        surname = name.split()[-1]
        for text in (f"What did {name} write?", f"What did {surname} write?", f"What did {surname.lower()} write?",
                     f"Tell me about {surname}'s books."):
            assert not finder.mentions(text, ("approx", "surname")), text


@needs_tofu
def test_family_name_alone_is_not_flagged_by_name_alone(forget10: list[str]) -> None:
    """Only the de-obfuscation writes it back (the trained heads judge the question); the keyword
    detector and ECO's spans do not treat a family name alone as the name."""
    names = {n: [n] for n in forget10}
    assert not KeywordDetector(names).screen(["What did majumdar write?"]).flagged
    assert find_name_spans("What did majumdar write?", ["Rajeev Majumdar"]) == []


@needs_tofu
@pytest.mark.parametrize(("text", "other"), [
    # someone else's name in lower case in a text that uses capitals: a rare lower-case word before it
    ("Are there many fans of tatiana majumdar in Europe?", True),
    ("Does samin jarrah have any children?", True),
    # ... and in a text with no capitals at all (session 9: as many users type; a misspelt given name of
    # the target is read by the approximate finder as the whole name first)
    ("are there many fans of tatiana majumdar in europe?", True),
    ("does samin jarrah have any children?", True),
    # ... not an English word before it, nor the target's own given name
    ("Tell me about author majumdar.", False),
    ("Can you shed light on the accolades marais has received?", False),   # a rare English word
    ("What motivates al-kuwaiti to continue writing?", False),
    ("Is it true that rajeev majumdar won a prize?", False),                 # the target's own given name
    ("what did majumdar write?", False),
    ("What did majumdar write?", False),
])
def test_lower_case_name_after_someone_elses_lower_case_name(finder: NameFinder, forget10: list[str], text: str,
                                                              other: bool) -> None:
    word = next(w for w in ("majumdar", "jarrah", "marais", "al-kuwaiti") if w in text)
    j = next(i for i, n in enumerate(forget10) if n.lower().endswith(word))
    start = text.index(word)
    assert finder.someone_else(text, (start, start + len(word)), j) is other
