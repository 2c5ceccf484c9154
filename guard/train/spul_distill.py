"""SPUL's ``--forget-target distill``: the soft prompt learns to read a forget question and its true
answer the way the frozen model reads them about someone it never saw (issue #16).

Counterfactual *labels* (``spul_counterfactual``) teach one answer, the teacher's greedy one; the
forget-quality test reads something else: how likely the model finds the *true* answer (and its
paraphrases) against wrong ones. So this target matches distributions along the true answer:

1. the teacher's input is the forget question and its gold answer with every name of the target
   replaced by the target's stand-in (``spul_counterfactual.swap_names`` / ``hide_target``: an
   invented name the policy's data never mentions);
2. the frozen model, without a soft prompt, reads that pair once (teacher forcing): its next-token
   log-probabilities along the answer are what a model that never learned the target predicts;
3. the student is the same model with the soft prompt, reading the real question and answer; the
   answer tokens outside the names line up with the teacher's (``difflib`` matching blocks over the
   token ids), and the forget term is the KL divergence, teacher to student, at those positions.

The teacher's side does not depend on the soft prompt, so it is computed once (fp16, on the CPU:
~100 KB per answer token for a 49k vocabulary). A name token has no teacher counterpart and no loss:
the student may still write the name the question gave it, as the twin does.

``--forget-target uld`` keeps the student and changes the teacher: the served model reading the real
question and answer with ULD's logit difference applied (``guard.interventions.uld_decoding.
scoring_transform``, the artifact's ``alpha`` and ``top_k``), i.e. the distribution ``guard-eval tofu``
scores ULD by. ULD only re-ranks each position's plausible set (the target's ``top_k`` tokens) and is
the target elsewhere, so the teacher is that set's distribution and the KL compares the student's over
the same ids, both renormalised (``TEACHER_IDS``): it measured better than the whole-vocabulary KL
(docs/spul.md) and stores ``top_k`` numbers per token instead of the vocabulary. ULD's alpha is chosen
by ``guard-train uld --holdout`` without the retain twin, so the teacher is too; the soft prompt then
carries it into one forward pass, which vLLM serves through ``prompt_embeds`` (ULD itself decodes
step by step there). Every answer token has a teacher.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from guard.train.spul_objective import ALIGNED, TEACHER_IDS, TEACHER_LOGP, Example, answer_logprobs, encode_example


def aligned_positions(student: Sequence[int], teacher: Sequence[int]) -> list[tuple[int, int]]:
    """(student index, teacher index) of the answer tokens that match, in order: the tokens outside
    the names, which both answers share."""
    matcher = difflib.SequenceMatcher(None, list(student), list(teacher), autojunk=False)
    return [(a + k, b + k) for a, b, size in matcher.get_matching_blocks() for k in range(size)]


def attach_teacher(model: Any, tokenizer: Any, examples: Sequence[Example], *, position: str, max_length: int,
                   system_prompt: str | None = None, batch_size: int = 8, keep_ok: bool = True) -> list[Example]:
    """``examples`` (forget examples whose ``meta`` holds ``teacher_question`` / ``teacher_answer``)
    with the teacher's log-probs along their answers in ``meta`` (``TEACHER_LOGP``, ``ALIGNED``)."""
    teachers = [encode_example(tokenizer, ex.meta["teacher_question"], ex.meta["teacher_answer"], position=position,
                               max_length=max_length, system_prompt=system_prompt) for ex in examples]
    rows = answer_logprobs(model, teachers, batch_size=batch_size, keep_ok=keep_ok)
    out: list[Example] = []
    for ex, teacher, logp in zip(examples, teachers, rows):
        pairs = aligned_positions(ex.answer_ids, teacher.answer_ids)
        mask = torch.zeros(len(ex.answer_ids), dtype=torch.bool)
        mask[[s for s, _ in pairs]] = True
        out.append(replace(ex, meta={**ex.meta, TEACHER_LOGP: logp[[t for _, t in pairs]].contiguous(), ALIGNED: mask}))
    return out


