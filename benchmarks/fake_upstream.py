"""A fake OpenAI/vLLM server for isolating the proxy in benchmarks: answers every chat or text
completion with a fixed N-token answer, streamed at a steady pace (or instantly).

    python benchmarks/fake_upstream.py --port 8090 --tokens 64 --delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

MODEL = "SmolLM2-135M-Instruct"


def build_fake_app(tokens: int, delay_s: float, model: str = MODEL) -> web.Application:
    words = [f" tok{i}" for i in range(tokens)]

    def chunk(kind: str, text: str | None, finish: str | None, rid: str) -> bytes:
        if kind == "chat":
            delta = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def complete(request: web.Request) -> web.StreamResponse:
        kind = "chat" if request.path.endswith("chat/completions") else "text"
        body = await request.json()
        rid = f"fake-{id(request)}"
        if not body.get("stream"):
            if delay_s:
                await asyncio.sleep(delay_s * tokens)
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if kind == "chat" else {"index": 0, "text": text, "finish_reason": "length"})
            return web.json_response({"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                                      "created": int(time.time()), "model": model, "choices": [choice],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        # Tokens are due at fixed times after the first, as a GPU server emits them: a late wake-up
        # (another process holding the core) does not push every later token back too.
        start = time.monotonic()
        for i, word in enumerate(words, 1):
            if delay_s:
                await asyncio.sleep(max(0.0, start + i * delay_s - time.monotonic()))
            await resp.write(chunk(kind, word, None, rid))
        await resp.write(chunk(kind, None, "length", rid))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/v1/completions", complete)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    web.run_app(build_fake_app(args.tokens, args.delay_ms / 1000), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
