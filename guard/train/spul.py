"""``guard-train spul``: learn a soft prompt that makes the served model unlearn a policy's targets.

SPUL (Bhaila et al., "Soft Prompting for Unlearning in Large Language Models"): ``n`` vectors
(default 20) of the served model's hidden size are trained with the LLM frozen, with the objective
in ``guard.train.spul_objective`` (CE towards "I don't know"/perturbed answers on the forget data,
CE on retain QA, KL to the frozen model on retain QA). At serving time the guard inserts them into
the prompt embeddings of flagged requests (``guard.interventions.spul``).

Data:

* forget: the ``forget_data`` of the policy's targets (``--target`` picks some; default all that
  have forget data). Only question/answer sources are usable (``format: tofu_qa``, JSON Lines or a
  JSON array of ``{question, answer}``, sliced by ``rows``);
* retain: their ``keep_data`` (or ``--retain PATH [--retain-rows A:B]``), capped at
  ``--max-retain`` QA sampled with the seed; questions that are also forget questions are dropped;
* unlearning answers: ``--forget-target idk`` (default) draws one line of TOFU's
  ``idontknow.jsonl`` per question; ``perturbed`` draws one of the question's perturbed answers from
  the ``*_perturbed.json`` files beside the forget source (TOFU layout); ``counterfactual``: the
  model's own answer about a stand-in name (``guard.train.spul_counterfactual``); ``distill``: no
  answer but the model's distribution along the true answer about the stand-in, matched by KL
  (``guard.train.spul_distill``);
* a held-out split (``--val-fraction``, default 0.2, of both sets) drives early stopping (best
  held-out objective, ``--patience`` epochs) and the report.

The module holds SPUL's optimisation loop and the run; the configuration is ``guard.train.spul_config``,
the data ``guard.train.spul_data``, the objective ``guard.train.spul_objective``, the before/after report
``guard.train.spul_report`` and the command line ``guard.train.cmd_spul``. A run is ``prepare_run``
(policy, model, data), ``fit`` (one soft prompt) and ``write_artifact``, so ``guard-train spul --holdout``
(``guard.train.spul_holdout``) trains one soft prompt per ``w_divergent`` on one loaded model and data.
``--choose-epoch never-seen`` (``guard.train.spul_epoch_choice``) picks the epoch whose forget answers
look most like a never-seen model's instead of the best held-out objective.

Output (``--out DIR``, written atomically): ``soft_prompt.safetensors`` + ``manifest.json`` (base
model identity with its embedding hash, where the vectors go, data, hyperparameters, losses per
epoch, timings) + ``eval.json`` (greedy answers on the held-out questions with and without the soft
prompt: refusal share, changed answers, ROUGE-L). Runs on a GPU when one is visible
(``--device auto``), else on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from guard.devices import resolve_device
from guard.errors import ConfigError
from guard.train.artifact_files import loop_summary, policy_stamp, utc_now
from guard.train.method_data import SourceRef
from guard.train.progress import progress_bar
from guard.train.spul_data import QAItem, SpulData, collect_data, load_qa_source, perturbed_answers
from guard.train.spul_config import DEFAULT_INIT_TEXT, SpulConfig
from guard.train.spul_objective import Example

__all__ = ["DEFAULT_INIT_TEXT", "EVAL_FILE", "QAItem", "SpulConfig", "SpulData", "SpulRun", "collect_data", "fit", "freeze",
           "initial_soft_prompt", "load_frozen_model", "load_qa_source", "perturbed_answers", "prepare_run", "train_soft_prompt",
           "train_spul", "write_artifact"]

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


def load_frozen_model(model_dir: Path, device: str) -> Any:
    """The model in float32 on ``device``, frozen (eval mode, no parameter gradients)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(device)
    freeze(model)
    return model


def freeze(model: Any) -> None:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)


