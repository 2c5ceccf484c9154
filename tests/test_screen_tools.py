"""Every text the model reads is screened (issue #13): a forget target named only in a tool result,
a tool description, a JSON-schema description or an earlier assistant tool call is caught like one
in a user turn, and nothing of it reaches the upstream; the same request without the name is
forwarded byte for byte. Large tool schemas go through the screening limits and the fail mode,
never around them. A recording fake vLLM sits behind the guard; the detector is the policy's real
name matcher; the tokenizer is the default model's."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guard.models import DEFAULT_SERVED_NAME
from tests.support.openai_errors import assert_openai_error
from tests.support.upstream import forwarded

MODEL = DEFAULT_SERVED_NAME
POLICY = Path(__file__).parent / "fixtures" / "refuse_keyword.yaml"
REFUSAL = "I'm sorry, but I can't share information about that."
NAME = "Basil Mahfouz Al-Kuwaiti"
CLEAN = "Ada Lovelace"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "lookup", "description": "Looks up a person in the library catalogue.",
    "parameters": {"type": "object", "properties": {"who": {"type": "string", "description": "whom to look up"}},
                   "required": ["who"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"who": "him"})}}


def _with(who: str, where: str) -> dict[str, Any]:
    """A tool conversation in which ``who`` appears only at ``where``."""
    tool = copy.deepcopy(WEATHER_TOOL)
    call = copy.deepcopy(CALL)
    result = "The catalogue has two books by this author."
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 8}
    if where == "tool_result":
        result = f"Found: {who}, born in Kuwait City."
    elif where == "tool_description":
        tool["function"]["description"] = f"Answers questions about {who}."
    elif where == "parameter_description":
        tool["function"]["parameters"]["properties"]["who"]["description"] = f"always {who}"
    elif where == "assistant_tool_call":
        call["function"]["arguments"] = json.dumps({"who": who})
    elif where == "schema_description":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "bio", "schema": {
            "type": "object", "description": f"A biography of {who}", "properties": {"born": {"type": "string"}}}}}
    elif where == "schema_property_name":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "bio", "schema": {
            "type": "object", "properties": {who: {"type": "string"}}}}}
    elif where == "text_part":
        pass
    body["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "Who wrote the books?"}] +
         ([{"type": "text", "text": who}] if where == "text_part" else [])},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    body["tools"] = [tool]
    return body


PLACES = ["tool_result", "tool_description", "parameter_description", "assistant_tool_call", "schema_description",
          "schema_property_name", "text_part"]


@pytest.fixture
async def guarded(fake_upstream, fake_vllm_engine, guard_server):
    """``await guarded(**settings)`` -> (guard base URL, the recording fake behind it)."""

    async def start(**settings: Any) -> tuple[str, Any]:
        fake = await fake_upstream(tokens=4)
        engine = await fake_vllm_engine(fake)
        return await guard_server(engine, policy=str(settings.pop("policy", POLICY)), **settings), fake

    return start


async def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url, data=json.dumps(body).encode(),
                                                    headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("where", PLACES)
async def test_a_target_named_only_in_a_tool_field_is_refused_and_never_forwarded(guarded, where):
    base, fake = await guarded()
    for stream in (False, True):
        status, raw = await _post(f"{base}/chat/completions", {**_with(NAME, where), "stream": stream})
        assert status == 200, raw[:300]
        text = raw.decode()
        assert REFUSAL in text, text[:300]
    assert forwarded(fake.log) == []
    # the same conversation without the name passes, byte for byte
    clean = json.dumps(_with(CLEAN, where)).encode()
    async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", data=clean,
                                                    headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()
    sent = forwarded(fake.log)
    assert len(sent) == 1 and sent[0].body == clean


async def test_a_target_in_responses_items_is_refused_and_never_forwarded(guarded):
    base, fake = await guarded()
    body = {"model": MODEL, "max_output_tokens": 8, "instructions": "Answer briefly.",
            "tools": [{"type": "function", "name": "lookup", "description": "Catalogue search.",
                       "parameters": {"type": "object", "properties": {}}}],
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Who wrote it?"}]},
                      {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "c1", "output": f"{NAME}, of Kuwait City"}]}
    for stream in (False, True):
        status, raw = await _post(f"{base}/responses", {**body, "stream": stream})
        assert status == 200 and REFUSAL in raw.decode()
    assert forwarded(fake.log) == []
    body["input"][2]["output"] = f"{CLEAN}, of London"  # without the name: forwarded to vLLM's own /v1/responses
    status, raw = await _post(f"{base}/responses", body)
    assert status == 200 and json.loads(raw)["object"] == "response"
    (sent,) = forwarded(fake.log)
    assert sent.path == "/v1/responses" and {k: v for k, v in sent.json().items() if k != "max_tokens"} == body


def _limited_policy(tmp_path: Path, fail_mode: str) -> Path:
    policy = POLICY.read_text().replace("detector:\n  kind: keyword\n",
                                        "detector:\n  kind: keyword\n  max_screen_tokens: 2000\n")
    path = tmp_path / f"policy-{fail_mode}.yaml"
    path.write_text(policy + f"fail_mode: {fail_mode}\n")
    return path


async def test_a_large_tool_schema_goes_through_the_screening_limit_and_the_fail_mode(guarded, tmp_path):
    """3,000 described parameters: past max_screen_tokens the schema is never skipped silently:
    fail-closed refuses it naming the limit (nothing forwarded), fail-open passes it, counted."""
    body = _with(CLEAN, "tool_result")
    props = {f"p{i}": {"type": "string", "description": f"field number {i} of the record"} for i in range(3000)}
    body["tools"][0]["function"]["parameters"]["properties"] = props
    base, fake = await guarded(policy=_limited_policy(tmp_path, "closed"))
    status, raw = await _post(f"{base}/chat/completions", body)
    err = assert_openai_error(status, raw)
    assert status == 400 and err["param"] == "detector.max_screen_tokens", err
    assert forwarded(fake.log) == []
    base, fake = await guarded(policy=_limited_policy(tmp_path, "open"), metrics_api_key="scrape-key-123")
    status, raw = await _post(f"{base}/chat/completions", body)
    assert status == 200 and len(forwarded(fake.log)) == 1
    async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/metrics",
                                                   headers={"Authorization": "Bearer scrape-key-123"}) as r:
        assert 'guard_screening_failures_total{outcome="passed_fail_open"} 1.0' in await r.text()
