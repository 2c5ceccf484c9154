"""The service's answer objects: a stream always ends with ``data: [DONE]`` and always releases what it
holds, whether it was sent in full, cut by an error, or never started (the client left first)."""

from __future__ import annotations

import json

from guard.engines.base import GenerationChunk
from guard.engines.sse import DONE
from guard.errors import UpstreamError
from guard.response_shapes import CHAT, ResponseMeta
from guard.serving import StreamAnswer, shaped_frames


async def _chunks(*items):
    for item in items:
        if isinstance(item, BaseException):
            raise item
        yield item


def _events(frames: list[bytes]) -> list[dict | str]:
    out: list[dict | str] = []
    for f in b"".join(frames).split(b"\n\n"):
        if f:
            data = f.removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def test_a_generated_stream_is_shaped_and_ends_with_done():
    rest = _chunks(GenerationChunk(text=" world"), GenerationChunk(finish_reason="stop", prompt_tokens=3, completion_tokens=2))
    frames = [f async for f in shaped_frames(ResponseMeta(shape=CHAT, model="m"), True, GenerationChunk(text="Hello"), rest)]
    events = _events(frames)
    assert events[-1] == "[DONE]" and frames[-1] == DONE
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if isinstance(e, dict) and e["choices"])
    assert text == "Hello world" and events[-2]["usage"]["completion_tokens"] == 2


async def test_an_error_mid_stream_becomes_an_error_frame_then_done():
    rest = _chunks(GenerationChunk(text=" wor"), UpstreamError("the upstream went away"))
    events = _events([f async for f in shaped_frames(ResponseMeta(shape=CHAT, model="m"), False,
                                                     GenerationChunk(text="Hello"), rest)])
    assert events[-1] == "[DONE]" and events[-2]["error"]["message"] == "the upstream went away"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2] if e["choices"]) == "Hello wor"


async def test_a_stream_never_started_still_releases_and_is_counted_once():
    released, counted = [], []

    async def release() -> None:
        released.append(True)

    answer = StreamAnswer(_chunks(b"data: {}\n\n"), release=release)
    answer.when_closed(counted.append)
    await answer.aclose(finished=False)
    await answer.aclose(finished=False)
    assert released == [True] and counted == [False]
