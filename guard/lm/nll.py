"""Teacher-forced answer NLL: how likely a model finds a given answer after a given prompt.

One implementation for every caller:

* ``answer_nll_sums``: per-row summed NLL of the label tokens of a labelled, right-padded batch
  (``guard.lm.chat_format.pad_batch``): the fine-tuning loss and the memorisation report;
* ``qa_mean_nll``: mean per-token NLL of each (question, answer) pair in the chat template;
* ``answer_token_nll``: per-token NLL of one answer after a prompt given as embeddings, with an
  optional logits transform (ULD): what an intervention's ``scoring_inputs`` are scored with;
* ``mean_answer_nll``: the batched form (one right-padded forward per batch) of the mean of
  ``answer_token_nll`` over several (prompt embeddings, answer) pairs; with a transform it scores
  one answer at a time, since a transform sees one sequence.

Both teacher-forced forms take what an intervention says the model reads (``ScoringInputs``): the
prompt embeddings, an optional logits transform, and optionally how the *answer* tokens are read
(``answer_embeds``; by default their embedding lookup). ECO's ``answer_names`` needs the last one:
the model reads the target's names in its own answer corrupted, so a candidate answer is scored
with its name positions corrupted the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from guard.lm.chat_format import IGNORE_INDEX, encode_qa, pad_batch, pad_token_id

LogitsTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(input_embeds [1, T, H], logits [1, T, V]) -> logits [1, T, V]"""

AnswerEmbeds = Callable[[Sequence[int]], torch.Tensor]
"""answer token ids -> the input embeddings ``[len, H]`` the model reads for them (teacher forcing)"""


