"""The SPUL training objective (Bhaila et al., adapted to open generation with a chat model).

With the LLM frozen and a soft prompt ``S`` (``[n, hidden]``) inserted into every prompt exactly as
the guard inserts it at serving time (``guard.interventions.spul.insertion_index`` /
``insert_soft_prompt``):

``L(S) = w_forget · CE(forget questions -> unlearning answers | S)``   (or, ``distill``: KL to a teacher)
``     + w_retain · CE(retain questions -> gold answers | S)``
``     + w_kl     · KL(p_frozen(· | retain prompt) || p(· | retain prompt with S))``

* unlearning answers are TOFU's "I don't know" strings (``idontknow.jsonl``), one per forget
  question (seeded), or one of the question's perturbed (wrong) answers;
* every cross-entropy and KL term is over the **answer tokens** only (labels -100 on the prompt,
  as ``guard.lm.chat_format.encode_qa``), token-averaged within a batch;
* the KL compares, token by token along the gold retain answer (teacher forcing), the frozen
  model's next-token distribution *without* the soft prompt with the distribution *with* it: the
  soft prompt should leave answers about everything else as they were;
* in both retain terms the **first answer token** counts ``first_token`` times (default 1): a
  refusal is decided there ("I ..."), yet averaged over a 40-token answer a flipped first token
  barely moves the loss, so a soft prompt can learn "always refuse" at a small retain cost.

Only ``S`` receives gradients; the model's parameters are frozen (``requires_grad=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from guard.engines.rendering import render_chat
from guard.interventions.spul import insert_soft_prompt, insertion_index
from guard.lm.chat_format import IGNORE_INDEX, encode_qa

COMPONENTS = ("forget_ce", "retain_ce", "retain_kl", "truth_ratio")
# ``--forget-target distill`` (``guard.train.spul_distill``): a forget example's teacher, in its ``meta``
TEACHER_LOGP = "teacher_logp"   # [aligned answer tokens, V] fp16: the teacher's log-probs at those tokens
ALIGNED = "aligned"             # [len(answer_ids)] bool: the answer positions that have a teacher row
# ``--forget-target uld``: the teacher is a distribution over a few token ids per position (ULD's
# plausible set): [aligned answer tokens, k] long ids, with TEACHER_LOGP then [.., k]
TEACHER_IDS = "teacher_ids"
# ``--w-truth-ratio`` (``guard.train.spul_truth_ratio``): a forget example's paraphrased and perturbed
# answers (a tuple of ``Example``, paraphrased first) and the log truth ratio it is trained toward
TR_EXAMPLES = "truth_ratio_examples"
TR_TARGET = "truth_ratio_target"


@dataclass(frozen=True)
class Weights:
    forget: float = 1.0
    retain: float = 1.0
    kl: float = 1.0
    first_token: float = 1.0  # weight of each retain answer's first token in the retain CE and KL
    divergent: float = 1.0  # weight of forget label tokens the frozen model does not predict (see divergent_tokens)
    truth_ratio: float = 0.0  # weight of the truth-ratio term (guard.train.spul_truth_ratio)

    def to_dict(self) -> dict[str, float]:
        return {"forget": self.forget, "retain": self.retain, "kl": self.kl, "first_token": self.first_token,
                "divergent": self.divergent, "truth_ratio": self.truth_ratio}

    def total(self, parts: dict[str, Any]) -> Any:
        """The weighted sum of the components (tensors or floats)."""
        return (self.forget * parts["forget_ce"] + self.retain * parts["retain_ce"] + self.kl * parts["retain_kl"]
                + self.truth_ratio * parts["truth_ratio"])


@dataclass(frozen=True)
class Example:
    """One chat-formatted QA pair, split where the soft prompt goes."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]  # ends with the end-of-turn token (may be cut at max_length)
    insert_at: int  # soft prompt goes before prompt_ids[insert_at]
    question: str = ""
    answer: str = ""  # the training answer (IDK / perturbed for forget, gold for retain)
    gold: str = ""  # the dataset's answer
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


def encode_example(tokenizer: Any, question: str, answer: str, *, position: str, max_length: int,
                   gold: str | None = None, system_prompt: str | None = None, **meta: Any) -> Example:
    """Tokenise a QA pair as the served model sees it and find where the soft prompt goes.

    The prompt is the chat template with the generation prompt — the same ids the engines render
    for a ``[system?, user]`` chat request (checked) — so the insertion point is the serving one.
    """
    enc = encode_qa(tokenizer, question, answer, max_length, system_prompt)
    labels = enc["labels"].tolist()
    ids = enc["input_ids"].tolist()
    n_prompt = next((i for i, v in enumerate(labels) if v != IGNORE_INDEX), len(labels))
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": question}]
    rendered = render_chat(tokenizer, messages)
    if list(rendered.token_ids) != ids[:n_prompt]:
        raise ValueError("the training prompt differs from the prompt the engines render; "
                         "the tokenizer's chat template is not supported by SPUL training")
    return Example(prompt_ids=tuple(ids[:n_prompt]), answer_ids=tuple(ids[n_prompt:]),
                   insert_at=insertion_index(rendered, position), question=question, answer=answer,
                   gold=gold if gold is not None else answer, meta=dict(meta))


