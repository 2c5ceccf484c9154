"""Chat templates shipped with the guard (package data).

The bundled default model (SmolLM2-135M-Instruct) has a chat template without tool syntax, so tools
and tool results would never reach the model. ``smollm2_tool_chat.jinja`` adds them in the hermes
style that vLLM's ``hermes`` tool parser reads back (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``),
the way vLLM ships example tool templates for models that lack one. Without tools it renders the
model's own template byte for byte, so plain chats (and their prompt embeddings) are unchanged.

The same file serves both engines: the local engine passes its text as ``chat_template=`` to
``apply_chat_template(..., tools=...)``; a vLLM server gets its path with
``--chat-template PATH --enable-auto-tool-choice --tool-call-parser hermes``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SMOLLM2_TOOL_CHAT_TEMPLATE = "smollm2_tool_chat.jinja"


def template_path(name: str = SMOLLM2_TOOL_CHAT_TEMPLATE) -> Path:
    """The file of a shipped template (a real path: vLLM's ``--chat-template`` takes a file)."""
    path = Path(str(resources.files(__package__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no shipped chat template {name!r} in {path.parent}")
    return path


def read_template(name: str = SMOLLM2_TOOL_CHAT_TEMPLATE) -> str:
    """The template's text, for ``tokenizer.apply_chat_template(..., chat_template=...)``."""
    return template_path(name).read_text(encoding="utf-8")
