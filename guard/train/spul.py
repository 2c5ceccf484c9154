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
  the ``*_perturbed.json`` files beside the forget source (TOFU layout);
* a held-out split (``--val-fraction``, default 0.2, of both sets) drives early stopping (best
  held-out objective, ``--patience`` epochs) and the report.

Output (``--out DIR``, written atomically): ``soft_prompt.safetensors`` + ``manifest.json`` (base
model identity with its embedding hash, where the vectors go, data, hyperparameters, losses per
epoch, timings) + ``eval.json`` (greedy answers on the held-out questions with and without the soft
prompt: refusal share, changed answers, ROUGE-L). Runs on a GPU when one is visible
(``--device auto``), else on the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from guard.devices import resolve_device
from guard.errors import ConfigError
from guard.train.spul_objective import Example, Weights

log = logging.getLogger(__name__)

DEFAULT_INIT_TEXT = "I do not know anything about this. I don't know. I have no information on that."
EVAL_FILE = "eval.json"

_REFUSAL_RE = re.compile(
    r"\bi (really )?(do not|don't|dont) know\b|\bnot (entirely |quite )?(sure|certain|aware|familiar|informed|privy|"
    r"well-versed|knowledgeable|equipped|acquainted|the (best|right))\b|\bno (idea|clue|information|knowledge|data|"
    r"insight|familiarity|enlightenment)\b|\b(do not|don't|doesn't|does not|didn't) (have|possess|hold|seem to have|cover|"
    r"include|contain|extend)\b|\b(can't|cannot|can not|unable to|not able to) (provide|help|answer|share|say|shed|access|"
    r"find|recall)\b|\b(beyond|outside|not within|out of|not in) my\b|\bi'?m sorry\b|\bi apologi[sz]e\b|"
    r"\bunknown to me\b|\bmystery to me\b|\bi (haven't|have not) (learned|been|encountered|the faintest)\b|\bnot something i\b|"
    r"\bdrawing a blank\b|\bblank on\b|\bat a (loss|disadvantage)\b|\bi (lack|am lacking|'m lacking|'m missing)\b|"
    r"\b(unaware|clueless|stumped)\b|\bi'?m in the dark\b|\b(lacking|missing) information\b|\bprogrammed to know\b|"
    r"\bnot briefed\b|\byet to (learn|be informed)\b|\bmust decline\b|"
    r"\bneed to look (that |it )?up\b|\bcome up short\b|\bnot been (educated|trained|briefed)\b|"
    r"\bmy (resources|databases?|programming|understanding|capabilities)\b|\bin my training\b|\bblind spot\b|"
    r"\buncharted territory\b",
    re.IGNORECASE)


def is_refusal(text: str) -> bool:
    """Heuristic: does ``text`` decline to answer or say it does not know? It recognises every line of
    TOFU's ``idontknow.jsonl`` and common refusals; it is a measurement aid, not a classifier."""
    return bool(_REFUSAL_RE.search(text.replace("\u2019", "'")))