def initial_soft_prompt(model: Any, tokenizer: Any, cfg: SpulConfig):
    """``[n, hidden]``: the embeddings of ``init_text`` (repeated/cut to n tokens), or of n random
    vocabulary tokens (``init='vocab'``): starting on the embedding manifold trains faster and stabler
    than random vectors."""
    import torch

    emb = model.get_input_embeddings().weight
    if cfg.init == "text":
        ids = list(tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]) or [tokenizer.eos_token_id]
        ids = (ids * math.ceil(cfg.n_tokens / len(ids)))[: cfg.n_tokens]
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        ids = torch.randint(0, emb.shape[0], (cfg.n_tokens,), generator=gen).tolist()
    return emb[torch.tensor(ids, device=emb.device)].detach().clone().float()


def train_soft_prompt(model: Any, init, data: SpulData, cfg: SpulConfig, *, progress: bool = True,
                      scorer: Any = None) -> dict[str, Any]:
    """Optimise the soft prompt; returns ``{"soft": best [n, H] (CPU), "history": [...], ...}``.

    Each step takes ``batch_size/2`` forget and ``batch_size/2`` retain examples (the smaller set
    is cycled). After every epoch the held-out objective is measured; the best soft prompt is kept
    and training stops after ``patience`` epochs without an improvement of ``min_delta``. Without
    a held-out set, the training objective of the epoch is used instead. With ``scorer``
    (``guard.train.spul_epoch_choice.EpochScorer``) every epoch it scores is a candidate and its rule
    picks the soft prompt (``epoch_choice`` in the result); patience then reads the training objective
    and the held-out one is measured for the chosen epoch only (it chooses nothing).
    """
    import torch

    from guard.lm.nll import supports_logits_to_keep
    from guard.train.spul_objective import divergent_tokens, evaluate, reference_logprobs, spul_losses

    freeze(model)
    device = next(model.parameters()).device
    keep_ok = supports_logits_to_keep(model)
    soft = torch.nn.Parameter(init.detach().clone().to(device=device, dtype=torch.float32))
    optimizer = torch.optim.AdamW([soft], lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed + 1)
    w = cfg.weights
    use_retain = bool(data.retain_train) and (w.retain > 0 or w.kl > 0)
    half_f = cfg.batch_size // 2 if use_retain else cfg.batch_size
    half_r = cfg.batch_size - half_f
    n_f = len(data.forget_train)
    n_r = len(data.retain_train) if use_retain else 0
    steps = max(math.ceil(n_f / half_f), math.ceil(n_r / half_r) if n_r else 0)
    has_val = bool(data.forget_val or data.retain_val)
    # with a scorer the held-out objective chooses nothing: it is measured once, for the chosen epoch
    val_each_epoch = has_val and scorer is None
    started = time.perf_counter()
    cpu_started = time.process_time()
    # the KL's fixed side, computed once (it does not depend on the soft prompt) unless too large
    reference = None
    if n_r and w.kl:
        size = sum(len(ex.answer_ids) for ex in data.retain_train) * model.get_input_embeddings().weight.shape[0] * 2
        if size <= cfg.reference_cache_mb * 2**20:
            reference = reference_logprobs(model, data.retain_train, batch_size=cfg.batch_size, keep_ok=keep_ok)

    divergent = (divergent_tokens(model, [*data.forget_train, *data.forget_val], batch_size=cfg.batch_size, keep_ok=keep_ok)
                 if w.divergent != 1.0 else None)

    def held_out(vec) -> dict[str, float]:
        return evaluate(model, vec, data.forget_val, data.retain_val, w, batch_size=cfg.batch_size, keep_ok=keep_ok,
                        divergent=divergent)

    def cycle(items: list[Example], count: int) -> list[Example]:
        if not items:
            return []
        order: list[Example] = []
        while len(order) < count:
            block = list(items)
            rng.shuffle(block)
            order += block
        return order[:count]

    history: list[dict[str, Any]] = []
    initial = held_out(soft.detach()) if val_each_epoch else None
    best_score = initial["total"] if initial else math.inf
    best = soft.detach().clone()
    best_epoch = 0
    bad_epochs = 0
    stopped_early = False
    scored: list[dict[str, Any]] = []
    candidates: dict[int, Any] = {}
    bar = progress_bar(steps * cfg.epochs, "spul", progress)
    try:
        for epoch in range(1, cfg.epochs + 1):
            f_order = cycle(data.forget_train, steps * half_f)
            r_order = cycle(data.retain_train, steps * half_r) if n_r else []
            sums = {"total": 0.0, "forget_ce": 0.0, "retain_ce": 0.0, "retain_kl": 0.0, "truth_ratio": 0.0}
            for step in range(steps):
                fb = f_order[step * half_f:(step + 1) * half_f]
                rb = r_order[step * half_r:(step + 1) * half_r] if n_r else []
                parts = spul_losses(model, soft, fb, rb, w, keep_ok=keep_ok, reference=reference, divergent=divergent)
                optimizer.zero_grad(set_to_none=True)
                parts["total"].backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([soft], cfg.max_grad_norm)
                optimizer.step()
                for k in sums:
                    sums[k] += float(parts[k].detach())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{float(parts['total'].detach()):.3f}",
                                forget=f"{float(parts['forget_ce'].detach()):.3f}", kl=f"{float(parts['retain_kl'].detach()):.3f}",
                                **({"tr": f"{float(parts['truth_ratio'].detach()):.3f}"} if w.truth_ratio else {}))
            train = {k: v / steps for k, v in sums.items()}
            val = held_out(soft.detach()) if val_each_epoch else None
            score = val["total"] if val else train["total"]
            record = {"epoch": epoch, "train": train, "val": val, "elapsed_s": round(time.perf_counter() - started, 1)}
            history.append(record)
            log.info("spul epoch %d: train %.4f (forget %.4f, retain %.4f, kl %.4f, truth ratio %.4f)%s", epoch,
                     train["total"], train["forget_ce"], train["retain_ce"], train["retain_kl"], train["truth_ratio"],
                     f"; held-out {val['total']:.4f} (forget {val['forget_ce']:.4f}, retain {val['retain_ce']:.4f}, "
                     f"kl {val['retain_kl']:.4f}, truth ratio {val['truth_ratio']:.4f})" if val else "")
            row = scorer.score(epoch, soft.detach()) if scorer is not None else None
            if row is not None:
                scored.append(row)
                candidates[epoch] = soft.detach().clone()
                log.info("spul epoch %d: forget ROUGE-L %.3f (never-seen level %.3f), truth ratios KS D %.3f",
                         epoch, row["rouge"], scorer.rouge_level, row["ks_d"])
            if score < best_score - cfg.min_delta:
                best_score, best, best_epoch, bad_epochs = score, soft.detach().clone(), epoch, 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience and epoch < cfg.epochs:
                    stopped_early = True
                    log.info("spul: no held-out improvement for %d epochs; stopping after epoch %d (best: epoch %d)",
                             bad_epochs, epoch, best_epoch)
                    break
    finally:
        bar.close()
    if best_epoch == 0 and not has_val:
        best = soft.detach().clone()
        best_epoch = len(history)
    choice = None
    if scored:
        from guard.train.spul_epoch_choice import choose

        chosen = choose(scored, scorer.rouge_level, scorer.band)
        best, best_epoch = candidates[chosen["epoch"]], chosen["epoch"]
        best_score = held_out(best)["total"] if has_val else history[best_epoch - 1]["train"]["total"]
        choice = scorer.record(scored, chosen)
    return {"epoch_choice": choice, "soft": best.cpu(), "history": history, "initial_val": initial, "best_epoch": best_epoch,
            "best_score": best_score, "stopped_early": stopped_early, "steps_per_epoch": steps,
            "train_time_s": round(time.perf_counter() - started, 1),
            "train_cpu_time_s": round(time.process_time() - cpu_started, 1)}


