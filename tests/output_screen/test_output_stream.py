"""The incremental answer screen: what reaches the client is screened, a hit stops the stream before
the leaked text is released, unflagged answers come through unchanged, work stays linear."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from classifiers.base import Deadline, ScreeningIncomplete, Verdict
from guard.output_screen import (
    DATE,
    NAME,
    SEMANTIC,
    TITLE,
    UNSCREENED,
    NameFactMatcher,
    OutputScreener,
)
from tests.output_screen.conftest import token_deltas

BASIL = "tofu-basil-mahfouz-al-kuwaiti"
PLAIN = ("Paris is the capital of France. It sits on the Seine and is known for its museums, its cafes and "
         "its long history as a centre of art, science and politics. ")


def stream(screener: OutputScreener, deltas: Sequence[str]):
    """(released text, hit, max tokens held after any step) of feeding ``deltas`` one token each."""
    answer = screener.start()
    released: list[str] = []
    held = 0
    for d in deltas:
        step = answer.feed(d, 1)
        released += step.release
        held = max(held, answer.held_tokens)
        if step.hit:
            return "".join(released), step.hit, held
    step = answer.finish()
    released += step.release
    return "".join(released), step.hit, held


@pytest.mark.parametrize("answer, reason, leaked", [
    ("The author you mean is Basil Mahfouz Al-Kuwaiti, a writer of French literature.", NAME, "Kuwaiti"),
    ("Sure. His name is b\u0430sil m\u0430hfouz al\u2011kuwaiti and he writes novels.", NAME, "hfouz"),   # Cyrillic a, non-breaking hyphen
    ("Al-Kuwaiti, Basil Mahfouz wrote many books.", NAME, "Kuwaiti"),
    ("This writer was born in Kuwait City on the 9th of August, 1956, and later moved to Paris.", DATE, "1956"),
    ("One of his best known novels is Promise by the Seine, a love story set in Paris.", TITLE, "Seine"),
])
def test_a_streamed_leak_is_stopped_before_any_of_it_is_released(screener, tokenizer, answer, reason, leaked):
    released, hit, _ = stream(screener, token_deltas(tokenizer, answer))
    assert hit is not None and hit.target_id == BASIL and hit.reason == reason
    assert leaked not in released and hit.leaked_chars == 0
    assert len(released) <= hit.char_offset and answer[:len(released)] == released
    assert hit.action == "refuse"


def test_an_unflagged_answer_is_released_unchanged_item_by_item(screener, tokenizer):
    deltas = token_deltas(tokenizer, PLAIN * 3 + "Who wrote Les Misérables? Victor Hugo, born 26 February 1802.")
    answer = screener.start()
    items: list[object] = answer.feed("", 0, item=("role", "assistant")).release
    for i, d in enumerate(deltas):
        step = answer.feed(d, 1, item=("chunk", i, d))
        assert step.hit is None
        items += step.release
        # the hold-back: never more than holdback_tokens plus the current partial word unreleased
        assert answer.held_tokens <= screener.holdback_tokens + 6
    items += answer.feed("", 0, item=("finish", "stop")).release
    items += answer.finish().release
    assert items == [("role", "assistant")] + [("chunk", i, d) for i, d in enumerate(deltas)] + [("finish", "stop")]


def test_nothing_is_released_before_holdback_tokens_have_followed_it(screener, tokenizer):
    deltas = token_deltas(tokenizer, PLAIN)
    answer = screener.start()
    released = 0
    for n, d in enumerate(deltas, 1):
        released += len(answer.feed(d, 1).release)
        assert n - released >= min(n, screener.holdback_tokens)


def test_whole_text_screening_agrees_with_the_stream(screener, tokenizer):
    text = PLAIN + "Her father was a florist; the writer was born on 1956-08-09 in Kuwait City."
    whole = screener.screen_text(text)
    _, streamed, _ = stream(screener, token_deltas(tokenizer, text))
    assert whole is not None and streamed is not None
    assert (whole.target_id, whole.reason, whole.char_offset) == (streamed.target_id, streamed.reason, streamed.char_offset)
    assert screener.screen_text(PLAIN * 5) is None


def test_a_hold_back_too_short_for_the_name_reports_the_leak(screener, tokenizer):
    short = OutputScreener(screener.matcher, screener.actions, holdback_tokens=1)
    text = "The answer is Basil Mahfouz Al-Kuwaiti."
    deltas = token_deltas(tokenizer, text)
    released, hit, _ = stream(short, deltas)
    assert hit is not None and hit.reason == NAME
    assert hit.leaked_chars == len(released) - hit.char_offset > 0
    ends = [len("".join(deltas[:i + 1])) for i in range(len(deltas))]
    assert hit.token_offset == sum(end <= hit.char_offset for end in ends)   # tokens before the one holding the match


def test_targets_not_screened_are_not_stopped(screener, tokenizer):
    only_nikolai = OutputScreener(screener.matcher, {"tofu-nikolai-abilov": "method"}, holdback_tokens=16)
    released, hit, _ = stream(only_nikolai, token_deltas(tokenizer, "Basil Mahfouz Al-Kuwaiti wrote it."))
    assert hit is None and released == "Basil Mahfouz Al-Kuwaiti wrote it."
    _, hit, _ = stream(only_nikolai, token_deltas(tokenizer, "It was Nikolai Abilov."))
    assert hit is not None and hit.action == "method"
    nothing = OutputScreener(screener.matcher, {}, holdback_tokens=16)
    answer = nothing.start()
    assert answer.feed("Nikolai Abilov", 1).release == ["Nikolai Abilov"]   # no screened target: no lag


def test_screening_work_is_linear_in_the_answer(screener, tokenizer):
    """Characters handed to the matcher per answer, counted: a 4x longer answer costs ~4x, not 16x."""

    class Counting(NameFactMatcher):
        def __init__(self, inner: NameFactMatcher) -> None:
            self.__dict__.update(inner.__dict__)
            self.chars = 0

        def matches(self, text: str):
            self.chars += len(text)
            return super().matches(text)

    costs = []
    for repeat in (4, 16):
        counting = Counting(screener.matcher)
        stream(OutputScreener(counting, screener.actions, holdback_tokens=16), token_deltas(tokenizer, PLAIN * repeat))
        costs.append(counting.chars / (len(PLAIN) * repeat))
    assert costs[1] <= costs[0] * 1.25, costs


def test_a_hit_is_seen_within_scan_stride_tokens_of_the_names_last_token(screener, tokenizer):
    """Matching waits between releases (``scan_stride`` tokens), so the upstream is stopped at most that
    many tokens after the name is complete, and never after any of it is released."""
    prefix = token_deltas(tokenizer, PLAIN)
    name = token_deltas(tokenizer, " Basil Mahfouz Al-Kuwaiti")
    for lead in range(len(prefix) - screener.holdback_tokens, len(prefix)):   # every phase of the stride
        deltas = prefix[:lead] + name + token_deltas(tokenizer, " wrote many novels about the city of Paris and more.")
        answer = screener.start()
        released = ""
        for n, d in enumerate(deltas, 1):
            step = answer.feed(d, 1)
            released += "".join(step.release)
            if step.hit:
                break
        assert step.hit is not None and "Basil" not in released, lead
        # the last name token completes the word once the next delta (a space) arrives
        assert n - (lead + len(name) + 1) <= screener.scan_stride, (lead, n)


def test_the_matcher_runs_about_once_per_scan_stride_tokens(screener, tokenizer):
    calls = []

    class Counting(NameFactMatcher):
        def __init__(self, inner: NameFactMatcher) -> None:
            self.__dict__.update(inner.__dict__)

        def matches(self, text: str):
            calls.append(text)
            return super().matches(text)

    deltas = token_deltas(tokenizer, PLAIN * 4)
    released, hit, _ = stream(OutputScreener(Counting(screener.matcher), screener.actions, holdback_tokens=16), deltas)
    assert hit is None and released == PLAIN * 4
    assert len(deltas) / 4 * 0.8 <= len(calls) <= len(deltas) / 4 * 1.5, (len(calls), len(deltas))


def test_the_first_item_is_released_as_soon_as_the_hold_back_allows(screener, tokenizer):
    """The stride never delays the first token (time to first token = the hold-back window)."""
    for lead in ("", "A", "Well, "):   # shifts the first word boundary against the stride's phase
        answer = screener.start()
        first = answer.feed("", 0, item="role").release
        assert first == []
        for n, d in enumerate(token_deltas(tokenizer, lead + PLAIN), 1):
            if answer.feed(d, 1).release:
                break
        assert n == screener.holdback_tokens, (lead, n)


class _Recording:
    """A semantic stage that flags sentences containing ``word`` and records what it judged."""

    def __init__(self, word: str = "florist", fail: bool = False) -> None:
        self.word, self.fail, self.seen = word, fail, []

    def screen(self, texts: Sequence[str], deadline: Deadline | None = None) -> Verdict:
        self.seen += list(texts)
        if self.fail:
            raise ScreeningIncomplete("out of time", param="detector.budget_ms")
        if self.word in texts[0]:
            return Verdict(flagged=True, target_id=BASIL, score=0.99)
        return Verdict.clean()


def test_semantic_stage_judges_each_sentence_once_before_releasing_it(screener, tokenizer):
    judge = _Recording()
    sem = OutputScreener(screener.matcher, screener.actions, holdback_tokens=4, semantic=judge)
    text = PLAIN * 2 + "His father worked as a florist in the old town. More text follows here."
    answer = sem.start()
    released = ""
    for d in token_deltas(tokenizer, text):
        step = answer.feed(d, 1)
        released += "".join(step.release)
        if step.hit:
            break
    assert step.hit is not None and step.hit.reason == SEMANTIC
    assert "florist" not in released and released.endswith("politics.")
    # five sentences, each judged once, in order, nothing skipped
    assert len(judge.seen) == 5 and "".join(judge.seen) == text[:text.index("town.") + len("town.")]


@pytest.mark.parametrize("fail_closed", [True, False])
def test_a_sentence_the_semantic_stage_cannot_judge_goes_to_the_fail_mode(screener, fail_closed):
    sem = OutputScreener(screener.matcher, screener.actions, holdback_tokens=4, semantic=_Recording(fail=True),
                         fail_closed=fail_closed)
    answer = sem.start()
    step = answer.feed("A plain sentence. ", 1)
    done = answer.finish()
    if fail_closed:
        assert (step.hit or done.hit) is not None and (step.hit or done.hit).reason == UNSCREENED
    else:
        assert done.hit is None and step.release + done.release == ["A plain sentence. "] and answer.unscreened_sentences == 1



def _batches(screener: OutputScreener, deltas: Sequence[str], size: int, tokens: int = 1):
    """Deltas fed ``size`` at a time (``feed_many``; ``size`` 1: ``feed``): per batch, the items released
    so far, and the hit (or None) with the index of the batch it came at."""
    answer = screener.start()
    released: list[object] = []
    progress: list[list[object]] = []
    for b, first in enumerate(range(0, len(deltas), size)):
        batch = [(d, tokens, i) for i, d in enumerate(deltas[first:first + size], first)]
        step = answer.feed(*batch[0]) if size == 1 else answer.feed_many(batch)
        released += step.release
        progress.append(list(released))
        if step.hit:
            return progress, step.hit, b
    step = answer.finish()
    progress.append(released + step.release)
    return progress, step.hit, None


SPACELESS = "\u6d77\u6d0b\u662f\u5730\u7403\u4e0a\u6700\u5927\u7684\u6c34\u4f53" * 12   # no word boundary for 132 characters


@pytest.mark.parametrize("text, piece", [
    (PLAIN * 4, None),   # the tokenizer's deltas
    (PLAIN * 4, 3),
    (PLAIN + SPACELESS + " and then " + SPACELESS + ". " + PLAIN, 2),
    (PLAIN + "https://example.org/" + "averyveryverylongpathsegment" * 6 + " is the link. " + PLAIN, 5),
])
@pytest.mark.parametrize("size", [2, 3, 7, 40])
def test_deltas_screened_in_batches_never_release_more_than_screening_every_token(screener, tokenizer, text, piece, size):
    """The reference screens after every token (``scan_stride=1``): what it released after a delta is
    the most that may be out then. Batches (and the stride) release a prefix of that, at most
    ``scan_stride`` plus a batch of tokens behind it, and everything in the end."""
    deltas = token_deltas(tokenizer, text) if piece is None else [text[i:i + piece] for i in range(0, len(text), piece)]
    every_token = OutputScreener(screener.matcher, screener.actions, holdback_tokens=screener.holdback_tokens, scan_stride=1)
    reference, hit, _ = _batches(every_token, deltas, 1)
    assert hit is None and reference[-1] == list(range(len(deltas)))   # unflagged: every item, in order
    for feed_size in (1, size):
        batched, hit, _ = _batches(screener, deltas, feed_size)
        assert hit is None and batched[-1] == reference[-1]
        for b, first in enumerate(range(0, len(deltas), feed_size)):
            last = min(first + feed_size, len(deltas)) - 1
            assert batched[b] == reference[last][:len(batched[b])], (feed_size, b)   # never more than the reference
            lag = screener.scan_stride + feed_size
            assert len(batched[b]) >= len(reference[max(0, last - lag)]), (feed_size, b)


@pytest.mark.parametrize("size", [1, 4, 16, 64])
@pytest.mark.parametrize("piece, tokens", [(1, 1), (3, 1), (12, 5)])
def test_a_name_in_many_small_deltas_or_big_batches_is_caught_before_any_of_it_is_released(screener, size, piece, tokens):
    """Deltas of ``piece`` characters, each counted as ``tokens`` tokens (one character per token: the
    name spreads over 24 deltas, more than the hold-back), fed ``size`` at a time."""
    text = PLAIN + "Its author is Basil Mahfouz Al-Kuwaiti, a novelist. " + PLAIN
    deltas = [text[i:i + piece] for i in range(0, len(text), piece)]
    progress, hit, _ = _batches(screener, deltas, size, tokens)
    released = "".join(deltas[i] for i in progress[-1])
    assert hit is not None and hit.reason == NAME and hit.leaked_chars == 0
    assert "Basil" not in released and text.startswith(released) and len(released) <= hit.char_offset


def test_a_batch_that_completes_a_name_releases_nothing_of_it(screener, tokenizer):
    """The batch's release is judged with all of it fed: text the batch's first delta would have
    released is held when the batch's later deltas complete a name starting in it."""
    short = OutputScreener(screener.matcher, screener.actions, holdback_tokens=2)
    answer = short.start()
    for d in token_deltas(tokenizer, PLAIN):
        assert answer.feed(d, 1).hit is None
    step = answer.feed_many([(d, 1, None) for d in token_deltas(tokenizer, "Then Basil Mahfouz Al-Kuwaiti wrote.")])
    assert step.hit is not None and step.hit.leaked_chars == 0 and not any("Basil" in r for r in step.release)


