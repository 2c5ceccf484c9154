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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from guard.atomic import staged_dir, write_json
from guard.errors import ConfigError

log = logging.getLogger(__name__)

KIND = "eco"
MANIFEST = "manifest.json"
VERSION = 1
DEFAULT_MODEL = "tofu-mini-target"


# ---------------------------------------------------------------------------------------------
# configuration


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
class QAItem:
    question: str
    answer: str
    target_id: str | None
    names: tuple[str, ...]
    source: str


@dataclass
class Prepared:
    """One QA pair, tokenised once: the rendered prompt, its clean embeddings and the answer ids."""

    item: QAItem
    rendered: Any
    embeds: torch.Tensor
    answer_ids: list[int]


# ---------------------------------------------------------------------------------------------
# data


def _rows_slice(text: str | None) -> slice | None:
    from guard.data.tofu import parse_slice

    return parse_slice(text) if text else None


def load_source_qa(source: Any, where: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a policy ``DataSource`` in ``tofu_qa`` format (JSON lines)."""
    if source.format != "tofu_qa":
        raise ConfigError(f"guard-train eco needs question/answer pairs (format tofu_qa); {source.path} is "
                          f"{source.format!r}", param=f"{where}.format")
    path = Path(source.path)
    if not path.exists():
        raise ConfigError(f"forget data {path} does not exist", param=f"{where}.path")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        text = fh.read()
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}", param=f"{where}.path") from None
    selected = rows[_rows_slice(source.rows)] if source.rows else rows
    try:
        return [(r["question"], r["answer"]) for r in selected]
    except (KeyError, TypeError):
        raise ConfigError(f"{path} rows need 'question' and 'answer' fields", param=f"{where}.path") from None


def forget_items(policy: Any, target_ids: Sequence[str] | None) -> tuple[list[QAItem], list[str]]:
    """The forget QA of the chosen targets (default: every target whose action is eco)."""
    chosen: list[tuple[int, Any]] = []
    if target_ids:
        known = {t.id: (i, t) for i, t in enumerate(policy.targets)}
        for tid in target_ids:
            if tid not in known:
                raise ConfigError(f"target {tid!r} is not in the policy (targets: {', '.join(known) or 'none'})", param="target")
            chosen.append(known[tid])
    else:
        chosen = [(i, t) for i, t in enumerate(policy.targets) if (t.action or policy.default_action) == "eco"]
        if not chosen:
            raise ConfigError("no target of the policy has action eco; set one, or name targets with --target ID",
                              param="targets")
    items: list[QAItem] = []
    for i, target in chosen:
        if not target.forget_data:
            raise ConfigError(f"target {target.id!r} has no forget_data: the search needs its forget QA",
                              param=f"targets.{i}.forget_data")
        for j, source in enumerate(target.forget_data):
            where = f"targets.{i}.forget_data.{j}"
            for q, a in load_source_qa(source, where):
                items.append(QAItem(q, a, target.id, target.all_names, f"{source.path}[{source.rows or ':'}]"))
    return items, [t.id for _, t in chosen]


def holdout_items(data_dir: Path, split: str, rows: str | None) -> list[QAItem]:
    from guard.data.tofu import load_qa

    return [QAItem(qa.question, qa.answer, None, (), f"tofu/{split}[{qa.index}]")
            for qa in load_qa(data_dir, split, _rows_slice(rows))]


def spread(items: list[Any], n: int | None) -> list[Any]:
    """At most ``n`` items, evenly spread over the list (keeps every target represented)."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# scoring and generation from embeddings (local transformers model)


def prepare(model: Any, tokenizer: Any, items: Sequence[QAItem], max_length: int = 512) -> list[Prepared]:
    from guard.engines.rendering import render_chat
    from guard.train.chat_data import IGNORE_INDEX, encode_qa

    emb = model.get_input_embeddings()
    out = []
    for item in items:
        rendered = render_chat(tokenizer, [{"role": "user", "content": item.question}])
        enc = encode_qa(tokenizer, item.question, item.answer, max_length)
        labels = enc["labels"].tolist()
        prompt_len = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
        answer = labels[prompt_len:]
        if not answer or IGNORE_INDEX in answer:
            raise ConfigError(f"QA pair {item.source} has no answer tokens within 512 tokens", param="forget_data")
        if enc["input_ids"][:prompt_len].tolist() != rendered.token_ids:
            raise RuntimeError("the chat rendering and the QA encoding disagree on the prompt tokens")
        with torch.no_grad():
            embeds = emb(torch.tensor([rendered.token_ids]))[0].detach().float().clone()
        out.append(Prepared(item, rendered, embeds, answer))
    return out


def answer_head(items: list[Prepared], n: int | None) -> list[Prepared]:
    """The items with their answers cut to the first ``n`` tokens (the surrogate's scope)."""
    if n is None:
        return items
    return [Prepared(p.item, p.rendered, p.embeds, p.answer_ids[:n]) for p in items]


@torch.no_grad()
def answer_logprobs(model: Any, prompts: Sequence[torch.Tensor], answers: Sequence[Sequence[int]],
                    batch_size: int = 8) -> list[float]:
    """Mean per-token log-prob of each answer after its prompt embeddings (teacher forcing, batched,
    right padding). Equals ``-mean(guard.interventions.scoring.answer_nll(...))`` item by item."""
    emb = model.get_input_embeddings()
    dtype = emb.weight.dtype
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        seqs = [torch.cat([prompts[i].to(dtype), emb(torch.tensor(list(answers[i])))], 0) for i in chunk]
        width = max(s.shape[0] for s in seqs)
        hidden = seqs[0].shape[1]
        batch = torch.zeros((len(seqs), width, hidden), dtype=dtype)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            batch[b, : s.shape[0]] = s
            mask[b, : s.shape[0]] = 1
        logits = model(inputs_embeds=batch, attention_mask=mask).logits.float()
        for b, i in enumerate(chunk):
            p, a = prompts[i].shape[0], len(answers[i])
            logp = torch.log_softmax(logits[b, p - 1: p - 1 + a], -1)
            out.append(float(logp.gather(1, torch.tensor(list(answers[i])).unsqueeze(1)).mean()))
    return out


def stop_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for special in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


@torch.no_grad()
def generate_from_embeds(model: Any, tokenizer: Any, prompts: Sequence[torch.Tensor], max_new_tokens: int,
                         batch_size: int = 8) -> list[str]:
    """Greedy answers from prompt embeddings (batched, left padding)."""
    dtype = model.get_input_embeddings().weight.dtype
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(p.shape[0] for p in chunk)
        batch = torch.zeros((len(chunk), width, chunk[0].shape[1]), dtype=dtype)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, p in enumerate(chunk):
            batch[b, width - p.shape[0]:] = p.to(dtype)
            mask[b, width - p.shape[0]:] = 1
        generated = model.generate(inputs_embeds=batch, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, temperature=None, top_p=None, top_k=None,
                                   eos_token_id=stop_ids(tokenizer), pad_token_id=pad)
        out.extend(tokenizer.decode(row, skip_special_tokens=True).strip() for row in generated)
    return out


def neutral_context(model: Any, tokenizer: Any) -> torch.Tensor:
    """Embeddings of a neutral chat prompt (the template with an empty user turn) that fluency is scored after."""
    from guard.engines.rendering import render_chat

    ids = render_chat(tokenizer, [{"role": "user", "content": ""}]).token_ids
    with torch.no_grad():
        return model.get_input_embeddings()(torch.tensor([ids]))[0].detach().float().clone()


def answer_perplexity(model: Any, tokenizer: Any, context: torch.Tensor, texts: Sequence[str],
                      batch_size: int = 8) -> list[float]:
    """Perplexity of each text as an assistant reply after a neutral prompt, under the clean model.

    Not conditioned on the question: the clean target model has memorised the forget answers, so
    conditioning on the question would score any *different* answer (the point of unlearning) as
    disfluent. Gibberish still scores orders of magnitude above a fluent reply. An empty text gets
    ``inf`` (an empty answer is not a fluent one).
    """
    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    keep = [i for i, x in enumerate(ids) if x]
    out = [float("inf")] * len(texts)
    if keep:
        lps = answer_logprobs(model, [context] * len(keep), [ids[i] for i in keep], batch_size)
        for i, lp in zip(keep, lps):
            out[i] = float(math.exp(-lp))
    return out


def fluency(model: Any, tokenizer: Any, context: torch.Tensor, texts: Sequence[str],
            batch_size: int = 8) -> dict[str, float]:
    """Fluency of ``texts``: ``ppl`` (geometric mean over the non-empty ones of their reply perplexity),
    ``entropy`` (mean n-gram entropy, RWKU's Flu) and ``empty`` (the fraction of empty answers: a
    corrupted prompt that makes the model end its turn at once has not produced an answer)."""
    from guard.eval.rwku_metrics import n_gram_entropy

    ppl = [p for p in answer_perplexity(model, tokenizer, context, texts, batch_size) if math.isfinite(p)]
    geo = math.exp(sum(math.log(p) for p in ppl) / len(ppl)) if ppl else float("inf")
    empty = sum(1 for t in texts if not t.strip()) / max(1, len(texts))
    return {"ppl": float(geo), "entropy": float(n_gram_entropy(list(texts))), "empty": float(empty)}


# ---------------------------------------------------------------------------------------------
# the search


class Searcher:
    """Holds the prepared data and evaluates the surrogate and the fluency at a parameter point."""

    def __init__(self, model: Any, tokenizer: Any, forget: list[Prepared], cfg: SearchConfig,
                 fluency_set: list[Prepared], progress: Callable[[str], None]) -> None:
        from guard.interventions.corruption import get_corruption

        self.model, self.tokenizer, self.forget, self.cfg = model, tokenizer, forget, cfg
        self.fluency_set = fluency_set
        self.hidden = int(model.get_input_embeddings().weight.shape[1])
        self.corruption = get_corruption(cfg.corruption, "corruption")
        self.special = set(getattr(tokenizer, "all_special_ids", ()))
        self.progress = progress
        self.evaluations = 0
        self.context = neutral_context(model, tokenizer)  # what every answer's fluency is scored after

    # parameter <-> log space
    def theta(self, u: Sequence[float]) -> dict[str, Any]:
        values: dict[str, Any] = {"sigma": self.cfg.sigma0, "k": self.cfg.k0}
        for name, x in zip(self.cfg.search, u):
            if name == "sigma":
                lo, hi = self.cfg.sigma_bounds
                values["sigma"] = float(min(max(math.exp(x), lo), hi))
            else:
                values["k"] = int(min(max(round(math.exp(x)), 1), self.hidden))
        return values

    def clip(self, u: list[float]) -> list[float]:
        out = []
        for name, x in zip(self.cfg.search, u):
            if name == "sigma":
                lo, hi = self.cfg.sigma_bounds
                out.append(min(max(x, math.log(lo)), math.log(hi)))
            else:
                out.append(min(max(x, 0.0), math.log(self.hidden)))
        return out

    def eco_config(self, theta: dict[str, Any]) -> Any:
        from guard.interventions.eco import EcoConfig

        return EcoConfig(self.cfg.corruption, theta["sigma"], theta["k"], self.cfg.select)

    def corrupted(self, items: Sequence[Prepared], theta: dict[str, Any]) -> list[torch.Tensor]:
        from guard.interventions.eco import corrupt_prompt

        config = self.eco_config(theta)
        # common random numbers: item i always draws from seed + i, so f is smooth in sigma
        return [corrupt_prompt(p.rendered, p.embeds, config, p.item.names, self.cfg.seed + i, self.special)[0]
                for i, p in enumerate(items)]

    def surrogate(self, theta: dict[str, Any]) -> float:
        self.evaluations += 1
        prompts = self.corrupted(self.forget, theta)
        values = answer_logprobs(self.model, prompts, [p.answer_ids for p in self.forget], self.cfg.batch_size)
        return sum(values) / len(values)

    def answers(self, theta: dict[str, Any]) -> list[str]:
        prompts = self.corrupted(self.fluency_set, theta)
        return generate_from_embeds(self.model, self.tokenizer, prompts, self.cfg.fluency_tokens, self.cfg.batch_size)

    def fluency(self, answers: Sequence[str]) -> dict[str, float]:
        return fluency(self.model, self.tokenizer, self.context, answers, self.cfg.batch_size)


def _fmt(theta: dict[str, Any]) -> str:
    parts = []
    if theta.get("sigma") is not None:
        parts.append(f"sigma={theta['sigma']:.4g}")
    if theta.get("k") is not None:
        parts.append(f"k={theta['k']}")
    return " ".join(parts) or "-"


def zeroth_order_search(s: Searcher, target_level: float, baseline_fluency: dict[str, float],
                        u0: list[float]) -> dict[str, Any]:
    """Minimise (f(theta) - r)^2 under the fluency constraint; returns the chosen point and the trace."""
    cfg = s.cfg
    bounds = {"max_ppl": baseline_fluency["ppl"] * cfg.max_ppl_ratio,
              "min_entropy": baseline_fluency["entropy"] * cfg.min_entropy_ratio,
              "max_empty": cfg.max_empty_frac}
    u = s.clip(list(u0))
    trace: list[dict[str, Any]] = []
    feasible_u: list[float] | None = None  # the last feasible iterate
    infeasible: list[list[float]] = []  # iterates that broke the fluency bound
    best: dict[str, Any] | None = None
    converged = False
    started = time.perf_counter()
    for it in range(cfg.iters):
        t0 = time.perf_counter()
        theta = s.theta(u)
        f = s.surrogate(theta)
        resid = f - target_level
        answers = s.answers(theta)
        flu = s.fluency(answers)
        feasible = (flu["ppl"] <= bounds["max_ppl"] and flu["entropy"] >= bounds["min_entropy"]
                    and flu.get("empty", 0.0) <= bounds["max_empty"])
        entry: dict[str, Any] = {"iter": it, **theta, "u": [round(x, 6) for x in u], "forget_logprob": f,
                                 "target_logprob": target_level, "residual": resid, "fluency": flu,
                                 "feasible": feasible, "example_answer": answers[0] if answers else ""}
        if feasible and (best is None or abs(resid) < abs(best["residual"])):
            best = {"theta": theta, "residual": resid, "forget_logprob": f, "fluency": flu, "answers": answers,
                    "iter": it}
        if feasible and abs(resid) <= cfg.tol:
            entry["action"] = "converged"
            converged = True
            entry["time_s"] = round(time.perf_counter() - t0, 2)
            trace.append(entry)
            s.progress(f"[{it + 1}/{cfg.iters}] {_fmt(theta)}  f={f:.4f}  target={target_level:.4f}  "
                       f"ppl={flu['ppl']:.1f}  H={flu['entropy']:.2f}  converged")
            break
        if not feasible:
            infeasible.append(list(u))
            # fluency violated: pull back halfway (log space) towards the last feasible point (or down)
            if feasible_u is not None:
                new_u = [(a + b) / 2 for a, b in zip(feasible_u, u)]
            else:
                new_u = [x - cfg.max_step for x in u]
            entry["action"] = "backtrack (fluency)"
        else:
            feasible_u = list(u)
            grads = []
            for j in range(len(u)):
                up, down = list(u), list(u)
                up[j] += cfg.mu
                down[j] -= cfg.mu
                f_up, f_down = s.surrogate(s.theta(up)), s.surrogate(s.theta(down))
                grads.append((f_up - f_down) / (2 * cfg.mu))
                entry.setdefault("finite_differences", []).append(
                    {"param": cfg.search[j], "f_plus": f_up, "f_minus": f_down, "df_du": grads[-1]})
            norm2 = sum(g * g for g in grads)
            if norm2 < 1e-12:
                # flat: the corruption does not move f at this scale; grow it by the largest step
                step = [cfg.max_step if resid > 0 else -cfg.max_step for _ in u]
                entry["action"] = "flat: step"
            else:
                # Levenberg-Marquardt on 0.5 * resid^2 (one residual): step = -resid * g / (|g|^2 + lambda)
                step = [-resid * g / (norm2 + cfg.damping) for g in grads]
                entry["action"] = "gauss-newton step"
            step = [max(-cfg.max_step, min(cfg.max_step, d)) for d in step]
            new_u = [a + d for a, d in zip(u, step)]
            # never step into (or past) a strength already found disfluent: bisect towards it instead
            beyond = [b for b in infeasible if all(n >= x for n, x in zip(new_u, b)) and any(x > a for x, a in zip(b, u))]
            if beyond:
                nearest = min(beyond, key=lambda b: sum((x - a) ** 2 for x, a in zip(b, u)))
                new_u = [(a + x) / 2 for a, x in zip(u, nearest)]
                entry["action"] += " (capped: bisect towards the nearest disfluent strength)"
            entry["step"] = [n - a for n, a in zip(new_u, u)]
        new_u = s.clip(new_u)
        entry["time_s"] = round(time.perf_counter() - t0, 2)
        trace.append(entry)
        s.progress(f"[{it + 1}/{cfg.iters}] {_fmt(theta)}  f={f:.4f}  target={target_level:.4f}  "
                   f"ppl={flu['ppl']:.1f}  H={flu['entropy']:.2f}  empty={flu['empty']:.2f}  {'ok' if feasible else 'NOT fluent'}  "
                   f"({entry['time_s']:.1f}s) -> {_fmt(s.theta(new_u))}")
        if new_u == u:
            entry["action"] += " (no change: at a bound)"
            break
        u = new_u
    return {"best": best, "trace": trace, "converged": converged, "bounds": bounds,
            "evaluations": s.evaluations, "time_s": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------------------------------------
# the command


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
    retain_model: str | None = None
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
    from guard.artifacts import model_identity
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

    retain_info = None
    if opts.retain_model:
        say(f"reference: scoring the forget QA on {opts.retain_model} (clean prompts)")
        r_model, r_tok, r_path = _load_model(opts.retain_model)
        r_prep = answer_head(prepare(r_model, r_tok, forget), cfg.surrogate_tokens)
        r_lp = answer_logprobs(r_model, [p.embeds for p in r_prep], [p.answer_ids for p in r_prep], bs)
        retain_info = {"model": opts.retain_model, "path": str(r_path), "forget_logprob": sum(r_lp) / len(r_lp)}
        del r_model
        say(f"reference: {opts.retain_model} forget log-prob {retain_info['forget_logprob']:.4f}/token")

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

    from guard.train.memorisation import rouge_l_recall

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
        "kind": KIND,
        "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": model_identity(model_path),
        "model": opts.model,
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
            "retain_reference": retain_info,
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eco",
        help="search ECO's corruption strength (zeroth-order) and write an artifact",
        description=(
            "Zeroth-order (finite-difference) search of ECO's corruption strength (sigma, optionally k) on a "
            "TOFU-style target model: the corrupted model's answer log-prob on the policy's forget QA is driven to "
            "its level on QA it never saw (TOFU holdout), under a fluency constraint. Writes OUT/manifest.json; "
            "use it with targets.N.params.artifact: OUT."),
    )
    p.add_argument("--policy", type=Path, required=True, help="policy YAML: targets with forget_data (format tofu_qa)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model searched on (default {DEFAULT_MODEL}; tests: tofu-micro-target)")
    p.add_argument("--data", type=Path, default=None, help="benchmark data folder (default ../shared/data or $GUARD_DATA_DIR)")
    p.add_argument("--target", action="append", default=[], help="target id to use (repeatable; default: every eco target)")
    p.add_argument("--holdout-split", default="holdout01", help="TOFU split of never-seen QA (default holdout01)")
    p.add_argument("--holdout-rows", default=None, help="rows of it, e.g. 0:20")
    p.add_argument("--max-forget", type=int, default=None, help="use at most N forget QA (spread over the targets)")
    p.add_argument("--max-holdout", type=int, default=None, help="use at most N holdout QA")
    p.add_argument("--retain-model", default=None, help="also score the forget QA on this model (e.g. tofu-mini-retain), for reference")
    s = p.add_argument_group("search")
    s.add_argument("--corruption", default="rand_noise_first_n", help="rand_noise_first_n | zero_out_top_k | flip_sign_top_k")
    s.add_argument("--search", default="sigma", help="parameters to search: sigma, k or sigma,k (top-k corruptions: k)")
    s.add_argument("--select", default="entity", help="token selection: entity | all_content (all_user: its older name)")
    s.add_argument("--sigma0", type=float, default=None, help="starting sigma (default: the embedding RMS)")
    s.add_argument("--k", dest="k0", type=int, default=None, help="k (starting value when searched)")
    s.add_argument("--iters", type=int, default=10)
    s.add_argument("--tol", type=float, default=0.02, help="|f - target| counted as matched (nats/token)")
    s.add_argument("--mu", type=float, default=0.15, help="finite-difference half-step in log space")
    s.add_argument("--max-step", type=float, default=1.0, help="largest change of log(theta) per iteration")
    s.add_argument("--max-ppl-ratio", type=float, default=3.0)
    s.add_argument("--min-entropy-ratio", type=float, default=0.75)
    s.add_argument("--max-empty-frac", type=float, default=0.25, help="largest fraction of empty corrupted answers")
    s.add_argument("--fluency-items", type=int, default=8)
    s.add_argument("--fluency-tokens", type=int, default=32)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--surrogate-tokens", type=int, default=8, metavar="N",
                   help="the surrogate scores the first N answer tokens (default 8; 0 = the whole answer, "
                        "which saturates on memorised answers: docs/eco.md)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    cfg = SearchConfig(corruption=args.corruption, search=tuple(x.strip() for x in args.search.split(",") if x.strip()),
                       select=args.select, sigma0=args.sigma0, k0=args.k0, iters=args.iters, mu=args.mu,
                       max_step=args.max_step, tol=args.tol, max_ppl_ratio=args.max_ppl_ratio,
                       min_entropy_ratio=args.min_entropy_ratio, max_empty_frac=args.max_empty_frac,
                       fluency_items=args.fluency_items,
                       fluency_tokens=args.fluency_tokens, batch_size=args.batch_size, seed=args.seed,
                       surrogate_tokens=args.surrogate_tokens or None)
    if args.surrogate_tokens < 0:
        raise ConfigError("--surrogate-tokens must be >= 0 (0 = the whole answer)", param="surrogate_tokens")
    for name in ("iters", "fluency_items", "fluency_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1", param=name)
    opts = EcoTrainOptions(policy=args.policy, out=args.out, model=args.model, data_dir=args.data, targets=args.target,
                           holdout_split=args.holdout_split, holdout_rows=args.holdout_rows, max_forget=args.max_forget,
                           max_holdout=args.max_holdout, retain_model=args.retain_model, threads=args.threads,
                           progress=not args.quiet)
    train_eco(opts, cfg)
    return 0