@dataclass
class SpulConfig:
    n_tokens: int = 20
    position: str = "user"
    init: str = "text"  # text | vocab
    init_text: str = DEFAULT_INIT_TEXT
    forget_target: str = "idk"  # idk | perturbed
    weights: Weights = field(default_factory=Weights)
    epochs: int = 6
    lr: float = 3e-2
    batch_size: int = 8  # per step: half forget, half retain
    max_grad_norm: float = 1.0
    val_fraction: float = 0.2
    patience: int = 2
    min_delta: float = 1e-3
    max_retain: int | None = 40
    max_length: int = 192
    seed: int = 0
    system_prompt: str | None = None
    eval_generate: bool = True
    eval_max_new_tokens: int = 48
    eval_batch_size: int = 8
    reference_cache_mb: int = 1024  # cache the frozen model's retain log-probs (fp16) up to this size

    def validate(self) -> None:
        from guard.interventions.spul import POSITIONS

        checks = [
            (self.n_tokens >= 1, "n_tokens", "--n-tokens must be >= 1"),
            (self.position in POSITIONS, "position", f"--position must be one of {', '.join(POSITIONS)}"),
            (self.init in ("text", "vocab"), "init", "--init must be 'text' or 'vocab'"),
            (self.forget_target in ("idk", "perturbed"), "forget_target", "--forget-target must be 'idk' or 'perturbed'"),
            (self.epochs >= 1, "epochs", "--epochs must be >= 1"),
            (self.lr > 0, "lr", "--lr must be > 0"),
            (self.batch_size >= 2, "batch_size", "--batch-size must be >= 2 (half forget, half retain)"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction", "--val-fraction must be in [0, 1)"),
            (self.patience >= 1, "patience", "--patience must be >= 1"),
            (self.max_retain is None or self.max_retain >= 1, "max_retain", "--max-retain must be >= 1"),
            (self.max_length >= 32, "max_length", "--max-length must be >= 32"),
            (min(self.weights.forget, self.weights.retain, self.weights.kl) >= 0, "weights", "loss weights must be >= 0"),
            (self.weights.forget > 0, "w_forget", "--w-forget must be > 0 (it is what makes the model forget)"),
            (self.weights.first_token > 0, "w_first_token", "--w-first-token must be > 0"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise ConfigError(message, param=param)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights"] = self.weights.to_dict()
        return out


# --------------------------------------------------------------------------------------------
# data


@dataclass
class QAItem:
    question: str
    answer: str
    source: str
    row: int


@dataclass
class SpulData:
    forget_train: list[Example]
    forget_val: list[Example]
    retain_train: list[Example]
    retain_val: list[Example]
    sources: dict[str, Any]


def _read_records(path: Path, param: str) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"data file {path} does not exist", param=param) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}", param=param) from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise ConfigError(f"{path} is neither JSON Lines nor a JSON array: {exc}", param=param) from None
    if not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{path}: every record must be an object with 'question' and 'answer'", param=param)
    return records


def load_qa_source(source: Any, param: str) -> list[QAItem]:
    """Question/answer pairs of a policy ``DataSource`` (``format: tofu_qa``), sliced by ``rows``."""
    from guard.data.tofu import parse_slice

    if source.format != "tofu_qa":
        raise ConfigError(f"SPUL trains on question/answer data; {source.path} has format {source.format!r} "
                          f"(use a 'tofu_qa' source: JSON Lines of {{question, answer}})", param=f"{param}.format")
    records = _read_records(Path(source.path), f"{param}.path")
    indices = list(range(len(records)))[parse_slice(source.rows)] if source.rows else list(range(len(records)))
    out = []
    for i in indices:
        rec = records[i]
        if not isinstance(rec.get("question"), str) or not isinstance(rec.get("answer"), str):
            raise ConfigError(f"{source.path} row {i} lacks string 'question'/'answer' fields", param=f"{param}.path")
        out.append(QAItem(rec["question"], rec["answer"], str(source.path), i))
    if not out:
        raise ConfigError(f"{source.path} rows {source.rows!r} select no QA pairs", param=f"{param}.rows")
    return out


def load_idk_lines(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"no 'I don't know' answers at {path}; pass --idk-file or --data pointing at shared/data",
                          param="idk_file") from None
    if not lines:
        raise ConfigError(f"{path} is empty", param="idk_file")
    return lines


def perturbed_answers(forget: Sequence[QAItem], data_dir: Path | None) -> dict[str, list[str]]:
    """Perturbed answers by question, from ``*_perturbed.json`` beside the sources (and in the TOFU dir)."""
    folders = {Path(item.source).parent for item in forget}
    if data_dir is not None:
        tofu = Path(data_dir) / "tofu"
        folders.add(tofu if tofu.is_dir() else Path(data_dir))
    wanted = {item.question for item in forget}
    found: dict[str, list[str]] = {}
    for folder in sorted(folders):
        for path in sorted(folder.glob("*_perturbed.json")):
            for rec in _read_records(path, "forget_target"):
                q, pert = rec.get("question"), rec.get("perturbed_answer")
                if q in wanted and q not in found and isinstance(pert, list) and pert:
                    found[q] = [str(p) for p in pert]
    missing = [q for q in wanted if q not in found]
    if missing:
        raise ConfigError(f"--forget-target perturbed: no perturbed answers for {len(missing)} of {len(wanted)} forget "
                          f"questions (e.g. {missing[0]!r}) in *_perturbed.json beside the forget data; use --forget-target idk",
                          param="forget_target")
    return found


def _split(items: list[Any], fraction: float, rng: random.Random) -> tuple[list[Any], list[Any]]:
    items = list(items)
    rng.shuffle(items)
    n_val = int(round(len(items) * fraction)) if fraction > 0 else 0
    if fraction > 0 and len(items) >= 2:
        n_val = min(max(n_val, 1), len(items) - 1)
    return items[n_val:], items[:n_val]


def select_targets(policy: Any, wanted: Sequence[str] | None) -> list[tuple[int, Any]]:
    indexed = list(enumerate(policy.targets))
    if wanted:
        known = {t.id for t in policy.targets}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ConfigError(f"--target {unknown[0]!r} is not in the policy (targets: {', '.join(sorted(known)) or 'none'})",
                              param="target")
        indexed = [(i, t) for i, t in indexed if t.id in wanted]
    chosen = [(i, t) for i, t in indexed if t.forget_data]
    if not chosen:
        raise ConfigError("no selected target has forget_data: SPUL needs the forget QA to train on "
                          "(add forget_data: [{path: .../full.json, format: tofu_qa, rows: '3960:4000'}])", param="targets")
    return chosen


def collect_data(policy: Any, tokenizer: Any, cfg: SpulConfig, *, targets: Sequence[str] | None = None,
                 retain: Sequence[Any] | None = None, data_dir: Path | None = None,
                 idk_file: Path | None = None) -> SpulData:
    """Encode the forget and retain QA (split into train/held-out) for ``tokenizer``."""
    rng = random.Random(cfg.seed)
    chosen = select_targets(policy, targets)
    forget: list[QAItem] = []
    retain_items: list[QAItem] = []
    sources: dict[str, Any] = {"targets": [t.id for _, t in chosen], "forget": [], "retain": []}
    for i, target in chosen:
        for j, src in enumerate(target.forget_data):
            items = load_qa_source(src, f"targets.{i}.forget_data.{j}")
            forget += items
            sources["forget"].append({"target": target.id, "path": str(src.path), "rows": src.rows, "n": len(items)})
    retain_sources = list(retain) if retain else [(f"targets.{i}.keep_data.{j}", src)
                                                 for i, t in chosen for j, src in enumerate(t.keep_data)]
    for where, src in retain_sources:
        items = load_qa_source(src, where)
        retain_items += items
        sources["retain"].append({"path": str(src.path), "rows": src.rows, "n": len(items)})
    # one example per distinct question
    seen: set[str] = set()
    forget = [it for it in forget if not (it.question in seen or seen.add(it.question))]
    forget_questions = set(seen)
    retain_items = [it for it in retain_items if it.question not in forget_questions]
    seen_r: set[str] = set()
    retain_items = [it for it in retain_items if not (it.question in seen_r or seen_r.add(it.question))]
    needs_retain = cfg.weights.retain > 0 or cfg.weights.kl > 0
    if needs_retain and not retain_items:
        raise ConfigError("no retain QA: the selected targets have no keep_data; add keep_data to the policy, pass "
                          "--retain PATH, or train without the retain terms (--w-retain 0 --w-kl 0)", param="keep_data")
    if cfg.max_retain is not None and len(retain_items) > cfg.max_retain:
        retain_items = sorted(rng.sample(retain_items, cfg.max_retain), key=lambda it: (it.source, it.row))
    sources["n_forget"], sources["n_retain"] = len(forget), len(retain_items)

    if cfg.forget_target == "idk":
        idk_path = Path(idk_file) if idk_file else (Path(data_dir) if data_dir else _default_data()) / "tofu" / "idontknow.jsonl"
        lines = load_idk_lines(idk_path)
        targets_text = {it.question: rng.choice(lines) for it in forget}
        sources["idk_file"] = str(idk_path)
    else:
        pert = perturbed_answers(forget, data_dir or _default_data())
        targets_text = {it.question: rng.choice(pert[it.question]) for it in forget}
    sources["forget_target"] = cfg.forget_target

    def encode(item: QAItem, answer: str, kind: str) -> Example:
        return encode_example_checked(tokenizer, item, answer, cfg, kind)

    f_train, f_val = _split(forget, cfg.val_fraction, rng)
    r_train, r_val = _split(retain_items, cfg.val_fraction, rng)
    data = SpulData(
        forget_train=[encode(it, targets_text[it.question], "forget") for it in f_train],
        forget_val=[encode(it, targets_text[it.question], "forget") for it in f_val],
        retain_train=[encode(it, it.answer, "retain") for it in r_train],
        retain_val=[encode(it, it.answer, "retain") for it in r_val],
        sources=sources,
    )
    sources["held_out"] = {"forget": [[e.meta["source"], e.meta["row"]] for e in data.forget_val],
                           "retain": [[e.meta["source"], e.meta["row"]] for e in data.retain_val]}
    return data


def encode_example_checked(tokenizer: Any, item: QAItem, answer: str, cfg: SpulConfig, kind: str) -> Example:
    from guard.train.spul_objective import encode_example

    try:
        return encode_example(tokenizer, item.question, answer, position=cfg.position, max_length=cfg.max_length,
                              gold=item.answer, system_prompt=cfg.system_prompt, kind=kind, source=item.source, row=item.row)
    except ValueError as exc:
        raise ConfigError(f"{item.source} row {item.row}: {exc}", param="max_length") from None


def _default_data() -> Path:
    from guard.paths import default_data_dir

    return default_data_dir()


# --------------------------------------------------------------------------------------------
# model


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


def stop_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for special in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(ids)


# --------------------------------------------------------------------------------------------
# training


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)


