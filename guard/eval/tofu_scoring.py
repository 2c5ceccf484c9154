"""Scoring TOFU items on one local engine (see ``guard.eval.tofu`` for what each number sees):
greedy generation and ROUGE, and the teacher-forced losses of the gold, paraphrased and perturbed
answers, plain or through the intervention a question gets (``scoring_inputs``; an intervention that
also changes how the model reads its own answer, ECO's ``answer_names``, says so through
``scoring_answer_embeds``). The NLL, generation and ROUGE come from the LM toolkit (``guard.lm``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from classifiers.base import Verdict
from guard.engines.base import SamplingParams
from guard.errors import ConfigError
from guard.eval.tofu_plan import TofuItem
from guard.interventions.base import GuardRequest, Intervention, PassThrough
from guard.lm.chat_format import encode_qa, has_chat_template, prompt_text
from guard.lm.generate import greedy_from_ids
from guard.lm.nll import ScoringInputs, label_positions, mean_answer_nll
from guard.lm.rouge import rouge_recall
from guard.policy import Target


def scoring_inputs(intervention: Intervention, request: GuardRequest, verdict: Verdict, target: Target | None,
                   engine: Any) -> ScoringInputs:
    """Everything a teacher-forced score sees under ``intervention``: its prompt embeddings and logits
    transform (``scoring_inputs``) and, when it reads answers differently, how (``scoring_answer_embeds``)."""
    embeds, transform = intervention.scoring_inputs(request, verdict, target, engine)
    return ScoringInputs(embeds, transform, intervention.scoring_answer_embeds(request, verdict, target, engine))


def generation_only(intervention: Intervention) -> bool:
    """True for interventions without a teacher-forced score (refusal, or a method that does not
    implement ``scoring_inputs``): they are scored by what they generate only."""
    if isinstance(intervention, PassThrough):
        return False
    return type(intervention).scoring_inputs is Intervention.scoring_inputs


@dataclass
class ItemResult:
    split: str
    index: int
    question: str
    answer: str
    generation: str
    rouge1_recall: float
    rougeL_recall: float
    flagged: bool = False
    target: str | None = None
    action: str = "pass"
    score: float | None = None
    gt_loss: float | None = None
    paraphrased_loss: float | None = None
    perturbed_losses: list[float] | None = None
    routed: bool = False   # worst-case regime: sent to the method though the detector passed it (``flagged`` false)

    @property
    def scored(self) -> bool:
        return self.gt_loss is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scorer:
    """Scores TOFU items on one local engine: plain (batched) or through an intervention."""

    def __init__(self, engine: Any, *, max_new_tokens: int = 200, seed: int = 0, batch_size: int = 8,
                 progress: bool = True) -> None:
        if not hasattr(engine, "model"):
            raise ConfigError("guard-eval tofu scores in-process and needs the local engine", param="engine")
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.chat = has_chat_template(engine.tokenizer)
        self._plain: dict[str, ItemResult] = {}

    # -- requests and answer tokens ---------------------------------------------------------------
    def request(self, question: str) -> GuardRequest:
        params = SamplingParams(max_tokens=self.max_new_tokens, temperature=0.0, seed=self.seed)
        if self.chat:
            return GuardRequest.chat([{"role": "user", "content": question}], params)
        return GuardRequest.completion(prompt_text(self.engine.tokenizer, question), params)

    def answer_ids(self, question: str, answer: str) -> list[int]:
        """The answer's tokens as fine-tuning saw them (after the generation prompt, with end-of-turn)."""
        enc = encode_qa(self.engine.tokenizer, question, answer, max_length=100_000)
        return label_positions(enc["labels"].tolist())

    def _answers(self, item: TofuItem) -> list[list[int]]:
        return [self.answer_ids(item.question, a) for a in (item.answer, item.paraphrased, *item.perturbed)]

    def losses(self, item: TofuItem, inputs: ScoringInputs) -> tuple[float, float, list[float]]:
        """Mean NLL of the gold, paraphrased and each perturbed answer, read as ``inputs`` says."""
        answers = self._answers(item)
        values = mean_answer_nll(self.engine.model, [inputs.prompt_embeds] * len(answers), answers,
                                 batch_size=len(answers), logits_transform=inputs.logits_transform,
                                 answer_embeds=inputs.answer_embeds)
        return values[0], values[1], values[2:]

    # -- plain model ------------------------------------------------------------------------------
    def plain_generate(self, questions: Sequence[str]) -> list[str]:
        """Greedy answers of the plain model, batched with left padding."""
        prompts = [self.request(q).prompt_ids(self.engine) for q in questions]
        return greedy_from_ids(self.engine.model, self.engine.tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                               batch_size=self.batch_size, stop=sorted(self.engine.stop_token_ids()))

    def plain(self, items: Sequence[TofuItem], desc: str = "plain") -> list[ItemResult]:
        """Plain-model results, cached per item (the unguarded run and every guard's unflagged items
        share them: same model, same prompt, greedy)."""
        from tqdm.auto import tqdm

        todo = [it for it in items if it.key not in self._plain]
        if todo:
            gens: list[str] = []
            bar = tqdm(total=len(todo) * 2, desc=f"{desc} ({len(todo)} items)", leave=False, disable=not self.progress)
            for start in range(0, len(todo), self.batch_size):
                gens += self.plain_generate([it.question for it in todo[start: start + self.batch_size]])
                bar.update(min(self.batch_size, len(todo) - start))
            for it, gen in zip(todo, gens):
                inputs = scoring_inputs(PassThrough(), self.request(it.question), Verdict.clean(), None, self.engine)
                gt, para, pert = self.losses(it, inputs)
                r1, rl = rouge_recall(gen, it.answer)
                self._plain[it.key] = ItemResult(it.split, it.index, it.question, it.answer, gen, r1, rl,
                                                 gt_loss=gt, paraphrased_loss=para, perturbed_losses=pert)
                bar.update(1)
            bar.close()
        return [self._plain[it.key] for it in items]

    def seed_plain(self, results: Iterable[ItemResult]) -> None:
        for r in results:
            if r.action == "pass" and r.scored:
                self._plain.setdefault(f"{r.split}:{r.index}", r)

    # -- through an intervention ------------------------------------------------------------------
    async def intervened(self, item: TofuItem, decision: Any) -> ItemResult:
        request = self.request(item.question)
        intervention: Intervention = decision.intervention
        parts = [c.text async for c in intervention.stream(request, decision.verdict, decision.target, self.engine)]
        gen = "".join(parts)
        r1, rl = rouge_recall(gen, item.answer)
        result = ItemResult(item.split, item.index, item.question, item.answer, gen, r1, rl, flagged=decision.verdict.flagged,
                            target=decision.verdict.target_id, action=decision.action, score=decision.verdict.score)
        if not generation_only(intervention):
            inputs = scoring_inputs(intervention, request, decision.verdict, decision.target, self.engine)
            result.gt_loss, result.paraphrased_loss, result.perturbed_losses = self.losses(item, inputs)
        return result
