"""Choosing ULD's ``alpha`` after the assistant is trained (``guard-train uld --holdout``).

Why not a fixed alpha: subtracting more of the assistant is not "more forgetting". Past some alpha the
perturbed answers become far likelier than the true one (truth ratio past 1) and the gold NLL
overshoots what a model that never saw the target gives: on tofu-mini the paper's 0.8 over-forgets.

What is chosen against (``guard.train.forget_surrogate``): the target's own truth ratios on QA about
people it never saw (``--holdout``). Feasibility: a flagged retain question keeps its answer: on the
assistant's held-out retain items, the share of answer positions whose top token ULD keeps (greedy
answers unchanged) stays >= ``min_retain_agreement`` (optional bounds on their truth-ratio shift and
NLL rise too). Rule: the smallest KS statistic vs the holdout level among feasible alphas, ties to
the smallest alpha. The retain twin and the evaluation rows are never read.

Cost: TOFU's teacher-forced NLL through ULD (``guard.interventions.uld_decoding.scoring_transform``:
``f`` on the plausible set, the target's log-probs elsewhere, then cross-entropy) is a closed form
in alpha once one forward of the target and one of the assistant per answer have been cached
(``PositionCache``): every alpha of the grid is then free. ``uld_token_nll`` is that closed form; a
test checks it against ``scoring_transform`` + ``answer_nll``, and each run records the same check on
one answer at the chosen alpha (``check`` in the trace).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from classifiers.sources import read_qa
from guard.errors import ConfigError
from guard.policy import DataSource
from guard.train.forget_surrogate import Level, TruthRatioItem, item_truth_ratios, lexicographic_choice, surrogate, truth_ratio_items

if TYPE_CHECKING:
    from guard.interventions.uld_decoding import AssistantRuntime
    from guard.train.uld_data import Item, UldData

log = logging.getLogger(__name__)

PURPOSE = "the ULD alpha search scores TOFU truth ratios (question/answer pairs with perturbed answers)"
RULE = "lexicographic: smallest KS statistic vs the holdout level among feasible alphas, ties to the smallest alpha"


@dataclass(frozen=True)
class PositionCache:
    """One answer, per answer position (``k`` = top_k): the target's top-k log-probs (descending),
    the assistant's logits on those ids, the gold token's index among them (-1: outside), the gold
    token's target log-prob, and the log of the target's mass outside the top-k."""

    vals: np.ndarray
    a: np.ndarray
    gold_j: np.ndarray
    gold_lp: np.ndarray
    rest: np.ndarray


def _plausible(vals: np.ndarray, min_prob_ratio: float) -> np.ndarray:
    """``guard.interventions.uld_decoding.plausible_mask`` on cached values."""
    if min_prob_ratio <= 0.0:
        return np.ones_like(vals, dtype=bool)
    return vals >= vals[:, :1] + math.log(min_prob_ratio)


def _f(cache: PositionCache, alpha: float, min_prob_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(f on the top-k with the target's values off the plausible set, the plausible mask)."""
    valid = _plausible(cache.vals, min_prob_ratio)
    a = np.where(valid, cache.a, -np.inf)
    a_logp = a - np.logaddexp.reduce(a, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        f = np.where(valid, cache.vals - alpha * a_logp, cache.vals)
    return f, valid


def uld_token_nll(cache: PositionCache, alpha: float, min_prob_ratio: float = 0.0) -> np.ndarray:
    """Per-position NLL of the gold answer through ULD at ``alpha`` (the closed form of scoring_transform)."""
    f, _ = _f(cache, alpha, min_prob_ratio)
    lse = np.logaddexp(np.logaddexp.reduce(f, axis=1), cache.rest)
    n = np.arange(len(cache.gold_j))
    gold = np.where(cache.gold_j >= 0, f[n, np.maximum(cache.gold_j, 0)], cache.gold_lp)
    return lse - gold


def uld_nll(cache: PositionCache, alpha: float, min_prob_ratio: float = 0.0) -> float:
    """Mean per-token NLL of the answer through ULD (TOFU's per-answer loss)."""
    return float(np.mean(uld_token_nll(cache, alpha, min_prob_ratio)))


def top_token_kept(cache: PositionCache, alpha: float, min_prob_ratio: float = 0.0) -> np.ndarray:
    """Per position: does ULD's greedy choice (argmax of f over the plausible set) stay the target's top token?"""
    f, valid = _f(cache, alpha, min_prob_ratio)
    return np.argmax(np.where(valid, f, -np.inf), axis=1) == 0


@torch.no_grad()
def cache_answers(model: Any, runtime: "AssistantRuntime", tokenizer: Any, item: TruthRatioItem, top_k: int,
                  system_prompt: str | None = None) -> list[PositionCache]:
    """One forward of the target and of the assistant over the item's answers (gold, paraphrased,
    perturbed; right-padded in one batch: causal attention leaves every real position exact), each
    answer tokenised as fine-tuning and ``guard-eval tofu`` see it (``encode_qa``: the chat template,
    the answer with its end-of-turn)."""
    from guard.lm.chat_format import encode_qa, pad_token_id
    from guard.lm.nll import label_positions

    encoded = [encode_qa(tokenizer, item.question, ans, max_length=100_000, system_prompt=system_prompt) for ans in item.answers]
    width = max(int(e["input_ids"].shape[0]) for e in encoded)
    ids = torch.full((len(encoded), width), pad_token_id(tokenizer), dtype=torch.long)
    for b, e in enumerate(encoded):
        ids[b, : e["input_ids"].shape[0]] = e["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    logp_all = torch.log_softmax(model(inputs_embeds=embeds).logits.float(), dim=-1)
    a_all = runtime.full_logits(embeds)
    out = []
    for b, e in enumerate(encoded):
        answer = torch.tensor(label_positions(e["labels"].tolist()))
        start = int(e["input_ids"].shape[0]) - len(answer)
        pos = torch.arange(start - 1, start - 1 + len(answer))
        lp = logp_all[b, pos]
        vals, idx = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
        hit = idx == answer[:, None]
        gold_j = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(answer, -1))
        rest = torch.log1p(-vals.double().exp().sum(1).clamp(max=1 - 1e-12)).float()
        out.append(PositionCache(vals.numpy(), a_all[b, pos].gather(1, idx).numpy(), gold_j.numpy(),
                                 lp.gather(1, answer[:, None])[:, 0].numpy(), rest.numpy()))
    return out


def _losses(cached: Sequence[Sequence[PositionCache]], alpha: float, ratio: float) -> list[list[float]]:
    return [[uld_nll(c, alpha, ratio) for c in answers] for answers in cached]


def choose_alpha(forget: Sequence[Sequence[PositionCache]], level: Level, retain: Sequence[Sequence[PositionCache]],
                 alphas: Sequence[float], *, min_prob_ratio: float = 0.0, min_retain_agreement: float = 0.98,
                 max_retain_shift: float | None = None, max_retain_nll_rise: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(chosen row, trace): per alpha the surrogate on the forget items and the flagged-retain checks."""
    r0 = _losses(retain, 0.0, min_prob_ratio)
    log_tr_r0 = np.log(item_truth_ratios(r0))
    gold_r0 = float(np.mean([x[0] for x in r0]))
    trace = []
    for alpha in sorted(set(float(a) for a in alphas)):
        lf = _losses(forget, alpha, min_prob_ratio)
        tr = item_truth_ratios(lf)
        lr = _losses(retain, alpha, min_prob_ratio)
        kept = np.concatenate([top_token_kept(answers[0], alpha, min_prob_ratio) for answers in retain])
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = float(np.mean(np.abs(np.log(item_truth_ratios(lr)) - log_tr_r0)))
        row: dict[str, Any] = {"alpha": alpha, **surrogate(tr, level), "forget_truth_ratio_mean": float(np.mean(tr)),
                               "forget_gold_nll": float(np.mean([x[0] for x in lf])),
                               "forget_prob": float(np.mean(np.exp(-np.asarray([x[0] for x in lf])))),
                               "forget_top_token_kept": float(np.mean(np.concatenate(
                                   [top_token_kept(a[0], alpha, min_prob_ratio) for a in forget]))),
                               "retain_top_token_kept": float(np.mean(kept)), "retain_log_tr_shift": shift,
                               "retain_nll_rise": float(np.mean([x[0] for x in lr])) - gold_r0}
        row["feasible"] = bool(row["retain_top_token_kept"] >= min_retain_agreement
                               and (max_retain_shift is None or shift <= max_retain_shift)
                               and (max_retain_nll_rise is None or row["retain_nll_rise"] <= max_retain_nll_rise))
        trace.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    return lexicographic_choice(trace, "alpha"), trace


def _rows_of(items: Sequence["Item"], param: str) -> list[TruthRatioItem]:
    """The truth-ratio data of trainer items (re-read from their files: the trainer keeps only paraphrases)."""
    files: dict[str, dict[int, Any]] = {}
    out = []
    for it in items:
        if it.question is None:
            raise ConfigError(f"{it.source}: the alpha search needs question/answer data, not documents", param=param)
        if it.source not in files:
            recs = read_qa(DataSource(path=Path(it.source), format="tofu_qa"), param, purpose=PURPOSE)
            files[it.source] = {r.row: r for r in recs}
        out.extend(truth_ratio_items([files[it.source][it.row]], param))
    return out


@dataclass(frozen=True)
class SearchItems:
    """What the search reads: every ``forget_every``-th forget item (``not_searched``: the others, held
    out from the choice), the flagged-retain items (held out from the assistant's training) and the holdout."""

    forget: list[TruthRatioItem]
    not_searched: list[TruthRatioItem]
    retain: list[TruthRatioItem]
    holdout: list[TruthRatioItem]


def search_items(data: "UldData", search: Any) -> SearchItems:
    """The search's items, checked (the trainer calls this before training too, so bad data fails early)."""
    all_forget = sorted(data.forget_train + data.forget_val, key=lambda it: (it.source, it.row))
    picked = _rows_of(all_forget, "forget_data")
    retain = _rows_of(list(data.retain_val)[: search.retain_items], "keep_data")
    if not retain:
        raise ConfigError("the alpha search checks flagged-retain answers on held-out retain items, and none is held out: "
                          "set --val-fraction > 0 (with at least 4 retain items)", param="val_fraction")
    holdout = truth_ratio_items(read_qa(search.holdout.source, search.holdout.param, purpose=PURPOSE), search.holdout.param)
    trained = {it.question for it in data.forget_train + data.forget_val + data.retain_train + data.retain_val}
    overlap = [h.row for h in holdout if h.question in trained]
    if overlap:
        raise ConfigError(f"--holdout rows {overlap[:5]} are questions the assistant trained on: the never-seen "
                          "reference must be outside forget_data and keep_data", param="holdout")
    every = search.forget_every
    return SearchItems(picked[::every], [it for i, it in enumerate(picked) if i % every], retain, holdout)


def run_alpha_search(model_dir: Path, tokenizer: Any, assistant: Any, data: "UldData", cfg: Any, search: Any,
                     *, progress: bool = True) -> dict[str, Any]:
    """Cache the target and the (merged) ``assistant`` on the search's forget, holdout and flagged-retain
    items, choose alpha (``choose_alpha``) and return the manifest's ``alpha_search`` record."""
    from transformers import AutoModelForCausalLM

    from guard.interventions.scoring import answer_nll
    from guard.interventions.uld_decoding import AssistantRuntime, ULDSettings, scoring_transform
    from guard.lm.chat_format import encode_prompt

    started = time.perf_counter()
    items = search_items(data, search)
    forget, retain, holdout = items.forget, items.retain, items.holdout
    target = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    runtime = AssistantRuntime(assistant)
    todo = [("forget", it) for it in forget] + [("holdout", it) for it in holdout] + [("retain", it) for it in retain]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="uld alpha search", leave=False)
    cached: dict[str, list[list[PositionCache]]] = {"forget": [], "holdout": [], "retain": []}
    for kind, it in todo:
        cached[kind].append(cache_answers(target, runtime, tokenizer, it, cfg.top_k, cfg.system_prompt))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    level = Level.from_losses(_losses(cached["holdout"], 0.0, cfg.min_prob_ratio))
    chosen, trace = choose_alpha(cached["forget"], level, cached["retain"], search.alphas, min_prob_ratio=cfg.min_prob_ratio,
                                 min_retain_agreement=search.min_retain_agreement, max_retain_shift=search.max_retain_shift,
                                 max_retain_nll_rise=search.max_retain_nll_rise)
    # the closed form against the served scoring path, on one answer at the chosen alpha
    first = forget[0]
    prompt = torch.tensor([encode_prompt(tokenizer, first.question, cfg.system_prompt)])
    with torch.no_grad():
        served = answer_nll(target, target.get_input_embeddings()(prompt)[0], _answer_ids(tokenizer, first, cfg),
                            scoring_transform(runtime, ULDSettings(alpha=chosen["alpha"], top_k=cfg.top_k,
                                                                   min_prob_ratio=cfg.min_prob_ratio)))
    check = {"alpha": chosen["alpha"], "served_nll": float(np.mean(served)),
             "closed_form_nll": uld_nll(cached["forget"][0][0], chosen["alpha"], cfg.min_prob_ratio)}
    if abs(check["served_nll"] - check["closed_form_nll"]) > 1e-3 * max(1.0, abs(check["served_nll"])):
        log.warning("uld alpha search: closed form %.5f differs from the served scoring %.5f", check["closed_form_nll"],
                    check["served_nll"])
    log.info("uld alpha search: chose alpha %s (KS D %.3f vs holdout, retain top-token kept %.3f)", chosen["alpha"],
             chosen["ks_d"], chosen["retain_top_token_kept"])
    return {"rule": RULE, "chosen": chosen, "level": level.describe(), "trace": trace, "check": check,
            "constraints": {"min_retain_agreement": search.min_retain_agreement, "max_retain_shift": search.max_retain_shift,
                            "max_retain_nll_rise": search.max_retain_nll_rise},
            "holdout": {"path": str(search.holdout.source.path), "rows": search.holdout.source.rows, "n": len(holdout)},
            "forget_items": [{"source": it.source, "row": it.row} for it in forget],
            "forget_items_not_searched": [{"source": it.source, "row": it.row} for it in items.not_searched],
            "retain_items": [{"source": it.source, "row": it.row} for it in retain],
            "time_s": round(time.perf_counter() - started, 1)}


def _answer_ids(tokenizer: Any, item: TruthRatioItem, cfg: Any) -> list[int]:
    from guard.lm.chat_format import encode_qa
    from guard.lm.nll import label_positions

    return label_positions(encode_qa(tokenizer, item.question, item.answer, 100_000, cfg.system_prompt)["labels"].tolist())
