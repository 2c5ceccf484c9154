"""The forget01 serving policy (two TOFU authors, facts mined from the real data) and the default
model's tokenizer, which cuts answers into the deltas a stream carries."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def forget01_policy():
    from guard.policy import load_policy

    return load_policy(REPO / "policies" / "tofu" / "forget01.yaml")


@pytest.fixture(scope="session")
def screener(forget01_policy):
    """The forget01 screener as the serving path builds it without an artifact (facts mined)."""
    from guard.output_screen import build_output_screener

    return build_output_screener(forget01_policy)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from guard.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("default"))


def token_deltas(tokenizer, text: str) -> list[str]:
    """``text`` as the deltas a stream sends: one per token, each the new text of the decoded prefix."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    out, prev = [], ""
    for i in range(1, len(ids) + 1):
        cur = tokenizer.decode(ids[:i])
        out.append(cur[len(prev):])
        prev = cur
    assert "".join(out) == text
    return out
