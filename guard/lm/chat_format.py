"""Chat-formatted (question, answer) examples with labels on the answer only.

``encode_qa`` renders one QA pair the way the served model sees it: the prompt is the model's chat
template applied to ``[system?, user]`` with the generation prompt (exactly what an engine sends
before generating), and the answer is the text the template puts after it (the answer and the
end-of-turn token). Labels are ``-100`` on every prompt token, so the loss is on answer tokens only
(as open-unlearning does for chat models). Tokenisers without a chat template fall back to a plain
``Question: …\\nAnswer: `` prompt followed by the answer and EOS.

``pad_batch`` pads a list of encoded examples into a batch (right padding for training, left
padding for generation); ``guard.lm.nll.answer_nll_sums`` scores such a batch.

Fine-tuning, the unlearning trainers and the TOFU evaluation all encode through this module, so the
answer tokens the evaluation scores are exactly those the fine-tuning trained on.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer: "


def _messages(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": question}]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """The text the model is conditioned on before it answers ``question``."""
    if not has_chat_template(tokenizer):
        prefix = tokenizer.bos_token or ""
        return prefix + PLAIN_PROMPT.format(question=question)
    return tokenizer.apply_chat_template(_messages(question, system_prompt), tokenize=False, add_generation_prompt=True)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # the template text already carries every special token it needs
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the generation prompt for ``question`` (for greedy decoding)."""
    return _ids(tokenizer, prompt_text(tokenizer, question, system_prompt))


def _answer_text(tokenizer: Any, question: str, answer: str, system_prompt: str | None, prompt: str) -> str:
    if not has_chat_template(tokenizer):
        return answer
    full = tokenizer.apply_chat_template(
        _messages(question, system_prompt) + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        # templates that rewrite earlier turns once an answer follows: fall back to prompt + answer
        return answer
    return full[len(prompt):]


def encode_qa(
    tokenizer: Any,
    question: str,
    answer: str,
    max_length: int,
    system_prompt: str | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise one QA pair; ``labels`` is ``-100`` on the prompt, the answer ids elsewhere.

    The answer part ends with the end-of-turn/EOS token (whatever the template puts after the
    answer, cut right after the last EOS; EOS is appended when the template has none). Sequences
    longer than ``max_length`` lose the end of the answer. Raises ``ValueError`` when the prompt
    alone does not fit, since such an example would carry no answer token.
    """
    prompt = prompt_text(tokenizer, question, system_prompt)
    prompt_ids = _ids(tokenizer, prompt)
    answer_ids = _ids(tokenizer, _answer_text(tokenizer, question, answer, system_prompt, prompt))
    eos = tokenizer.eos_token_id
    if eos is not None:
        if eos in answer_ids:
            last = len(answer_ids) - 1 - answer_ids[::-1].index(eos)
            answer_ids = answer_ids[: last + 1]  # drop what the template adds after the turn ends ("\n")
        else:
            answer_ids = answer_ids + [eos]
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"the prompt alone is {len(prompt_ids)} tokens, max_length is {max_length}: raise max_length"
        )
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
    }


def pad_batch(
    items: Sequence[dict[str, torch.Tensor]],
    pad_token_id: int,
    side: str = "right",
) -> dict[str, torch.Tensor]:
    """Stack encoded examples: ``input_ids`` padded with ``pad_token_id``, ``labels`` with ``-100``,
    ``attention_mask`` with 0. ``side='left'`` for generation. Keys missing from an item are skipped
    (e.g. prompt-only items without ``labels``)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not items:
        raise ValueError("pad_batch needs at least one item")
    width = max(int(item["input_ids"].shape[0]) for item in items)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    out: dict[str, torch.Tensor] = {}
    for key, value in fill.items():
        if key not in items[0]:
            continue
        rows = []
        for item in items:
            seq = item[key]
            pad = torch.full((width - seq.shape[0],), value, dtype=seq.dtype)
            rows.append(torch.cat([seq, pad]) if side == "right" else torch.cat([pad, seq]))
        out[key] = torch.stack(rows)
    return out


def collate_fn(pad_token_id: int, side: str = "right"):
    """A ``DataLoader`` collate function bound to ``pad_token_id``."""

    def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_batch(items, pad_token_id, side)

    return collate


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (the usual choice for causal LMs)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a pad token nor an EOS token")