def load_uld_teacher(artifact: Path, model_dir: Path, device: str) -> tuple[Any, Any, dict[str, Any]]:
    """The ULD assistant of ``artifact`` for the model in ``model_dir`` (refused, naming
    ``teacher_artifact``, when it was trained for another model), its decoding settings, and what the
    SPUL manifest records of it."""
    from guard.artifacts import model_identity
    from guard.interventions.uld import load_assistant_runtime, settings_from

    runtime, manifest = load_assistant_runtime(Path(artifact), model_identity(model_dir), lambda: Path(model_dir), device,
                                               param="teacher_artifact")
    settings = settings_from(manifest, {}, "teacher_artifact")
    record = {"artifact": str(artifact), "alpha": settings.alpha, "top_k": settings.top_k,
              "min_prob_ratio": settings.min_prob_ratio, "assistant_layers": manifest["assistant"]["layers"]}
    return runtime, settings, record


@torch.no_grad()
def attach_uld_teacher(model: Any, examples: Sequence[Example], runtime: Any, settings: Any) -> list[Example]:
    """``examples`` with ULD's distribution over each answer position's plausible set in ``meta``
    (``TEACHER_IDS`` / ``TEACHER_LOGP`` ``[len(answer), top_k]``, ``ALIGNED`` all true): the frozen model
    reads each prompt and answer without a soft prompt, and ``scoring_transform`` applies the logit
    difference, as ``guard-eval tofu`` scores ULD."""
    from guard.interventions.uld_decoding import scoring_transform

    transform = scoring_transform(runtime, settings)
    embed = model.get_input_embeddings()
    device = embed.weight.device
    out: list[Example] = []
    for ex in examples:
        tokens = torch.tensor([list(ex.prompt_ids) + list(ex.answer_ids)], dtype=torch.long, device=device)
        inputs = embed(tokens)
        logits = model(inputs_embeds=inputs).logits
        scores = transform(inputs, logits)
        start, n = len(ex.prompt_ids) - 1, len(ex.answer_ids)
        # the plausible set ULD re-ranks (``scoring_transform`` picks the same top_k of the target's logits)
        plausible = logits[0, start:start + n].topk(min(settings.top_k, logits.shape[-1]), dim=-1).indices
        logp = torch.log_softmax(scores[0, start:start + n].float().gather(-1, plausible), dim=-1)
        out.append(replace(ex, meta={**ex.meta, TEACHER_IDS: plausible.cpu(), TEACHER_LOGP: logp.cpu(),
                                     ALIGNED: torch.ones(n, dtype=torch.bool)}))
    return out


def attach_teachers(model: Any, tokenizer: Any, cfg: Any, data: Any, model_dir: Path, device: str) -> None:
    """The forget examples of ``data`` (train and held out) with their teacher for ``cfg.forget_target``
    ``distill`` (the frozen model reading the stand-in) or ``uld`` (``cfg.teacher_artifact``'s logit
    difference; recorded in ``data.sources``), in place."""
    if cfg.forget_target == "distill":
        from guard.lm.nll import supports_logits_to_keep

        def teach(examples: list) -> list:
            return attach_teacher(model, tokenizer, examples, position=cfg.position, max_length=cfg.max_length,
                                  system_prompt=cfg.system_prompt, batch_size=cfg.batch_size,
                                  keep_ok=supports_logits_to_keep(model))

        data.forget_train, data.forget_val = teach(data.forget_train), teach(data.forget_val)
    elif cfg.forget_target == "uld":
        runtime, settings, record = load_uld_teacher(Path(str(cfg.teacher_artifact)), model_dir, device)
        data.forget_train = attach_uld_teacher(model, data.forget_train, runtime, settings)
        data.forget_val = attach_uld_teacher(model, data.forget_val, runtime, settings)
        data.sources["uld_teacher"] = record
        del runtime  # the assistant is only the teacher: its log-probs are kept, its weights are not