def _pad_rows(rows: Sequence[torch.Tensor], width: int, value: float) -> torch.Tensor:
    out = []
    for row in rows:
        pad = width - row.shape[0]
        if pad:
            filler = torch.full((pad, *row.shape[1:]), value, dtype=row.dtype, device=row.device)
            row = torch.cat([row, filler], dim=0)
        out.append(row)
    return torch.stack(out)


def build_inputs(examples: Sequence[Example], embed_layer: torch.nn.Module, soft: torch.Tensor | None,
                 device: torch.device | str) -> dict[str, torch.Tensor]:
    """Right-padded ``inputs_embeds``/``attention_mask``/``labels`` with ``soft`` inserted (or not)."""
    embeds, labels = [], []
    n = 0 if soft is None else int(soft.shape[0])
    for ex in examples:
        ids = torch.tensor(ex.prompt_ids + ex.answer_ids, dtype=torch.long, device=device)
        emb = embed_layer(ids)
        lab = torch.tensor([IGNORE_INDEX] * len(ex.prompt_ids) + list(ex.answer_ids), dtype=torch.long, device=device)
        if soft is not None:
            emb = insert_soft_prompt(emb, ex.insert_at, soft)
            lab = torch.cat([lab[:ex.insert_at], torch.full((n,), IGNORE_INDEX, dtype=torch.long, device=device),
                             lab[ex.insert_at:]])
        embeds.append(emb)
        labels.append(lab)
    width = max(e.shape[0] for e in embeds)
    mask = _pad_rows([torch.ones(e.shape[0], dtype=torch.long, device=device) for e in embeds], width, 0)
    return {"inputs_embeds": _pad_rows(embeds, width, 0.0), "attention_mask": mask,
            "labels": _pad_rows(labels, width, IGNORE_INDEX)}


def first_answer_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[N]`` bool, in ``answer_logits``' order: which answer tokens are their answer's first."""
    has = batch["labels"] != IGNORE_INDEX
    first = has & (has.long().cumsum(dim=1) == 1)
    return first[has]


def _weighted_mean(values: torch.Tensor, first: torch.Tensor, weight: float) -> torch.Tensor:
    if weight == 1.0:
        return values.mean()
    w = torch.where(first, torch.full_like(values, weight), torch.ones_like(values))
    return (values * w).sum() / w.sum()


def answer_logits(model: Any, batch: dict[str, torch.Tensor], keep_ok: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each answer token, flattened ``[N, V]`` in order, and those tokens ``[N]``.

    Only positions from the first answer token on go through the LM head (``logits_to_keep``)."""
    labels = batch["labels"]
    width = labels.shape[1]
    has = labels != IGNORE_INDEX
    first = int(has.float().argmax(dim=1).min()) if bool(has.any()) else width - 1
    start = max(first - 1, 0)
    kwargs: dict[str, Any] = {"inputs_embeds": batch["inputs_embeds"], "attention_mask": batch["attention_mask"],
                              "use_cache": False}
    if keep_ok:
        kwargs["logits_to_keep"] = width - start
    logits = model(**kwargs).logits
    if logits.shape[1] != width - start:
        logits = logits[:, start:]
    logits = logits[:, :-1]
    targets = labels[:, start + 1:]
    mask = targets != IGNORE_INDEX
    return logits[mask].float(), targets[mask]