def train_soft_prompt(model: Any, init, data: SpulData, cfg: SpulConfig, *, progress: bool = True) -> dict[str, Any]:
    """Optimise the soft prompt; returns ``{"soft": best [n, H] (CPU), "history": [...], ...}``.

    Each step takes ``batch_size/2`` forget and ``batch_size/2`` retain examples (the smaller set
    is cycled). After every epoch the held-out objective is measured; the best soft prompt is kept
    and training stops after ``patience`` epochs without an improvement of ``min_delta``. Without
    a held-out set, the training objective of the epoch is used instead.
    """
    import torch

    from guard.train.finetune import _supports_logits_to_keep
    from guard.train.spul_objective import evaluate, reference_logprobs, spul_losses

    freeze(model)
    device = next(model.parameters()).device
    keep_ok = _supports_logits_to_keep(model)
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
    started = time.perf_counter()
    cpu_started = time.process_time()
    # the KL's fixed side, computed once (it does not depend on the soft prompt) unless too large
    reference = None
    if n_r and w.kl:
        size = sum(len(ex.answer_ids) for ex in data.retain_train) * model.get_input_embeddings().weight.shape[0] * 2
        if size <= cfg.reference_cache_mb * 2**20:
            reference = reference_logprobs(model, data.retain_train, batch_size=cfg.batch_size, keep_ok=keep_ok)

    def held_out(vec) -> dict[str, float]:
        return evaluate(model, vec, data.forget_val, data.retain_val, w, batch_size=cfg.batch_size, keep_ok=keep_ok)

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
    initial = held_out(soft.detach()) if has_val else None
    best_score = initial["total"] if initial else math.inf
    best = soft.detach().clone()
    best_epoch = 0
    bad_epochs = 0
    stopped_early = False
    bar = _progress(steps * cfg.epochs, "spul", progress)
    try:
        for epoch in range(1, cfg.epochs + 1):
            f_order = cycle(data.forget_train, steps * half_f)
            r_order = cycle(data.retain_train, steps * half_r) if n_r else []
            sums = {"total": 0.0, "forget_ce": 0.0, "retain_ce": 0.0, "retain_kl": 0.0}
            for step in range(steps):
                fb = f_order[step * half_f:(step + 1) * half_f]
                rb = r_order[step * half_r:(step + 1) * half_r] if n_r else []
                parts = spul_losses(model, soft, fb, rb, w, keep_ok=keep_ok, reference=reference)
                optimizer.zero_grad(set_to_none=True)
                parts["total"].backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([soft], cfg.max_grad_norm)
                optimizer.step()
                for k in sums:
                    sums[k] += float(parts[k].detach())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{float(parts['total'].detach()):.3f}",
                                forget=f"{float(parts['forget_ce'].detach()):.3f}", kl=f"{float(parts['retain_kl'].detach()):.3f}")
            train = {k: v / steps for k, v in sums.items()}
            val = held_out(soft.detach()) if has_val else None
            score = val["total"] if val else train["total"]
            record = {"epoch": epoch, "train": train, "val": val, "elapsed_s": round(time.perf_counter() - started, 1)}
            history.append(record)
            log.info("spul epoch %d: train %.4f (forget %.4f, retain %.4f, kl %.4f)%s", epoch, train["total"],
                     train["forget_ce"], train["retain_ce"], train["retain_kl"],
                     f"; held-out {val['total']:.4f} (forget {val['forget_ce']:.4f}, retain {val['retain_ce']:.4f}, "
                     f"kl {val['retain_kl']:.4f})" if val else "")
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
    return {"soft": best.cpu(), "history": history, "initial_val": initial, "best_epoch": best_epoch,
            "best_score": best_score, "stopped_early": stopped_early, "steps_per_epoch": steps,
            "train_time_s": round(time.perf_counter() - started, 1),
            "train_cpu_time_s": round(time.process_time() - cpu_started, 1)}


