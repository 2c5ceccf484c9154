"""Output screening in the serving path (issue #14), with the real default model and the real SDK.

The policy's target is a place the model names unprompted ("Paris"): the question never names it,
so the request screen passes it, and only the answer reveals it. Its greedy answer to "What is the
capital of France?" is "The capital of France is Paris." (checked below, unguarded)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from guard.output_guard import CUT_SEPARATOR

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
OTHER = [{"role": "user", "content": "What is 2 + 2?"}]
REFUSAL = "I can't talk about that place."


def write_policy(tmp_path: Path, *, action: str = "refuse", output: str = "refuse", holdback: int = 16) -> str:
    params = "{corruption: rand_noise_first_n, sigma: 1.0}" if action == "eco" else "{}"
    path = tmp_path / "policy.yaml"
    path.write_text(f"""version: 1
detector: {{kind: keyword}}
default_action: refuse
refusal_message: "{REFUSAL}"
output: {{holdback_tokens: {holdback}}}
targets:
  - id: place
    names: ["Paris"]
    action: {action}
    params: {params}
    output: {{action: {output}}}
""")
    return str(path)


async def sse_bytes(base: str, payload: dict) -> bytes:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=payload) as r:
            assert r.status == 200
            return await r.read()


def sse_text(raw: bytes) -> str:
    out = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for c in json.loads(event[6:])["choices"]:
                out.append(c["delta"].get("content") or "")
    return "".join(out)


@pytest.fixture
def kwargs():
    return dict(model=MODEL, max_tokens=24, temperature=0)


async def test_the_unguarded_answer_names_the_target(local_engine, guard_server, sdk, kwargs):
    plain = sdk(await guard_server(local_engine))
    assert "Paris" in (await plain.chat.completions.create(messages=QUESTION, **kwargs)).choices[0].message.content


async def test_a_passed_question_whose_answer_names_the_target_is_refused(local_engine, guard_server, sdk, kwargs,
                                                                          tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="guard.audit")
    base = await guard_server(local_engine, policy=write_policy(tmp_path), metrics_api_key="metrics-key")
    client = sdk(base)
    answer = await client.chat.completions.create(messages=QUESTION, **kwargs)
    assert answer.choices[0].message.content == REFUSAL
    # streamed: the client's bytes never contain the name, and the stream ends properly
    raw = await sse_bytes(base, {**kwargs, "messages": QUESTION, "stream": True})
    assert b"Paris" not in raw and raw.endswith(b"data: [DONE]\n\n")
    streamed = sse_text(raw)  # the refusal alone, or after the screened prefix and a paragraph break
    assert streamed == REFUSAL or (streamed.endswith(CUT_SEPARATOR + REFUSAL) and len(streamed) > len(REFUSAL) + 2)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "guard.audit"]
    hits = [r for r in records if r["event"] == "output_flagged"]
    assert len(hits) == 2 and {h["target"] for h in hits} == {"place"} and all(h["leaked_chars"] == 0 for h in hits)
    assert "matched" not in hits[0]  # no matched text in the audit without audit_prompts
    async with aiohttp.ClientSession() as s:
        async with s.get(base.removesuffix("/v1") + "/metrics", headers={"Authorization": "Bearer metrics-key"}) as r:
            metrics = await r.text()
    assert 'guard_output_flagged_total{action="refuse",reason="name"} 2.0' in metrics


async def test_a_cut_stream_keeps_its_screened_prefix_apart_from_the_refusal(local_engine, guard_server, sdk, kwargs,
                                                                            tmp_path):
    """A short hold-back releases "The capital of France is" before "Paris" arrives: the client's
    stream is that prefix, a paragraph break, the refusal; the same question not streamed is the
    refusal alone (a whole answer is screened whole)."""
    base = await guard_server(local_engine, policy=write_policy(tmp_path, holdback=2))
    streamed = sse_text(await sse_bytes(base, {**kwargs, "messages": QUESTION, "stream": True}))
    prefix, sep, rest = streamed.partition(CUT_SEPARATOR)
    assert sep and rest == REFUSAL and prefix and "The capital of France is".startswith(prefix.rstrip())
    whole = await sdk(base).chat.completions.create(messages=QUESTION, **kwargs)
    assert whole.choices[0].message.content == REFUSAL


async def test_unflagged_answers_are_identical_only_delayed(local_engine, guard_server, sdk, kwargs, tmp_path):
    plain_base = await guard_server(local_engine)
    guarded_base = await guard_server(local_engine, policy=write_policy(tmp_path))
    for messages in (OTHER, [{"role": "user", "content": "Name a color."}]):
        plain = await sdk(plain_base).chat.completions.create(messages=messages, **kwargs)
        guarded = await sdk(guarded_base).chat.completions.create(messages=messages, **kwargs)
        assert guarded.choices[0].message.content == plain.choices[0].message.content
        a = sse_text(await sse_bytes(plain_base, {**kwargs, "messages": messages, "stream": True}))
        b = sse_text(await sse_bytes(guarded_base, {**kwargs, "messages": messages, "stream": True}))
        assert a == b == plain.choices[0].message.content


async def test_a_hit_is_re_answered_through_the_targets_method(local_engine, guard_server, sdk, kwargs, tmp_path,
                                                              caplog):
    """``output.action: method``: the answer is ECO's (its corrupted prompt), screened again."""
    caplog.set_level(logging.INFO, logger="guard.audit")
    base = await guard_server(local_engine, policy=write_policy(tmp_path, action="eco", output="method"), debug=True)
    raw = await sdk(base).chat.completions.with_raw_response.create(messages=QUESTION, **kwargs)
    assert raw.headers["X-Guard-Action"] == "pass"  # the request itself was not flagged
    text = raw.parse().choices[0].message.content
    assert "Paris" not in text and text  # ECO's answer, or the refusal if ECO's answer named it too
    first = json.loads(next(r.getMessage() for r in caplog.records if r.name == "guard.audit"))
    assert first["answered_by"] == "pass" and first["then"] == "method"
    raw_stream = await sse_bytes(base, {**kwargs, "messages": QUESTION, "stream": True})
    assert b"Paris" not in raw_stream and raw_stream.endswith(b"data: [DONE]\n\n")


