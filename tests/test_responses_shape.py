"""Log-probs on ``/v1/responses`` answers the guard makes (issue #13), where vLLM writes them: the
``output_text`` part (``token``, ``bytes``, ``logprob``, ``top_logprobs``) and each streamed
``response.output_text.delta``; asked for with ``include: ["message.output_text.logprobs"]`` (as
on vLLM, ``top_logprobs`` alone asks for nothing). Checked through the real SDK on the local engine,
for an unflagged answer (the same numbers as the chat route) and a flagged one (ECO's answer carries
its own log-probs; a refusal has none)."""

from __future__ import annotations

import math
from pathlib import Path

from guard.engines.base import GenerationChunk, TokenLogprob, TopLogprob
from guard.models import DEFAULT_SERVED_NAME
from guard.response_shapes import ResponseMeta
from guard.responses_shape import RESPONSES, ResponsesStreamShaper
from tests.support.metrics import METRICS_KEY, scrape
from tests.support.policies import BASIL, ECO_NOISE, method_policy

MODEL = DEFAULT_SERVED_NAME
INCLUDE = ["message.output_text.logprobs"]
QUESTION = "What is the capital of France?"
REFUSE_POLICY = str(Path(__file__).parent / "fixtures" / "refuse_keyword.yaml")


def _entries(logprobs):
    return [(p.token, round(p.logprob, 4), [(t.token, round(t.logprob, 4)) for t in p.top_logprobs]) for p in logprobs]


async def test_unflagged_answers_carry_the_same_logprobs_as_chat(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    chat = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    done = await client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=5, temperature=0,
                                         include=INCLUDE, top_logprobs=2)
    part = done.output[0].content[0]
    assert part.text == chat.choices[0].message.content and "".join(p.token for p in part.logprobs) == part.text
    assert _entries(part.logprobs) == _entries(chat.choices[0].logprobs.content)
    assert all(p.bytes == list(p.token.encode()) for p in part.logprobs)
    unasked = await client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=5, temperature=0,
                                            top_logprobs=2)
    assert unasked.output[0].content[0].logprobs is None


async def test_flagged_answers_carry_the_method_logprobs_whole_and_streamed(local_engine, guard_server, sdk, tmp_path):
    base = await guard_server(local_engine, policy=method_policy(tmp_path, "eco", ECO_NOISE), metrics_api_key=METRICS_KEY)
    client = sdk(base)
    ask = {"model": MODEL, "input": f"Where was {BASIL} born?", "max_output_tokens": 6, "temperature": 0,
           "include": INCLUDE, "top_logprobs": 3}
    done = await client.responses.create(**ask)
    logprobs = done.output[0].content[0].logprobs
    assert logprobs is not None and len(logprobs) == done.usage.output_tokens == 6
    assert all(len(p.top_logprobs) == 3 and p.token == p.top_logprobs[0].token for p in logprobs)  # greedy
    events = [e async for e in await client.responses.create(**ask, stream=True)]
    streamed = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    final = events[-1].response.output[0].content[0]
    assert len(streamed) == 6 and [(d.token, d.logprob) for d in streamed] == [(p.token, p.logprob) for p in final.logprobs]
    assert 'guard_flagged_total{action="eco"} 2.0' in await scrape(base)
    refused = sdk(await guard_server(local_engine, policy=REFUSE_POLICY))
    answer = await refused.responses.create(**ask)
    assert answer.output_text and answer.output[0].content[0].logprobs is None  # a refusal samples nothing


def test_stream_events_carry_logprobs_of_held_text_and_floor_minus_infinity():
    """A token whose text is held (incomplete UTF-8) sends its log-prob with the next delta; a token
    the grammar forbade (-inf) is written as vLLM writes it (-9999.0), never as invalid JSON."""
    meta = ResponseMeta(shape=RESPONSES, model="m", logprobs=True)
    shaper = ResponsesStreamShaper(meta)
    top = (TopLogprob(7, "é", -0.1), TopLogprob(8, "x", -math.inf))
    events = shaper.start()
    events += shaper.feed(GenerationChunk(text="", token_ids=[5], logprobs=[TokenLogprob(5, "\ufffd", -0.5, top)]))
    events += shaper.feed(GenerationChunk(text="é", token_ids=[6], logprobs=[TokenLogprob(6, "\ufffd", -0.2, top)]))
    events += shaper.feed(GenerationChunk(finish_reason="stop", prompt_tokens=3, completion_tokens=2))
    events += shaper.end()
    (delta,) = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [lp["logprob"] for lp in delta["logprobs"]] == [-0.5, -0.2]
    assert delta["logprobs"][0]["top_logprobs"] == [{"token": "é", "logprob": -0.1}, {"token": "x", "logprob": -9999.0}]
    added = next(e for e in events if e["type"] == "response.content_part.added")
    assert added["part"]["logprobs"] == []
    final = events[-1]["response"]["output"][0]["content"][0]["logprobs"]
    assert [list(e) for e in final] == [["token", "bytes", "logprob", "top_logprobs"]] * 2  # vLLM's field order
    assert final[1]["top_logprobs"][0] == {"token": "é", "bytes": [195, 169], "logprob": -0.1}