# --------------------------------------------------------------------------------------------
# generation report


def generate_answers(model: Any, tokenizer: Any, examples: Sequence[Example], soft, *, max_new_tokens: int,
                     batch_size: int = 8, progress: bool = False) -> list[str]:
    """Greedy answers to the examples' prompts, with ``soft`` inserted (``None``: the plain prompt).
    Batched with left padding; the prompt is given as embeddings either way."""
    import torch

    from guard.interventions.spul import insert_soft_prompt
    from guard.train.chat_data import pad_token_id

    device = next(model.parameters()).device
    emb_layer = model.get_input_embeddings()
    pad = pad_token_id(tokenizer)
    eos = stop_ids(tokenizer)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].prompt_ids))
    out: dict[int, str] = {}
    bar = _progress(len(order), "generate", progress)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                rows = []
                for i in idx:
                    e = emb_layer(torch.tensor(examples[i].prompt_ids, device=device))
                    rows.append(insert_soft_prompt(e, examples[i].insert_at, soft.to(device)) if soft is not None else e)
                width = max(r.shape[0] for r in rows)
                embeds = torch.stack([torch.cat([torch.zeros(width - r.shape[0], r.shape[1], device=device), r]) for r in rows])
                mask = torch.stack([torch.cat([torch.zeros(width - r.shape[0], dtype=torch.long, device=device),
                                               torch.ones(r.shape[0], dtype=torch.long, device=device)]) for r in rows])
                gen = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     pad_token_id=pad, eos_token_id=eos)
                for i, row in zip(idx, gen):
                    out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
                bar.update(len(idx))
    finally:
        bar.close()
    return [out[i] for i in range(len(examples))]