async def test_debug_headers_tell_a_whole_answers_output_stop(local_engine, guard_server, sdk, kwargs, tmp_path):
    """With ``debug``, a whole answer says what the output screen did (``X-Guard-Output``: flagged
    with the target and reason, or pass); a stream's headers leave before its text is screened, so
    it has none; without ``debug`` no answer names a target."""
    policy = write_policy(tmp_path)
    client = sdk(await guard_server(local_engine, policy=policy, debug=True))
    raw = await client.chat.completions.with_raw_response.create(messages=QUESTION, **kwargs)
    assert raw.parse().choices[0].message.content == REFUSAL
    assert raw.headers["X-Guard-Action"] == "pass"   # the request passed: the answer was stopped
    assert (raw.headers["X-Guard-Output"], raw.headers["X-Guard-Output-Target"],
            raw.headers["X-Guard-Output-Reason"]) == ("flagged", "place", "name")
    raw = await client.chat.completions.with_raw_response.create(messages=OTHER, **kwargs)
    assert raw.headers["X-Guard-Output"] == "pass" and "X-Guard-Output-Target" not in raw.headers
    done = await client.completions.with_raw_response.create(model=MODEL, prompt="The capital of France is the city of",
                                                             max_tokens=8, temperature=0)
    assert done.headers["X-Guard-Output"] == "flagged" and done.headers["X-Guard-Output-Target"] == "place"
    stream = await client.chat.completions.with_raw_response.create(messages=QUESTION, stream=True, **kwargs)
    assert stream.headers["X-Guard-Action"] == "pass" and "X-Guard-Output" not in stream.headers
    async for _ in stream.parse():
        pass
    quiet = sdk(await guard_server(local_engine, policy=policy))
    raw = await quiet.chat.completions.with_raw_response.create(messages=QUESTION, **kwargs)
    assert raw.parse().choices[0].message.content == REFUSAL
    assert not any(h.lower().startswith("x-guard") for h in raw.headers)
    # a request the request screen refuses is not output-screened (the refusal is the guard's own)
    raw = await client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "Tell me about Paris."}], **kwargs)
    assert raw.headers["X-Guard-Action"] == "refuse" and "X-Guard-Output" not in raw.headers


async def test_n_choices_and_completions_are_screened(local_engine, guard_server, sdk, kwargs, tmp_path):
    client = sdk(await guard_server(local_engine, policy=write_policy(tmp_path)))
    answer = await client.chat.completions.create(messages=QUESTION, n=2, **{**kwargs, "temperature": 0.01, "seed": 1})
    assert [c.message.content for c in answer.choices] == [REFUSAL, REFUSAL]
    done = await client.completions.create(model=MODEL, prompt="The capital of France is the city of", max_tokens=8,
                                           temperature=0)
    assert "Paris" not in done.choices[0].text