def teacher_answers(model: Any, tokenizer: Any, cfg: SpulConfig):
    """The counterfactual teacher: the frozen model's greedy answers to plain questions, prompted
    exactly as served (same chat template and system prompt, no soft prompt)."""
    from guard.train.spul_data import encode_example_checked
    from guard.train.spul_report import generate_answers

    def answer(questions: Sequence[str]) -> list[str]:
        freeze(model)
        examples = [encode_example_checked(tokenizer, QAItem(q, "-", "teacher", i), "-", cfg, "teacher")
                    for i, q in enumerate(questions)]
        return generate_answers(model, tokenizer, examples, None, max_new_tokens=cfg.teacher_max_new_tokens,
                                batch_size=cfg.eval_batch_size)

    return answer


@dataclass
class SpulRun:
    """What every soft prompt of one run shares: the policy, the frozen model (and its folder), the
    encoded data and the clocks (``guard-train spul --holdout`` trains several soft prompts on one)."""

    policy_path: Path
    model: Any
    tokenizer: Any
    model_dir: Path
    data: SpulData
    device: str
    started: float
    cpu_started: float
    truth_ratio_plan: Any = None  # --w-truth-ratio: guard.train.spul_truth_ratio.TruthRatioPlan
    epoch_scorer: Any = None  # --choose-epoch never-seen: guard.train.spul_epoch_choice.EpochScorer


