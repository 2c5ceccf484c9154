"""What the guard screens is what the model reads (issue 18, "screen what the model reads"):
text parts joined as vLLM joins them, every role, participant names, and the text across each turn
boundary; checked against the default model's real chat rendering and, with the ``vllm`` marker,
against a real vLLM server's own tokenisation of the same request."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from guard.engines.rendering import render_chat
from guard.models import DEFAULT_SERVED_NAME
from guard.protocol import ChatCompletionRequest
from guard.screened_text import NAME_EXTENSION, SEAM_WORDS, join_parts, turn_seams

MODEL = DEFAULT_SERVED_NAME
PARTS = [{"type": "text", "text": "What awards has Basil"}, {"type": "text", "text": "Mahfouz Al-Kuwaiti received?"}]


def request(messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": MODEL, "messages": messages})


def test_text_parts_are_joined_with_a_newline_as_vllm_joins_them():
    messages = [{"role": "user", "content": PARTS}]
    req = request(messages)
    joined = "What awards has Basil\nMahfouz Al-Kuwaiti received?"
    assert req.messages[0].text == joined == join_parts(p["text"] for p in PARTS)
    assert req.plain_messages()[0]["content"] == req.messages[0].text  # the engine renders the screened string
    assert req.screen_texts({"messages": messages}) == [req.messages[0].text]


def test_every_role_and_the_names_are_screened():
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "Basil_M"},
                {"role": "assistant", "content": "Basil Mahfouz Al-Kuwaiti was born in Kuwait City."},
                {"role": "user", "content": "Go on."}]
    texts = request(messages).screen_texts({"messages": messages})
    assert texts[0] == "Basil_M"
    assert texts[-4:] == ["Be brief.", "Hi", "Basil Mahfouz Al-Kuwaiti was born in Kuwait City.", "Go on."]


def test_a_seam_joins_the_end_of_a_turn_to_the_start_of_the_next():
    seams = turn_seams(["Well then, tell me please, what awards has Basil",
                        "Mahfouz Al-Kuwaiti received over his long and celebrated career?"])
    assert seams == ["then, tell me please, what awards has Basil Mahfouz Al-Kuwaiti received over his long and "
                     "celebrated"]  # SEAM_WORDS (8) each side


def test_seams_reach_across_short_turns_and_skip_empty_ones():
    assert turn_seams(["Who is", "Basil", "", "  ", "Mahfouz", "Al-Kuwaiti?"]) == ["Who is Basil Mahfouz Al-Kuwaiti?"]


def test_seams_are_bounded_one_short_text_per_boundary():
    long_turn = " ".join(f"w{i}" for i in range(10_000))
    seams = turn_seams([long_turn] * 50)
    assert len(seams) == 1  # the boundaries all read the same; duplicates are screened once
    assert len(seams[0].split()) == 2 * SEAM_WORDS
    distinct = turn_seams([f"{long_turn} end{i}" for i in range(50)])
    assert len(distinct) == 49 and all(len(s.split()) == 2 * SEAM_WORDS for s in distinct)


def test_a_single_turn_has_no_seam():
    assert turn_seams(["What awards has Basil Mahfouz Al-Kuwaiti received?"]) == []


def test_each_screened_content_is_what_the_local_engine_renders(default_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path)
    req = request([{"role": "system", "content": PARTS}, {"role": "user", "content": PARTS}])
    rendered = render_chat(tok, req.plain_messages())
    contents = [m.text for m in req.messages]
    assert [rendered.text[s.char_start:s.char_end] for s in rendered.spans] == contents


@pytest.mark.vllm
async def test_vllm_tokenises_text_parts_as_the_guard_renders_them(vllm_engine, vllm_url):
    """The real server's tokenisation of a request with text parts equals the guard's rendering of
    the screened string: both read "Basil\\nMahfouz", neither "BasilMahfouz"."""
    messages = [{"role": "system", "content": PARTS}, {"role": "user", "content": PARTS}]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{vllm_url}/tokenize", json={"model": MODEL, "messages": messages,
                                                              "add_generation_prompt": True}) as resp:
            assert resp.status == 200, await resp.text()
            tokens = (await resp.json())["tokens"]
    assert tokens == vllm_engine.render_chat(request(messages).plain_messages()).token_ids


def test_a_seam_does_not_cut_a_capitalised_name() -> None:
    """A seam that began at the surname of "Naguib Mahfouz" read as a bare surname (a forget target's,
    for TOFU's Basil Mahfouz Al-Kuwaiti); it reaches back for the whole run, bounded (issue #15)."""
    seams = turn_seams(["I like Naguib Mahfouz. His novels are long and very good", "Which one first?"])
    assert seams == ["Naguib Mahfouz. His novels are long and very good Which one first?"]
    seams = turn_seams(["Hi", "What do you know about the winner Naguib Mahfouz and his work"])
    assert seams == ["Hi What do you know about the winner Naguib Mahfouz"]
    words = " ".join(f"W{i}" for i in range(30))
    (seam,) = turn_seams(["x", words])
    assert seam.split() == ["x"] + [f"W{i}" for i in range(8 + NAME_EXTENSION)]