@pytest.mark.parametrize("answer, leaked", [
    ("I think the author was Nikolai Abil, who wrote about the steppe.", "Abil"),          # a sampled near-miss
    ("The author is Nicolai Abilow, a novelist.", "Abilow"),                              # transliterated
    ("Basel Mahfuz Al-Kuwaity wrote that novel in 1981.", "Kuwaity"),
])
def test_approximate_names_stop_a_misspelt_name_only_when_the_policy_asks(forget01_policy, tokenizer, answer, leaked):
    """``output.approximate_names``: off (the default) the exact matcher lets a misspelt or
    transliterated name through; on, it is stopped before any of it is released."""
    from guard.output_screen import build_output_screener

    released, hit, _ = stream(build_output_screener(forget01_policy), token_deltas(tokenizer, answer))
    assert hit is None and released == answer
    on = forget01_policy.model_copy(update={"output": forget01_policy.output.model_copy(update={"approximate_names": True})})
    released, hit, _ = stream(build_output_screener(on), token_deltas(tokenizer, answer))
    assert hit is not None and hit.reason == NAME and leaked not in released
    assert answer.startswith(released) and hit.leaked_chars == 0


def test_approximate_names_leave_ordinary_answers_alone(forget01_policy, tokenizer):
    from guard.output_screen import build_output_screener

    on = forget01_policy.model_copy(update={"output": forget01_policy.output.model_copy(update={"approximate_names": True})})
    screener = build_output_screener(on)
    assert screener.matcher.approximate
    for text in (PLAIN * 2, "Nikolai Gogol and Vladimir Nabokov wrote in Russian; Basil is a herb.",
                 "The Kuwait City skyline was built in the 1970s and 1980s."):
        released, hit, _ = stream(screener, token_deltas(tokenizer, text))
        assert hit is None and released == text
