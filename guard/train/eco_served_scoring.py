"""ECO's teacher-forced scores as ``guard-eval tofu`` computes them, for ``guard-train eco --holdout``
(``guard.train.eco_holdout``): the served intervention's corrupted prompt (and, with ``answer_names``,
its reading of the answer), the prompt run once for a question's candidate answers, and the size of a
corruption on one scale across corruptions (``relative_change``)."""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Sequence

import numpy as np
import torch

from guard.train.forget_surrogate import TruthRatioItem

log = logging.getLogger(__name__)
# ------------------------------------------------------------------------------------------------
# scoring: the served path


def target_params(target: Any, select: str | None = None) -> dict[str, Any]:
    """A target's ECO params as the policy writes them, less ``artifact`` (the search writes it);
    ``select`` (``--select``) replaces the policy's."""
    params = {k: v for k, v in target.params.items() if k != "artifact"}
    if select is not None:
        params["select"] = select
        if select != "facts_only":
            params.pop("facts", None)
    return params


class ServedScoring:
    """Teacher-forced scores of QA through ECO as ``guard-eval tofu`` computes them on the local engine:
    ``guard.eval.tofu_scoring.scoring_inputs`` (the intervention's corrupted prompt and, with
    ``answer_names``, its reading of the answer) and ``Scorer.losses``."""

    def __init__(self, engine: Any, policy: Any, target_ids: Sequence[str], seed: int, select: str | None = None) -> None:
        from guard.eval.tofu_scoring import Scorer

        self.engine = engine
        self.scorer = Scorer(engine, seed=seed, progress=False)
        self.targets = {t.id: (i, t) for i, t in enumerate(policy.targets) if t.id in set(target_ids)}
        self.select = select
        self._clean: dict[str, torch.Tensor] = {}

    def base_params(self, target_id: str) -> dict[str, Any]:
        return target_params(self.targets[target_id][1], self.select)

    def intervention(self, point: dict[str, Any]) -> Any:
        """ECO with ``point``'s corruption on every target (the policy's select/facts/answer_names kept)."""
        from guard.interventions.eco import EcoIntervention, parse_params

        configs = {}
        for tid, (i, _) in self.targets.items():
            params = {**self.base_params(tid), "corruption": point["corruption"], "sigma": point["sigma"], "k": point["k"]}
            configs[tid] = parse_params(params, where=f"targets.{i}.params", hidden=self.engine.hidden_size)
        return EcoIntervention(configs, None)

    def inputs(self, intervention: Any, question: str, target_id: str | None) -> Any:
        from classifiers.base import Verdict
        from guard.eval.tofu_scoring import scoring_inputs
        from guard.interventions.base import PassThrough

        request = self.scorer.request(question)
        if intervention is None:
            return scoring_inputs(PassThrough(), request, Verdict.clean(), None, self.engine)
        _, target = self.targets[str(target_id)]
        return scoring_inputs(intervention, request, Verdict(flagged=True, target_id=target.id), target, self.engine)

    def losses(self, intervention: Any, item: TruthRatioItem, target_id: str | None,
               served: bool = False) -> tuple[list[float], Any, float | None]:
        """(gold, paraphrased, *perturbed mean NLLs; the scoring inputs; the gold answer's top-1 agreement) of
        ``item``; ``intervention`` None: clean.

        The inputs are the served ones (``scoring_inputs``). ``served``: scored by ``Scorer.losses`` itself
        (one padded batch of prompt + answer per candidate; no top-1); otherwise by ``shared_prompt_losses``,
        the same numbers with the prompt run once (checked against the former per run and in the tests)."""
        inputs = self.inputs(intervention, item.question, target_id)
        if served or inputs.logits_transform is not None:
            gt, para, pert = self.scorer.losses(item, inputs)
            return [gt, para, *pert], inputs, None
        ids = [self.scorer.answer_ids(item.question, a) for a in item.answers]
        values, top1 = shared_prompt_losses(self.engine.model, inputs.prompt_embeds, ids, inputs.answer_embeds, with_top1=True)
        return values, inputs, top1[0]

    def check_shortcut(self, intervention: Any, item: TruthRatioItem, target_id: str,
                       search_losses: Sequence[float]) -> dict[str, Any]:
        """The search's shortcut (``losses``: the prompt run once) against ``Scorer.losses`` itself on one
        item (``served=True``): the manifest's ``check``; a difference over 1e-3 is logged as a warning."""
        served = self.losses(intervention, item, target_id, served=True)[0]
        diff = float(np.max(np.abs(np.asarray(served) - np.asarray(search_losses))))
        if diff > 1e-3:
            log.warning("holdout search: the search's scores differ from guard-eval's by %.2g", diff)
        return {"source": item.source, "row": item.row, "served_losses": served, "search_losses": list(search_losses),
                "max_abs_diff": diff}

    def clean_prompt(self, question: str) -> torch.Tensor:
        if question not in self._clean:
            self._clean[question] = self.inputs(None, question, None).prompt_embeds
        return self._clean[question]

    @torch.no_grad()
    def gold_scan(self, inputs: Any, question: str, answer: str,
                  clean: tuple[float, np.ndarray] | None = None) -> tuple[float, np.ndarray, bool]:
        """(mean gold NLL, the top token at each gold-answer position, whether ``inputs`` differ from the
        clean ones) -- one forward built as ``guard.lm.nll.answer_token_nll`` builds it. With ``clean`` (the
        clean result) and inputs equal to the clean ones, no forward: the clean result is exact."""
        model = self.engine.model
        emb = model.get_input_embeddings()
        ids = self.scorer.answer_ids(question, answer)
        answer_t = torch.tensor(ids, dtype=torch.long)
        plain = emb(answer_t)
        read = plain if inputs.answer_embeds is None else inputs.answer_embeds(ids).to(plain.dtype)
        prompt = inputs.prompt_embeds.to(plain.dtype)
        base = self.clean_prompt(question)
        changed = not (prompt.shape == base.shape and torch.equal(prompt, base) and torch.equal(read, plain))
        if clean is not None and not changed:
            return clean[0], clean[1], False
        logits = model(inputs_embeds=torch.cat([prompt, read], 0)[None]).logits[0]
        p = prompt.shape[0]
        pred = logits[p - 1: p - 1 + len(ids)].float()
        nll = torch.nn.functional.cross_entropy(pred, answer_t, reduction="mean")
        return float(nll), pred.argmax(-1).numpy(), changed