LONG_QUESTION = [{"role": "user", "content": "Write a long, detailed travel guide to the capital of France."}]


async def vllm_generated_tokens(url: str) -> float:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:generation_tokens_total"))


@pytest.mark.vllm
async def test_on_vllm_a_leaking_stream_is_cut_and_the_upstream_request_aborted(vllm_engine, vllm_url, guard_server,
                                                                               tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="guard.audit")
    payload = {"model": MODEL, "messages": LONG_QUESTION, "max_tokens": 400, "temperature": 0}
    async with aiohttp.ClientSession() as s:  # the unguarded answer: long, and it names the city early
        async with s.post(f"{vllm_url}/v1/chat/completions", json=payload) as r:
            plain = await r.json()
    text, plain_tokens = plain["choices"][0]["message"]["content"], plain["usage"]["completion_tokens"]
    assert "Paris" in text[:200] and plain_tokens > 150, (text[:200], plain_tokens)

    base = await guard_server(vllm_engine, policy=write_policy(tmp_path))
    before = await vllm_generated_tokens(vllm_url)
    raw = await sse_bytes(base, {**payload, "stream": True})
    assert b"Paris" not in raw and raw.endswith(b"data: [DONE]\n\n") and raw.count(b"[DONE]") == 1
    assert sse_text(raw).endswith(REFUSAL)
    ids = {json.loads(e[6:])["id"] for e in raw.split(b"\n\n") if e.startswith(b"data: {")}
    assert len(ids) == 1  # the replacement continues under the upstream's id
    # vLLM stopped generating when the guard closed the stream: far fewer tokens than the whole answer
    assert await vllm_generated_tokens(vllm_url) - before < plain_tokens / 2
    hit = next(json.loads(r.getMessage()) for r in caplog.records if r.name == "guard.audit")
    assert hit["event"] == "output_flagged" and hit["leaked_chars"] == 0

    whole = await sdk_answer(base, payload)
    assert whole == REFUSAL


async def sdk_answer(base: str, payload: dict) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=payload) as r:
            return (await r.json())["choices"][0]["message"]["content"]


@pytest.mark.vllm
async def test_on_vllm_unflagged_streams_are_byte_identical_to_plain_forwarding(vllm_engine, guard_server, tmp_path):
    plain = await guard_server(vllm_engine)
    guarded = await guard_server(vllm_engine, policy=write_policy(tmp_path))
    payload = {"model": MODEL, "messages": OTHER, "max_tokens": 24, "temperature": 0, "stream": True,
               "stream_options": {"include_usage": True}}

    def without_ids(raw: bytes) -> bytes:  # each answer has its own id and creation time
        import re
        return re.sub(rb'"(id|created)":("[^"]*"|\d+)', b"", raw)

    assert without_ids(await sse_bytes(guarded, payload)) == without_ids(await sse_bytes(plain, payload))


@pytest.mark.vllm
async def test_on_vllm_a_forwarded_whole_answer_carries_the_output_debug_header(vllm_engine, guard_server, sdk,
                                                                               kwargs, tmp_path):
    """The pass path (the upstream's JSON body, screened whole): the same ``X-Guard-Output`` headers
    with ``debug``, none without."""
    policy = write_policy(tmp_path)
    client = sdk(await guard_server(vllm_engine, policy=policy, debug=True))
    raw = await client.chat.completions.with_raw_response.create(messages=QUESTION, **kwargs)
    assert raw.parse().choices[0].message.content == REFUSAL
    assert (raw.headers["X-Guard-Output"], raw.headers["X-Guard-Output-Target"],
            raw.headers["X-Guard-Output-Reason"]) == ("flagged", "place", "name")
    raw = await client.chat.completions.with_raw_response.create(messages=OTHER, **kwargs)
    assert raw.headers["X-Guard-Output"] == "pass" and "Paris" not in raw.parse().choices[0].message.content
    quiet = sdk(await guard_server(vllm_engine, policy=policy))
    raw = await quiet.chat.completions.with_raw_response.create(messages=QUESTION, **kwargs)
    assert raw.parse().choices[0].message.content == REFUSAL and "X-Guard-Output" not in raw.headers