def answer_logprobs(model: Any, examples: Sequence[Example], *, batch_size: int = 8, keep_ok: bool = True,
                    dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:
    """The frozen model's next-token log-probs along each example's answer, without a soft prompt:
    one ``[len(answer_ids), V]`` tensor per example, in order (stored in ``dtype`` on the CPU)."""
    device = next(model.parameters()).device
    embed_layer = model.get_input_embeddings()
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            logits, _ = answer_logits(model, build_inputs(chunk, embed_layer, None, device), keep_ok)
            logp = F.log_softmax(logits, -1).to(dtype).cpu()
            pos = 0
            for ex in chunk:
                out.append(logp[pos:pos + len(ex.answer_ids)])
                pos += len(ex.answer_ids)
    return out


def reference_logprobs(model: Any, retain: Sequence[Example], *, batch_size: int = 8, keep_ok: bool = True,
                       dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """``answer_logprobs`` of the retain answers by question: the KL's fixed side."""
    rows = answer_logprobs(model, retain, batch_size=batch_size, keep_ok=keep_ok, dtype=dtype)
    return {ex.question: row for ex, row in zip(retain, rows)}


@torch.no_grad()
def divergent_tokens(model: Any, forget: Sequence[Example], *, batch_size: int = 8,
                     keep_ok: bool = True) -> dict[str, torch.Tensor]:
    """``{question: [len(answer_ids)] bool}``: the label tokens the frozen model, without the soft
    prompt, does not predict (teacher-forced argmax != label). A counterfactual label mostly restates
    the question, as the memorised answer does; its few differing tokens (the facts) are where the
    model must change, and a token-averaged CE barely sees them (``Weights.divergent`` up-weights them)."""
    device = next(model.parameters()).device
    embed_layer = model.get_input_embeddings()
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(forget), batch_size):
        chunk = forget[start:start + batch_size]
        logits, targets = answer_logits(model, build_inputs(chunk, embed_layer, None, device), keep_ok)
        differs = (logits.argmax(-1) != targets).cpu()
        pos = 0
        for ex in chunk:
            out[ex.question] = differs[pos:pos + len(ex.answer_ids)]
            pos += len(ex.answer_ids)
    return out


def shared_prompt_nll(model: Any, soft: torch.Tensor | None, examples: Sequence[Example]) -> torch.Tensor:
    """``[len(examples)]``: each answer's token-mean NLL after their one shared prompt with ``soft``
    inserted (differentiable in ``soft``).

    A truth-ratio group is one question with six or so answers; the prompt (with the soft prompt, most
    of the tokens) goes through the model once, and its key/value cache is repeated for the answers, so
    a group costs about a third of six full sequences. Equal to reading each full sequence (tested)."""
    prompt_ids = examples[0].prompt_ids
    if any(ex.prompt_ids != prompt_ids or ex.insert_at != examples[0].insert_at for ex in examples):
        raise ValueError("shared_prompt_nll needs examples with one prompt")
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    prompt = embed(torch.tensor(prompt_ids, dtype=torch.long, device=device))
    if soft is not None:
        prompt = insert_soft_prompt(prompt, examples[0].insert_at, soft)
    head = model(inputs_embeds=prompt[None], use_cache=True, logits_to_keep=1)
    cache = head.past_key_values
    cache.batch_repeat_interleave(len(examples))
    width = max(len(ex.answer_ids) for ex in examples)
    ids = torch.tensor([list(ex.answer_ids) + [0] * (width - len(ex.answer_ids)) for ex in examples], device=device)
    mask = torch.tensor([[1] * (prompt.shape[0] + len(ex.answer_ids)) + [0] * (width - len(ex.answer_ids))
                         for ex in examples], device=device)
    tail = model(inputs_embeds=embed(ids), attention_mask=mask, past_key_values=cache, use_cache=True).logits
    # answer token 0 is predicted by the prompt's last position, token t by answer position t - 1
    logits = torch.cat([head.logits[:, -1:].expand(len(examples), -1, -1), tail[:, :-1]], dim=1).float()
    nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    lengths = torch.tensor([len(ex.answer_ids) for ex in examples], device=device)
    keep = torch.arange(width, device=device)[None] < lengths[:, None]
    return (nll * keep).sum(1) / lengths


def group_log_truth_ratios(model: Any, soft: torch.Tensor | None, groups: Sequence[Sequence[Example]], *,
                           keep_ok: bool = True) -> torch.Tensor:
    """``[len(groups)]``: ``paraphrased NLL - mean perturbed NLL`` of each group (``shared_prompt_nll``;
    ``keep_ok`` False: each answer as a full sequence, for models without ``logits_to_keep``)."""
    out = []
    for group in groups:
        if keep_ok:
            nll = shared_prompt_nll(model, soft, group)
        else:
            logits, targets = answer_logits(model, build_inputs(group, model.get_input_embeddings(), soft,
                                                                next(model.parameters()).device), keep_ok)
            per_token = F.cross_entropy(logits, targets, reduction="none")
            nll = torch.stack([part.mean() for part in torch.split(per_token, [len(ex.answer_ids) for ex in group])])
        out.append(nll[0] - nll[1:].mean())
    return torch.stack(out)


def truth_ratio_loss(model: Any, soft: torch.Tensor, forget: Sequence[Example], *, keep_ok: bool = True) -> tuple[torch.Tensor, int]:
    """``mean (log TR(soft) - target)^2`` over the batch's forget examples that carry a target
    (``TR_EXAMPLES``/``TR_TARGET``), and how many do (none: a zero tensor)."""
    items = [ex for ex in forget if TR_EXAMPLES in ex.meta]
    if not items:
        return soft.sum() * 0.0, 0
    values = group_log_truth_ratios(model, soft, [ex.meta[TR_EXAMPLES] for ex in items], keep_ok=keep_ok)
    targets = torch.tensor([ex.meta[TR_TARGET] for ex in items], dtype=values.dtype, device=values.device)
    return ((values - targets) ** 2).mean(), len(items)


def spul_losses(model: Any, soft: torch.Tensor, forget: Sequence[Example], retain: Sequence[Example],
                weights: Weights, *, keep_ok: bool = True, reference: dict[str, torch.Tensor] | None = None,
                divergent: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The objective's components on one batch and their weighted ``total`` (differentiable in ``soft``).

    A component whose weight is 0 or whose batch is empty is reported as 0 and not computed.
    ``reference`` (from ``reference_logprobs``) saves the frozen model's forward pass for the KL."""
    device = soft.device
    embed_layer = model.get_input_embeddings()
    zero = soft.sum() * 0.0
    out: dict[str, torch.Tensor] = {name: zero for name in COMPONENTS}
    if forget and weights.forget:
        logits, targets = answer_logits(model, build_inputs(forget, embed_layer, soft, device), keep_ok)
        if all(TEACHER_LOGP in ex.meta for ex in forget):
            # ``distill``: KL(teacher || student) at the answer tokens that line up with the teacher's
            # (reported under ``forget_ce``, the forget term's slot)
            mask = torch.cat([ex.meta[ALIGNED] for ex in forget]).to(device)
            teacher = torch.cat([ex.meta[TEACHER_LOGP] for ex in forget]).to(device=device, dtype=logits.dtype)
            student = logits[mask]
            if all(TEACHER_IDS in ex.meta for ex in forget):  # the teacher's support only, renormalised
                student = student.gather(-1, torch.cat([ex.meta[TEACHER_IDS] for ex in forget]).to(device))
            out["forget_ce"] = F.kl_div(F.log_softmax(student, -1), teacher, log_target=True,
                                        reduction="none").sum(-1).mean()
        elif divergent is not None and weights.divergent != 1.0 and all(ex.question in divergent for ex in forget):
            mask = torch.cat([divergent[ex.question] for ex in forget]).to(device)
            out["forget_ce"] = _weighted_mean(F.cross_entropy(logits, targets, reduction="none"), mask, weights.divergent)
        else:
            out["forget_ce"] = F.cross_entropy(logits, targets)
    if retain and (weights.retain or weights.kl):
        batch = build_inputs(retain, embed_layer, soft, device)
        logits, targets = answer_logits(model, batch, keep_ok)
        first = first_answer_tokens(batch)
        if weights.retain:
            ce = F.cross_entropy(logits, targets, reduction="none")
            out["retain_ce"] = _weighted_mean(ce, first, weights.first_token)
        if weights.kl:
            if reference is not None and all(ex.question in reference for ex in retain):
                ref_logp = torch.cat([reference[ex.question] for ex in retain]).to(device=device, dtype=logits.dtype)
            else:
                with torch.no_grad():
                    ref_logits, ref_targets = answer_logits(model, build_inputs(retain, embed_layer, None, device), keep_ok)
                assert torch.equal(ref_targets, targets)
                ref_logp = F.log_softmax(ref_logits, -1)
            kl = F.kl_div(F.log_softmax(logits, -1), ref_logp, log_target=True, reduction="none").sum(-1)
            out["retain_kl"] = _weighted_mean(kl, first, weights.first_token)
    if forget and weights.truth_ratio:
        out["truth_ratio"], _ = truth_ratio_loss(model, soft, forget, keep_ok=keep_ok)
    out["total"] = weights.total(out)
    return out


@torch.no_grad()
def evaluate(model: Any, soft: torch.Tensor, forget: Sequence[Example], retain: Sequence[Example], weights: Weights,
             *, batch_size: int = 8, keep_ok: bool = True, divergent: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Each component averaged over examples (batched, no gradients) and the weighted total."""
    sums = {name: 0.0 for name in COMPONENTS}
    counts = {name: 0 for name in COMPONENTS}
    for start in range(0, max(len(forget), len(retain)), batch_size):
        f, r = forget[start:start + batch_size], retain[start:start + batch_size]
        parts = spul_losses(model, soft, f, r, weights, keep_ok=keep_ok, divergent=divergent)
        n_tr = sum(TR_EXAMPLES in ex.meta for ex in f)
        for name, n in (("forget_ce", len(f)), ("retain_ce", len(r)), ("retain_kl", len(r)), ("truth_ratio", n_tr)):
            if n:
                sums[name] += float(parts[name]) * n
                counts[name] += n
    out = {name: sums[name] / counts[name] if counts[name] else 0.0 for name in COMPONENTS}
    out["total"] = weights.total(out)
    return out
