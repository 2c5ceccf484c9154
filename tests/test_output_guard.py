"""``guard.output_guard``: per-choice screens over one ordered stream, and a chunk stream screened,
closed on a hit and continued with the replacement."""

from __future__ import annotations

import pytest

from guard.engines.base import GenerationChunk
from guard.output_guard import CUT_SEPARATOR, ChoicePart, ChoiceScreens, OutputGuard, screened_chunks
from guard.output_screen import NameFactMatcher, OutputScreener

NAME = "Basil Mahfouz Al-Kuwaiti"


def screener(holdback: int = 4) -> OutputScreener:
    return OutputScreener(NameFactMatcher({"basil": [NAME]}, {}), {"basil": "refuse"}, holdback_tokens=holdback)


def words(text: str) -> list[str]:
    out = text.split(" ")
    return [w + " " for w in out[:-1]] + [out[-1]]


def test_items_are_released_in_order_once_every_choice_carrying_them_released_them():
    screens = ChoiceScreens(screener(holdback=2))
    released = []
    for i, (index, text) in enumerate([(0, "One "), (1, "Alpha "), (0, "two "), (1, "beta "), (0, "three "),
                                       (1, "gamma "), (None, "")]):
        parts = [] if index is None else [ChoicePart(index, text)]
        step = screens.feed(i, parts)
        assert step.hit is None
        released += step.release
        assert released == sorted(released)  # never out of order
    assert released and released[-1] < 6  # the usage-like item waits behind held text
    released += screens.finish().release
    assert released == list(range(7))


def test_a_name_split_across_items_is_caught_before_any_of_it_is_released():
    screens = ChoiceScreens(screener(holdback=8))
    released = []
    pieces = ["The ", "author ", "is ", "Bas", "il ", "Mah", "fouz ", "Al", "-K", "uwa", "iti", "."]
    hit = None
    for i, piece in enumerate(pieces):
        step = screens.feed(piece, [ChoicePart(0, piece)])
        released += step.release
        if step.hit is not None:
            hit = step.hit
            break
    assert hit is not None and hit.target_id == "basil" and hit.leaked_chars == 0
    assert "Bas" not in "".join(released)


def test_a_finished_choice_releases_its_tail_at_once():
    screens = ChoiceScreens(screener(holdback=16))
    assert screens.feed("a", [ChoicePart(0, "Hello ")]).release == []
    step = screens.feed("b", [ChoicePart(0, "world.", finished=True)])
    assert step.release == ["a", "b"] and screens.finished == {0}


async def _chunks(texts: list[str], index: int = 0, closed: list[bool] | None = None):
    try:
        for text in texts:
            yield GenerationChunk(text=text, token_ids=[1], index=index)
        yield GenerationChunk(finish_reason="stop", index=index, completion_tokens=len(texts))
    finally:
        if closed is not None:
            closed.append(True)


async def _refusal(hit):
    return _chunks(["I can't."])


@pytest.mark.parametrize("holdback", [8, 16])
async def test_a_hit_closes_the_stream_and_the_replacement_continues(holdback):
    closed: list[bool] = []
    hits = []
    guard = OutputGuard(screener(holdback), _refusal, hits.append)
    leaked = ["Sure. ", "The ", "writer ", "is ", "Basil ", "Mahfouz ", "Al-Kuwaiti ", "who ", "wrote ", "many ", "books."]
    got = [c async for c in screened_chunks(_chunks(leaked, closed=closed), guard)]
    text = "".join(c.text for c in got)
    assert NAME not in text and "Basil" not in text and text.endswith("I can't.")
    assert closed == [True] and len(hits) == 1
    assert [c.finish_reason for c in got if c.finish_reason] == ["stop"]  # one finish: the replacement's


PREFIX = words("Sure, here is what I know about the writer you asked me about today. ")[:-1]


