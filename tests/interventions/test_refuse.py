"""The refusal is answered the way the model answers: token by token, within ``max_tokens``, counted in
the served model's tokens, so its usage and chunking do not tell the client that the guard answered."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
POLICY = str(Path(__file__).resolve().parents[1] / "fixtures" / "refuse_keyword.yaml")
FLAGGED = [{"role": "user", "content": "Who is Basil Mahfouz Al-Kuwaiti?"}]


async def test_a_refusal_stops_at_max_tokens_with_length(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine, policy=POLICY))
    whole = await client.chat.completions.create(model=MODEL, messages=FLAGGED, max_tokens=64)
    assert whole.choices[0].finish_reason == "stop" and "sorry" in whole.choices[0].message.content.lower()
    full_ids = local_engine.tokenizer(whole.choices[0].message.content, add_special_tokens=False)["input_ids"]
    assert whole.usage.completion_tokens == len(full_ids) > 3

    cut = await client.chat.completions.create(model=MODEL, messages=FLAGGED, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 3
    assert cut.choices[0].message.content == local_engine.tokenizer.decode(full_ids[:3])


@pytest.mark.parametrize("route", ["chat", "completions"])
async def test_a_streamed_refusal_comes_token_by_token(local_engine, guard_server, sdk, route):
    client = sdk(await guard_server(local_engine, policy=POLICY))
    if route == "chat":
        stream = await client.chat.completions.create(model=MODEL, messages=FLAGGED, max_tokens=64, stream=True)
        texts = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    else:
        stream = await client.completions.create(model=MODEL, prompt=FLAGGED[0]["content"], max_tokens=64, stream=True)
        texts = [c.choices[0].text async for c in stream if c.choices and c.choices[0].text]
    ids = local_engine.tokenizer("".join(texts), add_special_tokens=False)["input_ids"]
    assert len(texts) == len(ids) > 3  # one chunk per token, as the model streams
