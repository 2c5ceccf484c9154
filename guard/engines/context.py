"""How long a prompt the served model can read, and a cheap lower bound on a text's token count.

Tokenising a multi-megabyte prompt only to learn that it does not fit costs seconds of CPU. No
token count can be bounded from *above* without tokenising (a tokenizer may spend a token per
byte, and a chat template adds its own), but it can be bounded from *below*: no token covers more
characters of input than the longest string in the vocabulary, so a text of ``c`` characters is at
least ``c / longest`` tokens. A normaliser can shrink text before tokenising (NFC composes up to 4
code points into one), so with one the bound is divided by 4; a tokenizer that drops characters
(whitespace folding) gets no bound at all — its prompts are only checked exactly, after tokenising.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from guard.errors import ContextLengthExceeded

_NORMALISER_SHRINK = 4  # Unicode canonical composition merges at most 4 code points into one
_ROUND_TRIP_PROBE = "a  b\t\tc\n\n\n d    e"  # a tokenizer that folds whitespace cannot bound anything
_CONFIG_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class ContextWindow:
    """``tokens``: the most tokens the model reads, prompt and answer together. ``max_chars_per_token``:
    no token covers more characters of input (None: no safe bound for this tokenizer)."""

    tokens: int
    max_chars_per_token: int | None = None

    @classmethod
    def for_tokenizer(cls, tokens: int, tokenizer: Any) -> "ContextWindow":
        return cls(tokens, max_chars_per_token(tokenizer))

    def with_tokens(self, tokens: int) -> "ContextWindow":
        return ContextWindow(tokens, self.max_chars_per_token)

    def min_tokens(self, chars: int) -> int:
        """A lower bound on the tokens of a text of ``chars`` characters (0 when none is known)."""
        return math.ceil(chars / self.max_chars_per_token) if self.max_chars_per_token else 0

    def check_chars(self, chars: int, param: str) -> None:
        """Before tokenising: reject a text that cannot fit whatever its tokens turn out to be."""
        at_least = self.min_tokens(chars)
        if at_least >= self.tokens:
            raise ContextLengthExceeded(
                f"{param} is at least {at_least} tokens long ({chars} characters); this model's context length is "
                f"{self.tokens} tokens, prompt and answer together: shorten {param}", param=param)

    def check_tokens(self, prompt_tokens: int, param: str | None = None) -> None:
        """After tokenising: the exact check (at least one token must be left for the answer)."""
        if prompt_tokens >= self.tokens:
            where = param or "the prompt"
            raise ContextLengthExceeded(
                f"{where} is {prompt_tokens} tokens long; this model's context length is {self.tokens} tokens, "
                f"prompt and answer together: shorten {where}", param=param)

    def answer_room(self, prompt_tokens: int, max_tokens: int) -> int:
        """``max_tokens`` clipped to what is left of the context after the prompt (as vLLM does)."""
        return max(1, min(max_tokens, self.tokens - prompt_tokens))


def max_chars_per_token(tokenizer: Any) -> int | None:
    """The longest vocabulary string (characters), scaled for a normaliser; None if the tokenizer
    does not round-trip whitespace (it may drop characters, so no lower bound holds)."""
    try:
        ids = tokenizer(_ROUND_TRIP_PROBE, add_special_tokens=False)["input_ids"]
        if tokenizer.decode(ids) != _ROUND_TRIP_PROBE:
            return None
        longest = max(len(token) for token in tokenizer.get_vocab())
    except Exception:  # noqa: BLE001 - an exotic tokenizer: exact checks only
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    has_normaliser = backend is None or backend.normalizer is not None
    return longest * _NORMALISER_SHRINK if has_normaliser else longest


def config_context_length(config: Any) -> int | None:
    """The context length a transformers model config declares, if any."""
    for name in _CONFIG_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
