"""``guard-train spul --choose-epoch never-seen``: the soft prompt of the epoch that answers the forget
questions most like a model that never saw the target, chosen without the retain twin (issue #16).

Why: with the truth-ratio term (``guard.train.spul_truth_ratio``) the held-out training loss keeps falling
while the answers move from the memorised ones toward none at all: forget ROUGE falls with every epoch
(0.385 to 0.201 across the runs in docs/spul.md), so *how long* to train sets how much is forgotten.
Choosing that by the evaluation's forget quality or the twin's ROUGE fits the number being reported;
this rule reads only what a deployer has:

* **ROUGE level**: the frozen served model's greedy answers to the never-seen ``--holdout`` questions (the
  truth-ratio term's level questions), ROUGE-L recall against their answers: how much of an answer a
  model recovers about a person it never learned.
* **Per epoch** (from ``choose_from_epoch`` on): the soft prompt's greedy answers to the term's half of the
  forget questions (the other half stays out of the choice as it stays out of the term), their ROUGE-L
  recall against the policy's answers, and those items' log truth ratios against the level (KS statistic).
* **Rule** (``RULE``): among epochs whose forget ROUGE is within ``rouge_band`` of the ROUGE level, the
  smallest KS statistic, ties to the earlier epoch (less training, less drift on other questions); when no
  epoch is inside the band, the one with the ROUGE closest to the level.

Answers are generated as ``guard.train.spul_report`` generates them (the trainer's prompt with the
soft prompt inserted where serving inserts it, greedy, batched). The choice, the level and every
epoch's row go into the artifact's manifest (``epoch_choice``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from guard.errors import ConfigError
from guard.lm.rouge import mean_rouge_l_recall

log = logging.getLogger(__name__)

RULES = ("val-loss", "never-seen")
RULE = ("forget ROUGE-L within the band of the frozen model's ROUGE-L on never-seen QA, then the smallest KS "
        "statistic of the term's forget items against the truth-ratio level, ties to the earlier epoch; no epoch in "
        "the band: the ROUGE closest to the level")
MAX_GENERATION_BATCH = 32  # a CPU decode step costs about the same for 8 or 20 rows: 20 prompts in 13.5 s vs 23 s


def generation_batch(n: int) -> int:
    """Rows per greedy batch for ``n`` prompts: as few batches as ``MAX_GENERATION_BATCH`` allows, evenly filled."""
    return max(1, math.ceil(n / math.ceil(max(n, 1) / MAX_GENERATION_BATCH)))


def check_choice(rule: str, from_epoch: int, band: float, max_new_tokens: int, truth_ratio: float) -> None:
    """The settings of ``--choose-epoch`` (``SpulConfig.validate`` calls it)."""
    if rule not in RULES:
        raise ConfigError(f"--choose-epoch must be one of {', '.join(RULES)}", param="choose_epoch")
    if rule == "never-seen" and not truth_ratio:
        raise ConfigError("--choose-epoch never-seen scores the truth-ratio term's items against its level: it needs "
                          "--w-truth-ratio W > 0 and --holdout FILE", param="choose_epoch")
    if from_epoch < 1 or not 0 < band <= 1 or max_new_tokens < 1:
        raise ConfigError("--choose-from-epoch and --choose-max-new-tokens must be >= 1, --rouge-band in (0, 1]",
                          param="choose_epoch")


def choose(rows: Sequence[dict[str, Any]], level: float, band: float, ties: Sequence[str] = ("epoch",)) -> dict[str, Any]:
    """The row ``RULE`` picks (rows carry ``rouge``, ``ks_d`` and the ``ties`` keys, smaller first:
    ``guard.train.spul_weight_search`` breaks ties by weight, then epoch)."""
    if not rows:
        raise ValueError("no epoch was scored")
    inside = [r for r in rows if abs(r["rouge"] - level) <= band + 1e-12]
    if inside:
        return min(inside, key=lambda r: (round(float(r["ks_d"]), 9), *(r[k] for k in ties)))
    return min(rows, key=lambda r: (round(abs(r["rouge"] - level), 9), round(float(r["ks_d"]), 9), *(r[k] for k in ties)))


@dataclass
class EpochScorer:
    """What scoring an epoch needs, built once per run (``build``): the term's items as prompts with their
    answers and truth-ratio groups, the two levels and the settings."""

    model: Any
    tokenizer: Any
    prompts: list[Any]  # one encoded Example per scored forget item (its prompt is what is answered)
    golds: list[str]
    groups: list[tuple[Any, ...]]
    truth_ratio_level: np.ndarray
    rouge_level: float
    from_epoch: int
    band: float
    max_new_tokens: int
    batch_size: int

    @classmethod
    def build(cls, model: Any, tokenizer: Any, cfg: Any, plan: Any, *, progress: bool = False) -> "EpochScorer":
        from guard.train.spul_objective import encode_example
        from guard.train.spul_report import generate_answers

        def encode(question: str, answer: str) -> Any:
            return encode_example(tokenizer, question, answer, position=cfg.position, max_length=cfg.max_length,
                                  system_prompt=cfg.system_prompt)

        holdout = [encode(h.question, h.answer) for h in plan.holdout]
        answers = generate_answers(model, tokenizer, holdout, None, max_new_tokens=cfg.choose_max_new_tokens,
                                   batch_size=generation_batch(len(holdout)), progress=progress)
        level = mean_rouge_l_recall(answers, [h.answer for h in plan.holdout])
        log.info("spul --choose-epoch never-seen: the frozen model's ROUGE-L on %d never-seen questions is %.3f",
                 len(holdout), level)
        return cls(model, tokenizer, [groups[0] for _, groups, _ in plan.tuned], [it.answer for it, _, _ in plan.tuned],
                   [groups for _, groups, _ in plan.tuned], plan.level, level, cfg.choose_from_epoch, cfg.rouge_band,
                   cfg.choose_max_new_tokens, generation_batch(len(plan.tuned)))

    @torch.no_grad()
    def score(self, epoch: int, soft: torch.Tensor) -> dict[str, Any] | None:
        """The epoch's row (``None`` before ``from_epoch``): forget ROUGE-L and the truth ratios' KS statistic."""
        from guard.lm.nll import supports_logits_to_keep
        from guard.train.spul_report import generate_answers
        from guard.train.spul_truth_ratio import describe_log_truth_ratios, log_truth_ratios

        if epoch < self.from_epoch:
            return None
        answers = generate_answers(self.model, self.tokenizer, self.prompts, soft, max_new_tokens=self.max_new_tokens,
                                   batch_size=self.batch_size)
        log_tr = log_truth_ratios(self.model, soft, self.groups, keep_ok=supports_logits_to_keep(self.model))
        found = describe_log_truth_ratios(log_tr, self.truth_ratio_level)
        return {"epoch": epoch, "rouge": round(mean_rouge_l_recall(answers, self.golds), 6), "ks_d": found["ks_d"],
                "ks_p": found["ks_p"], "mean_log_truth_ratio": found["mean_log_truth_ratio"]}

    def record(self, rows: Sequence[dict[str, Any]], chosen: dict[str, Any]) -> dict[str, Any]:
        """The manifest's ``epoch_choice``."""
        return {"rule": RULE, "rouge_level": round(self.rouge_level, 6), "rouge_band": self.band,
                "from_epoch": self.from_epoch, "max_new_tokens": self.max_new_tokens, "n_items": len(self.prompts),
                "never_read": "the retain twin, the evaluation's scores and the forget items outside the term's half",
                "trace": list(rows), "chosen": chosen}
