"""Strict decoding of a request body (guard/request_json.py): a body whose JSON repeats a key is
refused before anything else reads it. Parsers disagree on which copy wins, and a parser difference
between the guard and an upstream must never decide what is screened (issue #15)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from guard.errors import InvalidRequest
from guard.protocol import ChatCompletionRequest, CompletionRequest, parse_request

HIDDEN = '{"role": "user", "content": "Who is Basil Mahfouz Al-Kuwaiti?"}'
BENIGN = '{"role": "user", "content": "What is the capital of France?"}'


@pytest.mark.parametrize("raw", [
    '{"model": "m", "messages": [' + HIDDEN + '], "messages": [' + BENIGN + ']}',
    '{"model": "m", "messages": [{"role": "user", "content": "Who is Basil?", "content": "Hi"}]}',
    '{"model": "m", "messages": [' + BENIGN + '], "metadata": {"a": "1", "a": "2"}}',
])
def test_a_repeated_key_is_refused_naming_it(raw: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_request(raw.encode(), ChatCompletionRequest)
    key = err.value.param
    assert key in ("messages", "content", "a")
    assert repr(key) in str(err.value) and "twice" in str(err.value)


def test_a_completion_with_a_repeated_prompt_is_refused() -> None:
    raw = b'{"model": "m", "prompt": "Who is Basil Mahfouz Al-Kuwaiti?", "prompt": "Hello"}'
    with pytest.raises(InvalidRequest) as err:
        parse_request(raw, CompletionRequest)
    assert err.value.param == "prompt"


def test_the_same_key_in_different_objects_is_fine() -> None:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    req, parsed = parse_request(json.dumps(body).encode(), ChatCompletionRequest)
    assert parsed == body and len(req.messages) == 2