@dataclass(frozen=True)
class ScoringInputs:
    """What a teacher-forced score of an answer sees under an intervention: the prompt embeddings
    ``[P, H]``, an optional logits transform (ULD) and an optional answer-embeddings function (ECO
    ``answer_names``: the target's names in the answer corrupted); ``None`` = the plain lookup."""

    prompt_embeds: torch.Tensor
    logits_transform: LogitsTransform | None = None
    answer_embeds: AnswerEmbeds | None = None


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Length of the token prefix every row of a right-padded batch starts with (e.g. the system
    prompt and the user tag of a chat template), leaving at least one real token per row."""
    same = (input_ids == input_ids[:1]).all(dim=0).long()
    n = int(same.cumprod(0).sum())
    return max(0, min(n, int(attention_mask.sum(dim=1).min()) - 1))


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (runs the LM head on the last positions only)."""
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def answer_nll_sums(
    model: Any,
    batch: dict[str, torch.Tensor],
    *,
    shared_prefix: bool = True,
    min_prefix: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed NLL of the label tokens of a right-padded ``batch``, and per-row token counts.

    Two exact shortcuts (same numbers as a plain forward with ``labels``, less compute):

    * only positions from the first answer token on go through the LM head (``logits_to_keep``);
    * with ``shared_prefix``, a token prefix common to all rows (the chat template's system prompt
      and user tag) is run once and its key/value cache repeated over the batch; gradients flow
      through the cache. Off for batches of one, short prefixes, models without a KV cache, and
      under gradient checkpointing (which disables the cache).
    """
    input_ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    rows, width = labels.shape
    has = labels != IGNORE_INDEX
    first = int(has.float().argmax(dim=1).min()) if bool(has.any()) else width - 1
    start = max(first - 1, 0)  # logits at position p predict token p + 1
    keep_ok = supports_logits_to_keep(model)
    extra: dict[str, Any] = {"logits_to_keep": width - start} if keep_ok else {}

    prefix = 0
    if shared_prefix and rows > 1 and not getattr(model, "is_gradient_checkpointing", False):
        prefix = min(shared_prefix_length(input_ids, mask), start)
        if prefix < min_prefix:
            prefix = 0
    if prefix:
        pre = model(input_ids=input_ids[:1, :prefix], attention_mask=mask[:1, :prefix], use_cache=True,
                    **({"logits_to_keep": 1} if keep_ok else {}))
        cache = pre.past_key_values
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            prefix = 0
        else:
            cache.batch_repeat_interleave(rows)
            logits = model(input_ids=input_ids[:, prefix:], attention_mask=mask, past_key_values=cache,
                           use_cache=True, **extra).logits
    if not prefix:
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False, **extra).logits
    kept = width - start
    if logits.shape[1] > kept:
        logits = logits[:, -kept:]
    logits = logits[:, :-1].float()
    targets = labels[:, start + 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(targets.shape)
    valid = targets != IGNORE_INDEX
    return (nll * valid).sum(dim=1), valid.sum(dim=1)


def _read_answer(emb_layer: Any, ids: torch.Tensor, answer_embeds: AnswerEmbeds | None) -> torch.Tensor:
    """The embeddings the model reads for answer ``ids`` ``[len]``: the lookup, or ``answer_embeds``."""
    if answer_embeds is None:
        return emb_layer(ids)
    out = answer_embeds(ids.tolist())
    if tuple(out.shape) != (ids.shape[0], emb_layer.weight.shape[1]):
        raise ValueError(f"answer_embeds gave shape {tuple(out.shape)} for {ids.shape[0]} answer tokens")
    return out.to(device=emb_layer.weight.device, dtype=emb_layer.weight.dtype)


@torch.no_grad()
def answer_token_nll(model: Any, prompt_embeds: torch.Tensor, answer_ids: Sequence[int],
                     logits_transform: LogitsTransform | None = None,
                     answer_embeds: AnswerEmbeds | None = None) -> list[float]:
    """NLL of each answer token given ``prompt_embeds`` ``[P, H]`` (teacher forcing, one forward);
    the answer is read as ``answer_embeds(answer_ids)`` when given, else through the embedding lookup."""
    emb_layer = model.get_input_embeddings()
    answer = torch.tensor([list(answer_ids)], dtype=torch.long, device=emb_layer.weight.device)
    read = _read_answer(emb_layer, answer[0], answer_embeds)
    prompt = prompt_embeds.to(device=read.device, dtype=read.dtype)
    inputs = torch.cat([prompt, read], dim=0).unsqueeze(0)
    logits = model(inputs_embeds=inputs).logits
    if logits_transform is not None:
        logits = logits_transform(inputs, logits)
    p = prompt_embeds.shape[0]
    pred = logits[0, p - 1: p - 1 + answer.shape[1]].float()
    nll = torch.nn.functional.cross_entropy(pred, answer[0], reduction="none")
    return nll.cpu().tolist()


@torch.no_grad()
def mean_answer_nll(model: Any, prompts: Sequence[torch.Tensor], answers: Sequence[Sequence[int]], *,
                    batch_size: int = 8, logits_transform: LogitsTransform | None = None,
                    answer_embeds: AnswerEmbeds | None = None) -> list[float]:
    """Mean per-token NLL of ``answers[i]`` after the prompt embeddings ``prompts[i]`` ``[P_i, H]``,
    each answer read as ``answer_embeds(answers[i])`` when given (else the embedding lookup).

    Without a transform: batches of ``batch_size`` sequences (prompt then answer, right padding), one
    forward each. With one: :func:`answer_token_nll` per answer (the transform sees one sequence)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers")
    if logits_transform is not None:
        return [_mean(answer_token_nll(model, p, a, logits_transform, answer_embeds)) for p, a in zip(prompts, answers)]
    emb = model.get_input_embeddings()
    device, dtype = emb.weight.device, emb.weight.dtype
    out: list[float] = []
    for start in range(0, len(prompts), max(1, batch_size)):
        chunk = range(start, min(start + max(1, batch_size), len(prompts)))
        ids = [torch.tensor(list(answers[i]), dtype=torch.long, device=device) for i in chunk]
        seqs = [torch.cat([prompts[i].to(device=device, dtype=dtype), _read_answer(emb, a, answer_embeds)], 0)
                for i, a in zip(chunk, ids)]
        width = max(s.shape[0] for s in seqs)
        batch = torch.zeros((len(seqs), width, seqs[0].shape[1]), dtype=dtype, device=device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
        for b, s in enumerate(seqs):
            batch[b, : s.shape[0]] = s
            mask[b, : s.shape[0]] = 1
        logits = model(inputs_embeds=batch, attention_mask=mask).logits
        for b, i in enumerate(chunk):
            p, a = prompts[i].shape[0], ids[b]
            pred = logits[b, p - 1: p - 1 + a.shape[0]].float()
            out.append(float(torch.nn.functional.cross_entropy(pred, a, reduction="mean")))
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def qa_mean_nll(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, max_length: int = 512,
                batch_size: int = 8, system_prompt: str | None = None,
                on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Mean per-token NLL of each answer given its question (chat template, answer tokens only)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    encoded = [encode_qa(tokenizer, q, a, max_length, system_prompt) for q, a in pairs]
    out: list[float] = []
    try:
        for chunk in _chunks(len(encoded), batch_size):
            batch = pad_batch([encoded[i] for i in chunk], pad, side="right")
            batch = {k: v.to(device) for k, v in batch.items()}
            sums, counts = answer_nll_sums(model, batch)
            out.extend(float(x) for x in (sums / counts.clamp(min=1)).cpu())
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    return out


def label_positions(labels: Iterable[int]) -> list[int]:
    """The answer token ids of an encoded example's ``labels`` (every id that is not ``IGNORE_INDEX``)."""
    return [int(x) for x in labels if int(x) != IGNORE_INDEX]
