"""``guard-train eco``: zeroth-order search of ECO's corruption strength (sigma, optionally k).

ECO (Liu et al., NeurIPS 2024) picks the corruption strength offline, without gradients through the
model: a zeroth-order (finite-difference) search that drives a surrogate forget metric of the
corrupted model to the level a model that never saw the data would show. Here:

* **surrogate** ``f(theta)``: the target model's length-normalised answer log-probability (mean
  per-token log-prob of the gold answer's first ``surrogate_tokens`` tokens, default 8,
  teacher-forced) on the forget QA of the policy's targets,
  with the prompt corrupted exactly as ``guard serve`` corrupts it (same token selection, same
  corruption function; fixed per-item seeds, so ``f`` is a smooth function of ``theta``);
* **level to match** ``r``: the same measure on comparable QA the model never saw, clean (TOFU's
  ``holdout*`` authors by default: fictitious authors outside ``full.json``);
* **search**: minimise ``(f(theta) - r)^2`` over ``u = log theta`` with central finite differences
  and damped Gauss-Newton (Levenberg-Marquardt) steps, clipped per iteration;
* **fluency constraint**: greedy answers to the corrupted forget questions must stay fluent: their
  perplexity under the clean model (as an assistant reply after a neutral prompt, not after the
  question: the clean model has memorised the forget answers and would call any other answer
  disfluent) at most ``max_ppl_ratio`` x, and their n-gram entropy (RWKU's Flu) at least
  ``min_entropy_ratio`` x, those of the clean model's answers to the holdout questions. An infeasible iterate is pulled back halfway (in log space) towards the last feasible one.

The chosen parameters, the surrogate levels, fluency and the whole search trace go into
``OUT/manifest.json`` (kind ``eco``) with the base model's identity; a policy uses them through
``targets.N.params.artifact: OUT``. The directory is written atomically (interrupting leaves nothing).

The retain twin is never read (``guard-eval`` alone uses it). ``guard-train eco --holdout`` replaces
this search by a grid over the corruption and its strength that matches the forget truth ratios to
never-seen QA (``guard.train.eco_holdout``, the forget-quality surrogate).

This module holds the search's configuration and the run; the data is ``guard.train.eco_data``,
the measurements ``guard.train.eco_scoring``, the search itself ``guard.train.eco_search`` and the
command line ``guard.train.cmd_eco``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from guard.atomic import staged_dir, write_json
from guard.errors import ConfigError
from guard.train.artifact_files import utc_now
from guard.train.eco_data import Prepared, QAItem, answer_head, forget_items, holdout_items, load_source_qa, prepare, spread
from guard.train.eco_scoring import answer_logprobs, answer_perplexity, fluency, generate_from_embeds, neutral_context
from guard.train.eco_search import Searcher, _fmt, zeroth_order_search

__all__ = ["DEFAULT_MODEL", "KIND", "MANIFEST", "VERSION", "EcoTrainOptions", "Prepared", "QAItem", "SearchConfig", "Searcher",
           "answer_head", "answer_logprobs", "answer_perplexity", "fluency", "forget_items", "generate_from_embeds",
           "holdout_items", "load_source_qa", "neutral_context", "prepare", "spread", "train_eco", "zeroth_order_search"]

log = logging.getLogger(__name__)

KIND = "eco"
MANIFEST = "manifest.json"
VERSION = 1


def manifest_head(model_path: Any, model: str | None) -> dict[str, Any]:
    """The first fields of every ECO artifact manifest, whichever search wrote it: what it is and
    which served model it was searched on (``guard serve`` checks ``base_model``)."""
    from guard.artifacts import model_identity

    return {"kind": KIND, "version": VERSION, "created": utc_now(), "base_model": model_identity(model_path),
            "model": model}


DEFAULT_MODEL = "tofu-mini-target"


@dataclass
class SearchConfig:
    corruption: str = "rand_noise_first_n"
    search: tuple[str, ...] = ("sigma",)  # which parameters the search moves: sigma and/or k
    select: str = "entity"
    sigma0: float | None = None  # start; default: the RMS of the embedding matrix
    k0: int | None = None  # start for k (top-k corruptions: hidden/8; first-n noise: all dimensions)
    iters: int = 10
    mu: float = 0.15  # finite-difference half-step in log space
    max_step: float = 1.0  # largest change of log(theta) per iteration
    damping: float = 1e-4
    tol: float = 0.02  # |f - r| in nats/token counted as matched
    max_ppl_ratio: float = 3.0
    min_entropy_ratio: float = 0.75
    max_empty_frac: float = 0.25  # at most this fraction of the corrupted answers may be empty
    fluency_items: int = 8
    fluency_tokens: int = 32
    batch_size: int = 8
    seed: int = 0
    sigma_bounds: tuple[float, float] = (1e-3, 50.0)
    # Score only the first N answer tokens (None: all). A memorised answer's own prefix gives the
    # rest away under teacher forcing, so the whole-answer log-prob saturates above the holdout
    # level (docs/eco.md); the opening tokens depend on the prompt alone and can be pushed to it.
    surrogate_tokens: int | None = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EcoTrainOptions:
    policy: Path
    out: Path
    model: str = DEFAULT_MODEL
    data_dir: Path | None = None
    targets: list[str] = field(default_factory=list)
    holdout_split: str = "holdout01"
    holdout_rows: str | None = None
    max_forget: int | None = None
    max_holdout: int | None = None
    threads: int | None = None
    progress: bool = True


def _load_model(name: str) -> tuple[Any, Any, Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard.models import resolve_model

    path = Path(resolve_model(name))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tokenizer, path


def _say(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(f"guard-train eco: {message}", file=sys.stderr, flush=True)

    return say


def train_eco(opts: EcoTrainOptions, cfg: SearchConfig) -> dict[str, Any]:
    """Run the search and write the artifact; returns the manifest."""
    from guard.data.tofu import tofu_dir
    from guard.interventions.corruption import validate_params
    from guard.interventions.token_selection import MODES
    from guard.paths import default_data_dir
    from guard.policy import load_policy

    say = _say(opts.progress)
    started = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if cfg.select not in MODES:
        raise ConfigError(f"--select must be one of {', '.join(MODES)}", param="select")
    bad = [p for p in cfg.search if p not in ("sigma", "k")]
    if bad or not cfg.search:
        raise ConfigError("--search takes sigma, k or sigma,k", param="search")
    policy = load_policy(opts.policy)
    data_dir = Path(opts.data_dir) if opts.data_dir else default_data_dir()
    tofu_dir(data_dir)
    forget_all, target_ids = forget_items(policy, opts.targets)
    forget = spread(forget_all, opts.max_forget)
    holdout = spread(holdout_items(data_dir, opts.holdout_split, opts.holdout_rows), opts.max_holdout)
    if not forget or not holdout:
        raise ConfigError("the search needs at least one forget and one holdout QA pair", param="max_forget")

    say(f"loading {opts.model}")
    model, tokenizer, model_path = _load_model(opts.model)
    hidden = int(model.get_input_embeddings().weight.shape[1])
    matrix = model.get_input_embeddings().weight.detach().float()
    rms = float(matrix.pow(2).mean().sqrt())
    # starting point and which parameters move
    uses_sigma = cfg.corruption == "rand_noise_first_n"
    if not uses_sigma and "sigma" in cfg.search:
        cfg.search = ("k",)
    if cfg.sigma0 is None and uses_sigma:
        cfg.sigma0 = rms
    if cfg.k0 is None and not uses_sigma:
        cfg.k0 = max(1, hidden // 8)
    validate_params(cfg.corruption, cfg.sigma0 if uses_sigma else None, cfg.k0, hidden, where="search")

    say(f"{len(forget)} forget QA ({', '.join(target_ids)}), {len(holdout)} holdout QA ({opts.holdout_split}); "
        f"corruption {cfg.corruption}, select {cfg.select}, searching {','.join(cfg.search)}")
    prep_forget = answer_head(prepare(model, tokenizer, forget), cfg.surrogate_tokens)
    prep_holdout = answer_head(prepare(model, tokenizer, holdout), cfg.surrogate_tokens)
    bs = cfg.batch_size
    holdout_lp = answer_logprobs(model, [p.embeds for p in prep_holdout], [p.answer_ids for p in prep_holdout], bs)
    forget_clean_lp = answer_logprobs(model, [p.embeds for p in prep_forget], [p.answer_ids for p in prep_forget], bs)
    r = sum(holdout_lp) / len(holdout_lp)
    f0 = sum(forget_clean_lp) / len(forget_clean_lp)
    say(f"clean: forget log-prob {f0:.4f}/token, holdout (never seen) {r:.4f}/token")

    fluency_forget = spread(prep_forget, cfg.fluency_items)
    fluency_holdout = spread(prep_holdout, cfg.fluency_items)
    searcher = Searcher(model, tokenizer, prep_forget, cfg, fluency_forget, say)
    say(f"fluency baseline: generating {len(fluency_holdout)} clean holdout answers ({cfg.fluency_tokens} tokens)")
    base_answers = generate_from_embeds(model, tokenizer, [p.embeds for p in fluency_holdout], cfg.fluency_tokens, bs)
    base_flu = searcher.fluency(base_answers)
    clean_forget_answers = generate_from_embeds(model, tokenizer, [p.embeds for p in fluency_forget], cfg.fluency_tokens, bs)
    say(f"fluency baseline: ppl {base_flu['ppl']:.1f}, n-gram entropy {base_flu['entropy']:.2f}")

    u0 = [math.log(cfg.sigma0) if p == "sigma" else math.log(cfg.k0 or hidden) for p in cfg.search]
    if f0 <= r + cfg.tol:
        say("warning: the clean forget log-prob is already at the holdout level: the model shows no memorisation "
            "to remove; the search will keep the corruption small")
    result = zeroth_order_search(searcher, r, base_flu, u0)
    best = result["best"]
    if best is None:
        raise ConfigError(
            f"no fluent setting found in {cfg.iters} iterations (every iterate broke the fluency bound: ppl <= "
            f"{result['bounds']['max_ppl']:.1f}, entropy >= {result['bounds']['min_entropy']:.2f}); start lower "
            f"(--sigma0), loosen --max-ppl-ratio/--min-entropy-ratio, or raise --iters", param="sigma0")
    theta = best["theta"]
    if not result["converged"]:
        values = [t["forget_logprob"] for t in result["trace"]]
        values += [fd[k] for t in result["trace"] for fd in t.get("finite_differences", []) for k in ("f_plus", "f_minus")]
        reachable = min(values)
        if reachable - r > cfg.tol:
            why = (f"the surrogate never got below {reachable:.4f} at any strength tried: corrupting the prompt "
                   "cannot bring a memorised answer's teacher-forced log-prob to the never-seen level (the "
                   "answer's own prefix identifies the rest)" + ("; with select=entity the rest of the question "
                   "may also still identify the answer: try --select all_content" if cfg.select == "entity" else ""))
        else:
            why = "the fluency bound stops the search before the target level; loosen it if the answers are still fluent"
        say(f"warning: not converged: the chosen setting is the fluent one closest to the target "
            f"(f={best['forget_logprob']:.4f} vs {r:.4f}); {why}")
        result["note"] = why
    chosen = {"corruption": cfg.corruption, "sigma": theta["sigma"] if uses_sigma else None,
              "k": theta["k"], "select": cfg.select}
    validate_params(chosen["corruption"], chosen["sigma"], chosen["k"], hidden, where="chosen")

    from guard.lm.rouge import rouge_l_recall

    golds = [p.item.answer for p in fluency_forget]
    generation = {
        "n": len(golds),
        "max_new_tokens": cfg.fluency_tokens,
        "rouge_l_recall_clean": sum(rouge_l_recall(c, g) for c, g in zip(clean_forget_answers, golds)) / len(golds),
        "rouge_l_recall_chosen": sum(rouge_l_recall(a, g) for a, g in zip(best["answers"], golds)) / len(golds),
    }
    say(f"greedy forget answers, ROUGE-L recall vs gold: clean {generation['rouge_l_recall_clean']:.3f}, "
        f"corrupted {generation['rouge_l_recall_chosen']:.3f} (first {cfg.fluency_tokens} tokens)")
    manifest: dict[str, Any] = {
        **manifest_head(model_path, opts.model),
        "policy": str(Path(opts.policy).resolve()),
        "targets": target_ids,
        "chosen": chosen,
        "objective": {
            "surrogate": ("mean per-token log-prob of the gold answer"
                          + (f"'s first {cfg.surrogate_tokens} tokens" if cfg.surrogate_tokens else "")
                          + " on the forget QA, prompt corrupted as served"),
            "match": f"clean mean per-token log-prob on {opts.holdout_split} (QA the model never saw)",
            "target_logprob": r,
            "forget_logprob_clean": f0,
            "forget_logprob_chosen": best["forget_logprob"],
            "residual": best["residual"],
            "tol": cfg.tol,
            "converged": result["converged"],
            "note": result.get("note"),
            "embedding_rms": rms,
        },
        "generation": generation,
        "fluency": {
            "baseline": base_flu,
            "chosen": best["fluency"],
            "bounds": result["bounds"],
            "examples": [{"question": p.item.question, "gold": p.item.answer, "clean": c, "corrupted": a}
                         for p, c, a in zip(fluency_forget, clean_forget_answers, best["answers"])],
            "baseline_examples": [{"question": p.item.question, "answer": a}
                                  for p, a in zip(fluency_holdout, base_answers)],
        },
        "data": {
            "data_dir": str(data_dir),
            "forget": {"n": len(forget), "of": len(forget_all), "sources": sorted({i.source for i in forget_all})},
            "holdout": {"split": opts.holdout_split, "rows": opts.holdout_rows, "n": len(holdout)},
        },
        "search": {
            "method": "zeroth-order: central finite differences in log space, Levenberg-Marquardt steps, "
                      "fluency-constrained (backtracking)",
            "config": cfg.to_dict(),
            "evaluations": result["evaluations"],
            "best_iter": best["iter"],
            "trace": result["trace"],
        },
        "time_s": round(time.perf_counter() - started, 1),
    }
    out = Path(opts.out)
    with staged_dir(out) as tmp:
        write_json(tmp / MANIFEST, manifest)
    say(f"chose {_fmt(chosen)} (f={best['forget_logprob']:.4f} vs target {r:.4f}, ppl {best['fluency']['ppl']:.1f}); "
        f"wrote {out / MANIFEST} in {manifest['time_s']:.0f}s")
    say(f"use it with: targets.N.params: {{artifact: {out}}}")
    return manifest