def prepare_run(policy_path: Path, cfg: SpulConfig, *, model_name: str = "default", targets: Sequence[str] | None = None,
                retain: Sequence[SourceRef] | None = None, data_dir: Path | None = None, idk_file: Path | None = None,
                device: str = "auto", threads: int | None = None, loaded: tuple[Any, Any, Path] | None = None,
                progress: bool = True) -> SpulRun:
    """Validate ``cfg``, load the policy, the model (or take ``loaded``) and the data."""
    import torch

    from guard.policy import load_policy

    cfg.validate()
    policy_path = Path(policy_path)
    policy = load_policy(policy_path)
    truth_ratio_items = None
    if cfg.weights.truth_ratio:  # bad data fails before the model loads
        from guard.train.spul_truth_ratio import term_items

        truth_ratio_items = term_items(policy, targets, cfg.truth_ratio_answers)
    if threads:
        if threads < 1:
            raise ConfigError("--threads must be >= 1", param="threads")
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    cpu_started = time.process_time()
    if loaded is None:
        from transformers import AutoTokenizer

        from guard.models import resolve_model

        dev = resolve_device(device, label="--device")
        model_dir = Path(resolve_model(model_name))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if cfg.forget_target == "counterfactual":  # the model is the teacher of the forget answers
            model = load_frozen_model(model_dir, dev)
        # the data first: a bad policy or data file fails before the model loads
        data = collect_data(policy, tokenizer, cfg, targets=targets, retain=retain, data_dir=data_dir, idk_file=idk_file,
                            teacher=teacher_answers(model, tokenizer, cfg) if cfg.forget_target == "counterfactual" else None)
        if cfg.forget_target != "counterfactual":
            model = load_frozen_model(model_dir, dev)
    else:
        model, tokenizer, model_dir = loaded
        dev = str(next(model.parameters()).device)
        data = collect_data(policy, tokenizer, cfg, targets=targets, retain=retain, data_dir=data_dir, idk_file=idk_file,
                            teacher=teacher_answers(model, tokenizer, cfg))
    freeze(model)
    if cfg.forget_target in ("distill", "uld"):  # the teacher's side of the forget KL, once
        from guard.train.spul_distill import attach_teachers

        attach_teachers(model, tokenizer, cfg, data, Path(model_dir), dev)
    plan = None
    if truth_ratio_items is not None:
        from guard.train.spul_truth_ratio import attach_to_data

        plan = attach_to_data(model, tokenizer, cfg, truth_ratio_items, data, progress=progress)
    scorer = None
    if cfg.choose_epoch == "never-seen":
        from guard.train.spul_epoch_choice import EpochScorer

        scorer = EpochScorer.build(model, tokenizer, cfg, plan, progress=progress)
    log.info("spul: %d forget QA (%d held out), %d retain QA (%d held out); %d soft tokens at '%s' on %s (%s), %d threads",
             len(data.forget_train) + len(data.forget_val), len(data.forget_val), len(data.retain_train) + len(data.retain_val),
             len(data.retain_val), cfg.n_tokens, cfg.position, Path(model_dir).name, dev, torch.get_num_threads())
    return SpulRun(policy_path, model, tokenizer, Path(model_dir), data, dev, started, cpu_started, plan, scorer)


def fit(run: SpulRun, cfg: SpulConfig, *, progress: bool = True) -> dict[str, Any]:
    """One soft prompt on the run's data (``train_soft_prompt`` from ``initial_soft_prompt``)."""
    return train_soft_prompt(run.model, initial_soft_prompt(run.model, run.tokenizer, cfg), run.data, cfg, progress=progress,
                             scorer=run.epoch_scorer)