@torch.no_grad()
def shared_prompt_losses(model: Any, prompt_embeds: torch.Tensor, answers: Sequence[Sequence[int]],
                         answer_embeds: Any = None, with_top1: bool = False) -> Any:
    """Mean NLL of each answer after the same prompt embeddings, as ``guard.lm.nll.mean_answer_nll`` scores
    them (the answer read as ``answer_embeds(ids)`` when given), with the prompt run once and its key/value
    cache repeated over the answers (the shortcut ``answer_nll_sums`` takes for a shared prefix).
    ``with_top1``: also each answer's share of positions whose top token is the answer's own (teacher
    forced: how much of it greedy decoding would reproduce)."""
    emb = model.get_input_embeddings()
    dtype = emb.weight.dtype
    prompt = prompt_embeds.to(dtype)
    reads = []
    for ids in answers:
        t = torch.tensor(list(ids), dtype=torch.long)
        reads.append(emb(t) if answer_embeds is None else answer_embeds(list(ids)).to(dtype))
    from guard.lm.nll import supports_logits_to_keep

    pre = model(inputs_embeds=prompt[None], use_cache=True, **({"logits_to_keep": 1} if supports_logits_to_keep(model) else {}))
    first = pre.logits[0, -1].float()  # predicts every answer's first token
    new_name = "cache" in inspect.signature(model.forward).parameters  # transformers 5 renamed past_key_values
    cache = pre.cache if new_name else pre.past_key_values
    rows, width, p = len(answers), max(len(a) for a in answers), prompt.shape[0]
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        raise RuntimeError("the model gave no key/value cache to share the prompt with")
    cache.batch_repeat_interleave(rows)
    x = torch.zeros((rows, width, prompt.shape[1]), dtype=dtype)
    mask = torch.zeros((rows, p + width), dtype=torch.long)
    mask[:, :p] = 1
    for b, r in enumerate(reads):
        x[b, : r.shape[0]] = r
        mask[b, p: p + r.shape[0]] = 1
    logits = model(inputs_embeds=x, attention_mask=mask, use_cache=True,
                   **{("cache" if new_name else "past_key_values"): cache}).logits.float()
    out, top1 = [], []
    for b, ids in enumerate(answers):
        n = len(ids)
        pred = torch.cat([first[None], logits[b, : n - 1]], 0)
        target = torch.tensor(list(ids))
        out.append(float(torch.nn.functional.cross_entropy(pred, target, reduction="mean")))
        top1.append(float((pred.argmax(-1) == target).float().mean()))
    if with_top1:
        return out, top1
    return out


def relative_change(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``||corrupted - clean|| / ||clean||`` over the rows the corruption changed (0 when none changed)."""
    num = den = 0.0
    for corrupted, clean in pairs:
        if corrupted.shape != clean.shape:
            raise RuntimeError("a corrupted prompt changed length")
        diff = (corrupted.float() - clean.float())
        rows = diff.abs().sum(-1) > 0
        if bool(rows.any()):
            num += float(diff[rows].pow(2).sum())
            den += float(clean.float()[rows].pow(2).sum())
    return math.sqrt(num / den) if den > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# the search