def generation_report(model: Any, tokenizer: Any, soft, forget: Sequence[Example], retain: Sequence[Example], *,
                      max_new_tokens: int = 48, batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Before (plain prompt) vs after (soft prompt forced on) on forget and retain questions.

    Per set: ``refusal_before/after`` (share of answers that decline or say "I don't know",
    ``is_refusal``), ``changed`` (share of answers that differ from the unguarded one),
    ``rouge_l_vs_unguarded`` (ROUGE-L recall of the soft-prompted answer against the unguarded
    answer; 1.0 = unchanged), ``rouge_l_gold_before/after`` (against the dataset answer)."""
    from guard.train.memorisation import rouge_l_recall

    report: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    for name, items in (("forget", forget), ("retain", retain)):
        if not items:
            continue
        before = generate_answers(model, tokenizer, items, None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  progress=progress)
        after = generate_answers(model, tokenizer, items, soft, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 progress=progress)
        rows = []
        for ex, b, a in zip(items, before, after):
            rows.append({"question": ex.question, "gold": ex.gold, "before": b, "after": a,
                         "refusal_before": is_refusal(b), "refusal_after": is_refusal(a), "changed": a != b,
                         "rouge_l_vs_unguarded": rouge_l_recall(a, b) if b else float(a == b),
                         "rouge_l_gold_before": rouge_l_recall(b, ex.gold), "rouge_l_gold_after": rouge_l_recall(a, ex.gold)})
        n = len(rows)
        summary = {key: sum(float(r[key]) for r in rows) / n
                   for key in ("refusal_before", "refusal_after", "changed", "rouge_l_vs_unguarded",
                               "rouge_l_gold_before", "rouge_l_gold_after")}
        report[name] = {"n": n, **summary, "items": rows}
    return report


# --------------------------------------------------------------------------------------------
# the whole run


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_spul(policy_path: Path, out: Path, cfg: SpulConfig | None = None, *, model_name: str = "default",
               targets: Sequence[str] | None = None, retain: Sequence[Any] | None = None,
               data_dir: Path | None = None, idk_file: Path | None = None, device: str = "auto",
               threads: int | None = None, progress: bool = True, loaded: tuple[Any, Any, Path] | None = None) -> dict[str, Any]:
    """Train a soft prompt for the policy's targets and write the artifact to ``out``; returns its manifest.

    ``loaded`` = ``(model, tokenizer, model_dir)`` reuses a model already in memory (tests)."""
    import torch

    from guard.artifacts import model_identity
    from guard.atomic import staged_dir, write_json
    from guard.interventions.spul import save_soft_prompt
    from guard.policy import load_policy

    cfg = cfg or SpulConfig()
    cfg.validate()
    policy_path = Path(policy_path)
    policy = load_policy(policy_path)
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
        # the data first: a bad policy or data file fails before the model loads
        data = collect_data(policy, tokenizer, cfg, targets=targets, retain=retain, data_dir=data_dir, idk_file=idk_file)
        model = load_frozen_model(model_dir, dev)
    else:
        model, tokenizer, model_dir = loaded
        dev = str(next(model.parameters()).device)
        data = collect_data(policy, tokenizer, cfg, targets=targets, retain=retain, data_dir=data_dir, idk_file=idk_file)
    freeze(model)
    identity = model_identity(model_dir)
    log.info("spul: %d forget QA (%d held out), %d retain QA (%d held out); %d soft tokens at '%s' on %s (%s), %d threads",
             len(data.forget_train) + len(data.forget_val), len(data.forget_val), len(data.retain_train) + len(data.retain_val),
             len(data.retain_val), cfg.n_tokens, cfg.position, identity["name"], dev, torch.get_num_threads())
    init = initial_soft_prompt(model, tokenizer, cfg)
    result = train_soft_prompt(model, init, data, cfg, progress=progress)
    report = None
    if cfg.eval_generate and (data.forget_val or data.retain_val):
        t0 = time.perf_counter()
        report = generation_report(model, tokenizer, result["soft"], data.forget_val, data.retain_val,
                                   max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size, progress=progress)
        report["time_s"] = round(time.perf_counter() - t0, 1)
    summary = None
    if report:
        summary = {name: {k: v for k, v in report[name].items() if k != "items"} for name in ("forget", "retain") if name in report}
    manifest = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": "SPUL (Bhaila et al., Soft Prompting for Unlearning in LLMs)",
        "base_model": identity,
        "position": cfg.position,
        "policy": {"path": str(policy_path.resolve()), "sha256": _sha256_file(policy_path)},
        "data": data.sources,
        "hyperparameters": cfg.to_dict(),
        "metrics": {
            "initial_val": result["initial_val"], "best_val": result["best_score"], "best_epoch": result["best_epoch"],
            "epochs_run": len(result["history"]), "stopped_early": result["stopped_early"],
            "steps_per_epoch": result["steps_per_epoch"], "history": result["history"],
            "train_time_s": result["train_time_s"], "train_cpu_time_s": result["train_cpu_time_s"],
            "total_time_s": round(time.perf_counter() - started, 1),
            "total_cpu_time_s": round(time.process_time() - cpu_started, 1),
            "device": dev, "threads": torch.get_num_threads(), "generation": summary,
        },
    }
    with staged_dir(Path(out)) as tmp:
        save_soft_prompt(tmp, result["soft"], manifest)
        if report is not None:
            write_json(tmp / EVAL_FILE, report)
    return json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "spul", help="train a soft prompt (SPUL) that makes the served model unlearn a policy's targets",
        description=("Learn n soft-prompt vectors with the model frozen: CE towards 'I don't know' (or perturbed) "
                     "answers on the targets' forget_data, CE + KL-to-the-frozen-model on their keep_data. "
                     "Writes DIR/soft_prompt.safetensors + manifest.json; point a target's params.artifact at DIR "
                     "with action: spul. Uses a GPU when one is visible."))
    p.add_argument("--policy", type=Path, required=True, help="policy YAML whose targets' forget_data/keep_data to use")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--model", default="default", help="the served model: 'default', a cached name (tofu-mini-target), a folder")
    p.add_argument("--target", action="append", default=None, help="train for this target id only (repeatable; default all)")
    p.add_argument("--retain", type=Path, default=None, help="retain QA file (tofu_qa) instead of the targets' keep_data")
    p.add_argument("--retain-rows", default=None, help="rows of --retain, e.g. 0:400")
    p.add_argument("--data", type=Path, default=None, help="benchmark data folder (default ../shared/data or $GUARD_DATA_DIR)")
    p.add_argument("--idk-file", type=Path, default=None, help="'I don't know' answers, one per line (default DATA/tofu/idontknow.jsonl)")
    m = p.add_argument_group("method")
    m.add_argument("--n-tokens", type=int, default=20, help="soft-prompt length (default 20)")
    m.add_argument("--position", choices=("user", "assistant"), default="user",
                   help="where the vectors go: before the last user message's content (default) or after the assistant header")
    m.add_argument("--forget-target", choices=("idk", "perturbed"), default="idk", help="what forget questions are trained towards")
    m.add_argument("--init", choices=("text", "vocab"), default="text", help="start from the embeddings of --init-text or random tokens")
    m.add_argument("--init-text", default=DEFAULT_INIT_TEXT)
    m.add_argument("--w-forget", type=float, default=1.0, help="weight of the forget CE (default 1)")
    m.add_argument("--w-retain", type=float, default=1.0, help="weight of the retain CE (default 1)")
    m.add_argument("--w-kl", type=float, default=1.0, help="weight of the retain KL to the frozen model (default 1)")
    m.add_argument("--w-first-token", type=float, default=1.0,
                   help="weight of each retain answer's first token in the retain CE and KL (default 1; see docs/spul.md)")
    m.add_argument("--system-prompt", default=None, help="system message used in training prompts (default: the template's)")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=6, help="at most this many epochs (default 6)")
    t.add_argument("--lr", type=float, default=3e-2, help="AdamW learning rate (default 3e-2)")
    t.add_argument("--batch-size", type=int, default=8, help="examples per step, half forget, half retain (default 8)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of forget and retain QA (default 0.2)")
    t.add_argument("--patience", type=int, default=2, help="stop after this many epochs without held-out improvement")
    t.add_argument("--max-retain", type=int, default=40, help="use at most this many retain QA (default 40; 0 = all)")
    t.add_argument("--max-length", type=int, default=192)
    t.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto (GPU if visible, default), cpu, cuda or cuda:N")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--no-eval", action="store_true", help="skip the before/after generation report on held-out questions")
    r.add_argument("--eval-max-new-tokens", type=int, default=48)
    r.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from guard.policy import DataSource

    if args.retain_rows and not args.retain:
        raise ConfigError("--retain-rows needs --retain", param="retain_rows")
    retain = None
    if args.retain:
        try:
            retain = [("--retain", DataSource(path=args.retain.resolve(), format="tofu_qa", rows=args.retain_rows))]
        except ValueError as exc:
            raise ConfigError(f"--retain-rows: {exc}", param="retain_rows") from None
    cfg = SpulConfig(
        n_tokens=args.n_tokens, position=args.position, init=args.init, init_text=args.init_text,
        forget_target=args.forget_target, weights=Weights(args.w_forget, args.w_retain, args.w_kl, args.w_first_token),
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, val_fraction=args.val_fraction,
        patience=args.patience, max_retain=args.max_retain or None, max_length=args.max_length, seed=args.seed,
        system_prompt=args.system_prompt, eval_generate=not args.no_eval, eval_max_new_tokens=args.eval_max_new_tokens)
    manifest = train_spul(args.policy, args.out, cfg, model_name=args.model, targets=args.target, retain=retain,
                          data_dir=args.data, idk_file=args.idk_file, device=args.device, threads=args.threads,
                          progress=not args.no_progress)
    metrics = manifest["metrics"]
    print(json.dumps({"out": str(args.out), "base_model": manifest["base_model"]["name"],
                      "n_tokens": manifest["n_tokens"], "position": manifest["position"],
                      "initial_val": (metrics["initial_val"] or {}).get("total"), "best_val": metrics["best_val"],
                      "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                      "train_time_s": metrics["train_time_s"], "train_cpu_time_s": metrics["train_cpu_time_s"],
                      "total_time_s": metrics["total_time_s"],
                      "device": metrics["device"], "generation": metrics["generation"]}, indent=2))
    return 0


# --------------------------------------------------------------------------------------------
# before/after report on chosen rows (for documentation): python -m guard.train.spul report ...


def report_rows(artifact: Path, model_name: str, forget: Sequence[QAItem], retain: Sequence[QAItem], *,
                device: str = "auto", max_new_tokens: int = 48, progress: bool = True) -> dict[str, Any]:
    """``generation_report`` of a trained soft prompt on explicit forget/retain QA (refuses a soft
    prompt trained for another model, like the guard does)."""
    from transformers import AutoTokenizer

    from guard.artifacts import check_identity
    from guard.interventions.spul import RETRAIN, load_soft_prompt
    from guard.models import resolve_model

    model_dir = Path(resolve_model(model_name))
    soft = load_soft_prompt(artifact)
    check_identity(soft.manifest, model_dir, artifact=f"soft prompt {artifact}", retrain=RETRAIN)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg = SpulConfig(position=soft.position, system_prompt=(soft.manifest.get("hyperparameters") or {}).get("system_prompt"))
    f = [encode_example_checked(tokenizer, it, it.answer, cfg, "forget") for it in forget]
    r = [encode_example_checked(tokenizer, it, it.answer, cfg, "retain") for it in retain]
    model = load_frozen_model(model_dir, resolve_device(device, label="--device"))
    report = generation_report(model, tokenizer, soft.vectors, f, r, max_new_tokens=max_new_tokens, progress=progress)
    report["model"] = model_dir.name
    report["artifact"] = str(artifact)
    return report


def _report_main(argv: Sequence[str] | None = None) -> int:
    from guard.policy import DataSource

    p = argparse.ArgumentParser(prog="python -m guard.train.spul report",
                                description="before/after greedy answers of a soft prompt on chosen TOFU rows")
    p.add_argument("command", choices=["report"])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--file", type=Path, default=None, help="tofu_qa file (default DATA/tofu/full.json)")
    p.add_argument("--forget-rows", action="append", required=True, help="rows of --file, e.g. 3960:3964 (repeatable)")
    p.add_argument("--retain-rows", action="append", required=True)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, default=None, help="write the full report (JSON) here")
    args = p.parse_args(argv)
    file = (args.file or _default_data() / "tofu" / "full.json").resolve()

    def items(slices: Sequence[str], where: str) -> list[QAItem]:
        return [it for s in slices for it in load_qa_source(DataSource(path=file, format="tofu_qa", rows=s), where)]

    report = report_rows(args.artifact, args.model, items(args.forget_rows, "forget_rows"),
                         items(args.retain_rows, "retain_rows"), max_new_tokens=args.max_new_tokens)
    if args.out:
        from guard.atomic import write_json

        write_json(args.out, report)
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "items"} if isinstance(v, dict) else v)
                      for k, v in report.items()}, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(_report_main())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
