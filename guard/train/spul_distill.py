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
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any, Sequence

import torch

from guard.train.spul_objective import ALIGNED, TEACHER_LOGP, Example, answer_logprobs, encode_example


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