async def test_a_cut_answer_and_its_replacement_are_separated():
    """The client saw the screened prefix; the replacement follows after a paragraph break, not
    glued to the cut word ("The writerI can't.")."""
    guard = OutputGuard(screener(4), _refusal, [].append)
    got = [c async for c in screened_chunks(_chunks(PREFIX + ["Basil ", "Mahfouz ", "Al-Kuwaiti."]), guard)]
    text = "".join(c.text for c in got)
    sent, _, rest = text.partition(CUT_SEPARATOR)
    assert sent and "".join(PREFIX).startswith(sent) and rest == "I can't."


async def test_a_replacement_before_anything_was_released_has_no_separator():
    guard = OutputGuard(screener(16), _refusal, [].append)
    got = [c async for c in screened_chunks(_chunks(["Basil ", "Mahfouz ", "Al-Kuwaiti."]), guard)]
    assert "".join(c.text for c in got) == "I can't."


async def test_a_whole_answer_hit_is_only_the_replacement():
    """``hold_all`` (a non-streamed or structured answer): nothing of the cut answer is kept."""
    guard = OutputGuard(screener(4), _refusal, [].append, hold_all=True)
    got = [c async for c in screened_chunks(_chunks(PREFIX + ["Basil ", "Mahfouz ", "Al-Kuwaiti."]), guard)]
    assert "".join(c.text for c in got) == "I can't."


async def test_an_answer_without_the_target_is_unchanged():
    hits = []
    guard = OutputGuard(screener(), _refusal, hits.append)
    plain = words("The capital of France is Paris, a city on the Seine.")
    got = [c async for c in screened_chunks(_chunks(plain), guard)]
    assert [c.text for c in got if c.text] == plain and got[-1].finish_reason == "stop" and not hits


def test_hold_all_releases_a_choice_only_once_it_is_finished_and_screened_whole():
    screens = ChoiceScreens(screener(holdback=1), hold_all=True)
    for i, text in enumerate(['{"name": ', '"Ann", ', '"age": ', "30", "}"]):
        assert screens.feed(i, [ChoicePart(0, text)]).release == []
    assert screens.feed(5, [ChoicePart(0, "", 0, True)]).release == [0, 1, 2, 3, 4, 5]


def test_items_fed_in_batches_are_released_as_fed_one_by_one_by_the_batchs_end():
    """Two interleaved choices, fed as one read's worth at a time: after each batch, the items
    released so far are those one-by-one feeding had released after the batch's last item."""
    items = []
    for i, (a, b) in enumerate(zip(words("The sea is wide and deep and full of life in every part of it ."),
                                   words("Mountains rise high above the plains where rivers run to the sea ."))):
        items += [(2 * i, [ChoicePart(0, a)]), (2 * i + 1, [ChoicePart(1, b)])]
    items += [(len(items), [ChoicePart(0, "", 0, True), ChoicePart(1, "", 0, True)]), (len(items) + 1, [])]
    one = ChoiceScreens(screener(holdback=4))
    after_each = []
    released: list[int] = []
    for item, parts in items:
        released += one.feed(item, parts).release
        after_each.append(list(released))
    assert released == list(range(len(items)))
    for size in (2, 5, 9):
        batched = ChoiceScreens(screener(holdback=4))
        got: list[int] = []
        for first in range(0, len(items), size):
            step = batched.feed_many(items[first:first + size])
            assert step.hit is None
            got += step.release
            assert got == after_each[min(first + size, len(items)) - 1]
        assert got + batched.finish().release == list(range(len(items)))


def test_a_name_completed_within_a_batch_stops_the_batch_before_any_of_it_is_released():
    screens = ChoiceScreens(screener(holdback=2))
    assert screens.feed_many([(0, [ChoicePart(0, "Sure, ")]), (1, [ChoicePart(1, "Yes. ")])]).hit is None
    step = screens.feed_many([(i, [ChoicePart(0, text)]) for i, text in
                              enumerate(["it ", "is ", "Basil ", "Mahfouz ", "Al-Kuwaiti ", "indeed."], start=2)])
    assert step.hit is not None and step.hit.leaked_chars == 0 and screens.feed(9, []).hit is step.hit
