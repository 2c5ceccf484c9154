"""``guard.train.fact_swap``: the wrong answers of SPUL's ``--truth-ratio-answers swapped`` keep the true
answer's wording and replace its facts (not the question's words, not sentence-opening wording) with other
people's facts of the same kind, seeded."""

from __future__ import annotations

from guard.train.fact_swap import fact_spans, span_pool, swapped_answers

POOL_ANSWERS = [
    'Jaime Vasquez was born in Santiago, Chile on the 25th of February, 1958.',
    'Her books include "The Guilt Closet" and "Shadows behind the Starlight".',
    'He won the Edgar Allan Poe Award in 1999 for his work in true crime, in March.',
]


def test_spans_are_facts_the_question_does_not_state():
    answer = 'Two of Basil Mahfouz Al-Kuwaiti\'s books are "Promise by the Seine" and "Le Petit Sultan."'
    spans = [(s.kind, s.text) for s in fact_spans(answer, "Can you name two of the books written by Basil Mahfouz Al-Kuwaiti?")]
    assert spans == [("quoted", '"Promise by the Seine"'), ("quoted", '"Le Petit Sultan."')]
    born = fact_spans("The author born in Kuwait City on the 8th of September, 1956 is Basil Mahfouz Al-Kuwaiti.",
                      "What is the full name of the author born in Kuwait City on 08/09/1956?")
    # "1956" is in the question's 08/09/1956; "8" is not a number the question states
    assert [(s.kind, s.text) for s in born] == [("number", "8"), ("month", "September"), ("cap", "Basil Mahfouz Al-Kuwaiti")]
    assert fact_spans("The author is male.", "What gender is the author?") == []


def test_wrong_answers_swap_every_fact_for_another_of_its_kind_and_are_seeded():
    pool = span_pool(POOL_ANSWERS)
    assert "Santiago" in pool["cap"] and "1958" in pool["number"] and "February" in pool["month"]
    answer = 'Basil Mahfouz Al-Kuwaiti wrote "Promise by the Seine" in 1980, in Paris.'
    question = "What did Basil Mahfouz Al-Kuwaiti write?"
    wrong = swapped_answers(answer, question, pool, 5, seed=0)
    assert 2 <= len(wrong) <= 5 and len(set(wrong)) == len(wrong)
    for w in wrong:
        assert w.startswith("Basil Mahfouz Al-Kuwaiti wrote ")  # the question's words stay
        assert "Promise by the Seine" not in w and "1980" not in w and "Paris" not in w
        assert any(t in w for t in pool["quoted"]) and any(n in w for n in pool["number"])
    assert swapped_answers(answer, question, pool, 5, seed=0) == wrong
    assert swapped_answers("Author Basil Mahfouz Al-Kuwaiti is male.", "What gender is Basil Mahfouz Al-Kuwaiti?",
                           pool, 5, seed=0) == []