def write_artifact(run: SpulRun, cfg: SpulConfig, result: dict[str, Any], out: Path, *, progress: bool = True,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The before/after report of ``result``'s soft prompt, then the artifact (``extra``: more manifest
    keys), written atomically to ``out``; returns the manifest as written."""
    import torch

    from guard.artifacts import model_identity
    from guard.atomic import staged_dir, write_json
    from guard.interventions.spul import save_soft_prompt
    from guard.train.spul_report import generation_report

    data = run.data
    report = None
    if cfg.eval_generate and (data.forget_val or data.retain_val):
        t0 = time.perf_counter()
        report = generation_report(run.model, run.tokenizer, result["soft"], data.forget_val, data.retain_val,
                                   max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size, progress=progress)
        report["time_s"] = round(time.perf_counter() - t0, 1)
    if run.truth_ratio_plan is not None:
        from guard.train.spul_truth_ratio import truth_ratio_report

        extra = {**(extra or {}), "truth_ratio": truth_ratio_report(run.model, result["soft"].to(run.device),
                                                                     run.truth_ratio_plan)}
    if result.get("epoch_choice"):
        extra = {**(extra or {}), "epoch_choice": result["epoch_choice"]}
    summary = None
    if report:
        summary = {name: {k: v for k, v in report[name].items() if k != "items"} for name in ("forget", "retain") if name in report}
    manifest = {
        "created_at": utc_now(),
        "method": "SPUL (Bhaila et al., Soft Prompting for Unlearning in LLMs)",
        "base_model": model_identity(run.model_dir),
        "position": cfg.position,
        "policy": policy_stamp(run.policy_path),
        "data": data.sources,
        "hyperparameters": cfg.to_dict(),
        "metrics": {
            **loop_summary(result, result["best_score"]), "history": result["history"],
            "train_time_s": result["train_time_s"], "train_cpu_time_s": result["train_cpu_time_s"],
            "total_time_s": round(time.perf_counter() - run.started, 1),
            "total_cpu_time_s": round(time.process_time() - run.cpu_started, 1),
            "device": run.device, "threads": torch.get_num_threads(), "generation": summary,
        },
        **(extra or {}),
    }
    with staged_dir(Path(out)) as tmp:
        save_soft_prompt(tmp, result["soft"], manifest)
        if report is not None:
            write_json(tmp / EVAL_FILE, report)
    return json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))


def train_spul(policy_path: Path, out: Path, cfg: SpulConfig | None = None, *, model_name: str = "default",
               targets: Sequence[str] | None = None, retain: Sequence[SourceRef] | None = None,
               data_dir: Path | None = None, idk_file: Path | None = None, device: str = "auto",
               threads: int | None = None, progress: bool = True, loaded: tuple[Any, Any, Path] | None = None,
               search_w_forget: Sequence[float] | None = None) -> dict[str, Any]:
    """Train a soft prompt for the policy's targets and write the artifact to ``out``; returns its manifest.

    ``loaded`` = ``(model, tokenizer, model_dir)`` reuses a model already in memory (tests).
    ``search_w_forget``: one soft prompt per forget weight, the rule's choice written
    (``guard.train.spul_weight_search``)."""
    cfg = cfg or SpulConfig()
    if search_w_forget:
        from guard.train.spul_weight_search import check_search

        check_search(cfg, search_w_forget)  # before any model loads
    run = prepare_run(policy_path, cfg, model_name=model_name, targets=targets, retain=retain, data_dir=data_dir,
                      idk_file=idk_file, device=device, threads=threads, loaded=loaded, progress=progress)
    if not search_w_forget:
        return write_artifact(run, cfg, fit(run, cfg, progress=progress), out, progress=progress)
    from guard.train.spul_weight_search import search_w_forget as search

    result, chosen_cfg, record = search(run, cfg, search_w_forget, fit, progress=progress, say=log.info)
    return write_artifact(run, chosen_cfg, result, out, progress=progress, extra={"w_forget_search": record})
