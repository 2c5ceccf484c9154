"""``guard-train uld``: train the ULD assistant for a policy's targets.

Ji et al. (NeurIPS 2024) reverse the usual unlearning objectives: the *assistant* learns to
**remember** the forget data and to **forget** the retain data, and the guard then decodes with
``target - alpha * assistant`` (``guard.interventions.uld``). Here:

* assistant = the served model's embeddings + first K layers + final norm + LM head (shared
  vocabulary), with LoRA (PEFT) on the linear layers (``guard.train.uld_assistant``);
* loss = cross-entropy on the forget QA answers (TOFU rows with ``paraphrased_question`` /
  ``paraphrased_answer`` add those variants) + ``retain_weight`` x KL(uniform || assistant) on the
  retain QA answer tokens (the targets' ``keep_data``, or ``--retain``);
* batches hold half forget, half retain examples; AdamW, linear warm-up and decay, clipping;
* a held-out share of the forget and retain QA (split by item: a question and its paraphrases stay
  together) gives the early-stopping signal ``forget CE + retain_weight x retain KL``; the best
  epoch's adapter is kept. The evaluation split is never used for it;
* the artifact (written atomically): ``DIR/manifest.json`` (kind ``uld-assistant``, base-model
  identity, K, alpha, plausibility filter, LoRA, data, hyperparameters, per-epoch metrics) and
  ``DIR/adapter/`` (PEFT format, ``adapter_model.safetensors``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from guard.errors import ConfigError

log = logging.getLogger(__name__)

KIND = "uld-assistant"
MANIFEST = "manifest.json"
ADAPTER_DIR = "adapter"
METHOD = "ULD (Ji et al., NeurIPS 2024, Reversing the Forget-Retain Objectives: LLM Unlearning from Logit Difference)"


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class UldConfig:
    layers: int | None = None  # None: default_layers(served model depth)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    retain_weight: float = 1.0
    paraphrases: bool = True
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 8
    warmup: float = 0.1  # share of the steps
    max_grad_norm: float = 1.0
    val_fraction: float = 0.1
    patience: int = 2
    max_retain: int | None = 200
    max_length: int = 192
    seed: int = 0
    system_prompt: str | None = None
    # decoding defaults written into the artifact
    alpha: float = 0.8
    top_k: int = 20
    min_prob_ratio: float = 0.0
    eval_items: int = 0  # after training: greedy plain vs ULD answers on this many forget and retain QA
    eval_max_new_tokens: int = 48

    def validate(self) -> None:
        def bad(param: str, message: str) -> ConfigError:
            return ConfigError(message, param=param)

        if self.layers is not None and self.layers < 1:
            raise bad("layers", f"--layers must be >= 1, got {self.layers}")
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise bad("lora_r", "--lora-r and --lora-alpha must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "--lora-dropout must be in [0, 1)")
        if self.retain_weight < 0:
            raise bad("retain_weight", f"--retain-weight must be >= 0, got {self.retain_weight}")
        if self.epochs < 1:
            raise bad("epochs", f"--epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise bad("lr", f"--lr must be > 0, got {self.lr}")
        if self.batch_size < 2:
            raise bad("batch_size", "--batch-size must be >= 2 (half forget, half retain)")
        if not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.patience < 1:
            raise bad("patience", "--patience must be >= 1")
        if self.max_length < 16:
            raise bad("max_length", "--max-length must be >= 16")
        if not 0 <= self.alpha <= 10:
            raise bad("alpha", f"--alpha must be in [0, 10], got {self.alpha}")
        if not 1 <= self.top_k <= 1000:
            raise bad("top_k", f"--top-k must be in [1, 1000], got {self.top_k}")
        if not 0 <= self.min_prob_ratio < 1:
            raise bad("min_prob_ratio", f"--min-prob-ratio must be in [0, 1), got {self.min_prob_ratio}")
        if self.eval_items < 0:
            raise bad("eval_items", "--eval must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Item:
    """One QA pair (or text document, ``question=None``) with its variants for training."""

    question: str | None
    answer: str
    variants: list[tuple[str | None, str]] = field(default_factory=list)
    source: str = ""
    row: int = 0

    def pairs(self, with_variants: bool) -> list[tuple[str | None, str]]:
        return [(self.question, self.answer)] + (self.variants if with_variants else [])


def _read_records(path: Path, param: str) -> list[Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"data file {path} does not exist", param=param) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}", param=param) from None
    if Path(path).suffix == ".txt":
        return [text]
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            records = json.loads(text)
        elif stripped.startswith("{") and "\n" not in stripped.strip():
            records = [json.loads(stripped)]
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise ConfigError(f"{path} is neither JSON Lines nor a JSON array: {exc}", param=param) from None
    return records if isinstance(records, list) else [records]


def _rows(spec: str | None, n: int) -> list[int]:
    if not spec:
        return list(range(n))
    parts = [p.strip() for p in spec.split(":")]
    nums = [int(p) if p else None for p in parts]
    return list(range(n))[slice(*nums)]


_TEXT_FIELDS = {"rwku_intro": "intro", "rwku_passage": "text"}


def load_source(src: Any, param: str) -> list[Item]:
    """Items of a policy ``DataSource``: QA pairs (``tofu_qa``) or documents (the other formats)."""
    records = _read_records(Path(src.path), f"{param}.path")
    rows = _rows(src.rows, len(records))
    items: list[Item] = []
    for i in rows:
        rec = records[i]
        if src.format == "tofu_qa":
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str) or not isinstance(rec.get("answer"), str):
                raise ConfigError(f"{src.path} row {i} lacks string 'question'/'answer' fields (format tofu_qa)", param=f"{param}.path")
            variants: list[tuple[str | None, str]] = []
            pq, pa = rec.get("paraphrased_question"), rec.get("paraphrased_answer")
            if isinstance(pq, str) and pq.strip():
                variants.append((pq, rec["answer"]))
            if isinstance(pa, str) and pa.strip():
                variants.append((rec["question"], pa))
            items.append(Item(rec["question"], rec["answer"], variants, str(src.path), i))
            continue
        key = src.field or _TEXT_FIELDS.get(src.format, "text")
        if isinstance(rec, str):
            text = rec
        elif isinstance(rec, dict) and isinstance(rec.get(key), str):
            text = rec[key]
        else:
            raise ConfigError(f"{src.path} row {i} has no text field {key!r} (format {src.format})", param=f"{param}.field")
        if text.strip():
            items.append(Item(None, text, [], str(src.path), i))
    if not items:
        raise ConfigError(f"{src.path} rows {src.rows!r} select nothing", param=f"{param}.rows")
    return items


def select_targets(policy: Any, wanted: Sequence[str] | None) -> list[tuple[int, Any]]:
    """The targets to train for: ``--target`` ids, else those whose action is ``uld``, else all with forget data."""
    indexed = list(enumerate(policy.targets))
    if wanted:
        known = {t.id for t in policy.targets}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ConfigError(f"--target {unknown[0]!r} is not in the policy (targets: {', '.join(sorted(known)) or 'none'})",
                              param="target")
        indexed = [(i, t) for i, t in indexed if t.id in wanted]
    else:
        uld = [(i, t) for i, t in indexed if policy.action_for(t.id) == "uld"]
        indexed = uld or indexed
    chosen = [(i, t) for i, t in indexed if t.forget_data]
    if not chosen:
        raise ConfigError("no selected target has forget_data: the ULD assistant learns the forget data, so add e.g. "
                          "forget_data: [{path: .../tofu/forget01_perturbed.json, format: tofu_qa}]", param="targets")
    return chosen


@dataclass
class UldData:
    forget_train: list[Item]
    forget_val: list[Item]
    retain_train: list[Item]
    retain_val: list[Item]
    sources: dict[str, Any]


def _split(items: list[Item], fraction: float, rng: random.Random) -> tuple[list[Item], list[Item]]:
    items = list(items)
    rng.shuffle(items)
    n_val = int(round(len(items) * fraction)) if fraction > 0 else 0
    if fraction > 0 and len(items) >= 4:
        n_val = min(max(n_val, 1), len(items) - 1)
    elif len(items) < 4:
        n_val = 0
    return items[n_val:], items[:n_val]


def collect_data(policy: Any, cfg: UldConfig, *, targets: Sequence[str] | None = None,
                 retain: Sequence[tuple[str, Any]] | None = None) -> UldData:
    chosen = select_targets(policy, targets)
    forget: list[Item] = []
    retain_items: list[Item] = []
    sources: dict[str, Any] = {"targets": [t.id for _, t in chosen], "forget": [], "retain": []}
    for i, target in chosen:
        for j, src in enumerate(target.forget_data):
            got = load_source(src, f"targets.{i}.forget_data.{j}")
            forget.extend(got)
            sources["forget"].append({"path": str(src.path), "format": src.format, "rows": src.rows, "items": len(got)})
    retain_sources = list(retain or [])
    if not retain_sources:
        for i, target in chosen:
            retain_sources.extend((f"targets.{i}.keep_data.{j}", src) for j, src in enumerate(target.keep_data))
    if not retain_sources:
        raise ConfigError("ULD needs retain data (the assistant learns to be uniform on it, so the guard leaves those "
                          "answers alone): add keep_data to the target (e.g. TOFU retain_perturbed.json rows) or pass --retain",
                          param="keep_data")
    for param, src in retain_sources:
        got = load_source(src, param)
        retain_items.extend(got)
        sources["retain"].append({"path": str(src.path), "format": src.format, "rows": src.rows, "items": len(got)})
    forget_questions = {it.question for it in forget if it.question}
    retain_items = [it for it in retain_items if it.question not in forget_questions or it.question is None]
    rng = random.Random(cfg.seed)
    if cfg.max_retain and len(retain_items) > cfg.max_retain:
        retain_items = rng.sample(retain_items, cfg.max_retain)
    if not retain_items:
        raise ConfigError("the retain data is empty once forget questions are removed from it", param="keep_data")
    forget_train, forget_val = _split(forget, cfg.val_fraction, rng)
    retain_train, retain_val = _split(retain_items, cfg.val_fraction, rng)
    sources.update(n_forget=len(forget), n_forget_val=len(forget_val), n_retain=len(retain_items),
                   n_retain_val=len(retain_val), paraphrases=cfg.paraphrases,
                   n_forget_examples=sum(len(it.pairs(cfg.paraphrases)) for it in forget_train))
    return UldData(forget_train, forget_val, retain_train, retain_val, sources)


def encode(tokenizer: Any, question: str | None, answer: str, max_length: int, system_prompt: str | None) -> dict[str, Any]:
    """A QA pair in the chat template (labels on the answer), or a document (labels on all of it)."""
    import torch

    from guard.train.chat_data import IGNORE_INDEX, encode_qa

    if question is not None:
        return encode_qa(tokenizer, question, answer, max_length, system_prompt)
    ids = list(tokenizer(answer, add_special_tokens=True)["input_ids"])[:max_length]
    labels = list(ids)
    if labels:
        labels[0] = IGNORE_INDEX
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.ones(len(ids), dtype=torch.long)}


def encode_items(tokenizer: Any, items: Sequence[Item], cfg: UldConfig, with_variants: bool) -> list[dict[str, Any]]:
    out = []
    for it in items:
        for q, a in it.pairs(with_variants):
            try:
                out.append(encode(tokenizer, q, a, cfg.max_length, cfg.system_prompt))
            except ValueError as exc:
                raise ConfigError(f"{it.source} row {it.row}: {exc}", param="max_length") from None
    return out


# --------------------------------------------------------------------------------------------
# the objective


def answer_hidden(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Hidden states at the positions that predict a label, and those labels (saves the LM head on prompts)."""
    decoder = model.get_decoder()
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    return hidden[:, :-1][mask], labels[mask]


def losses(model: Any, batch: dict[str, Any], kind: str) -> Any:
    """Mean forget CE (``kind='forget'``) or mean KL(uniform || assistant) per answer token (``'retain'``)."""
    import torch

    hidden, labels = answer_hidden(model, batch)
    if labels.numel() == 0:
        return hidden.sum() * 0.0
    logits = model.get_output_embeddings()(hidden).float()
    if kind == "forget":
        return torch.nn.functional.cross_entropy(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    vocab = logp.shape[-1]
    # KL(u || p) = sum_v u_v (log u_v - log p_v) = -log V - mean_v log p_v
    return (-math.log(vocab) - logp.mean(dim=-1)).mean()


def evaluate(model: Any, forget: Sequence[dict[str, Any]], retain: Sequence[dict[str, Any]], pad: int,
             retain_weight: float, batch_size: int = 8) -> dict[str, float | None]:
    """Held-out signal: mean forget CE, mean retain KL-to-uniform and ``forget + w * retain``."""
    import torch

    from guard.train.chat_data import pad_batch

    was = model.training
    model.eval()
    out: dict[str, float | None] = {}
    try:
        with torch.no_grad():
            for name, examples in (("forget_ce", forget), ("retain_kl", retain)):
                if not examples:
                    out[name] = None
                    continue
                total, count = 0.0, 0
                for start in range(0, len(examples), batch_size):
                    chunk = examples[start:start + batch_size]
                    batch = pad_batch(chunk, pad, side="right")
                    n = int((batch["labels"][:, 1:] != -100).sum())
                    total += float(losses(model, batch, "forget" if name == "forget_ce" else "retain")) * n
                    count += n
                out[name] = total / max(count, 1)
    finally:
        model.train(was)
    parts = [v for v in (out["forget_ce"], None if out["retain_kl"] is None else retain_weight * out["retain_kl"]) if v is not None]
    out["total"] = sum(parts) if parts else None
    return out


def _schedule(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_assistant(peft_model: Any, tokenizer: Any, data: UldData, cfg: UldConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the LoRA weights; returns history, best epoch and the best adapter state (already loaded)."""
    import torch

    from guard.train.chat_data import pad_batch, pad_token_id

    pad = pad_token_id(tokenizer)
    f_train = encode_items(tokenizer, data.forget_train, cfg, cfg.paraphrases)
    r_train = encode_items(tokenizer, data.retain_train, cfg, False)
    f_val = encode_items(tokenizer, data.forget_val, cfg, cfg.paraphrases)
    r_val = encode_items(tokenizer, data.retain_val, cfg, False)
    n_forget = max(1, cfg.batch_size // 2)
    n_retain = cfg.batch_size - n_forget
    steps_per_epoch = max(1, math.ceil(len(f_train) / n_forget))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup * total_steps))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: _schedule(s, total_steps, warmup))
    rng = random.Random(cfg.seed)
    has_val = bool(f_val or r_val)
    initial = evaluate(peft_model, f_val, r_val, pad, cfg.retain_weight) if has_val else None
    history: list[dict[str, Any]] = []
    best_state, best_score, best_epoch, bad_epochs, stopped_early = None, math.inf, 0, 0, False
    started = time.perf_counter()
    retain_order: list[int] = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        peft_model.train()
        order = list(range(len(f_train)))
        rng.shuffle(order)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"uld epoch {epoch}/{cfg.epochs}", leave=False)
        sums = {"forget_ce": 0.0, "retain_kl": 0.0, "loss": 0.0}
        t_epoch = time.perf_counter()
        for s in range(steps_per_epoch):
            f_batch = [f_train[i] for i in order[s * n_forget:(s + 1) * n_forget]]
            r_batch = []
            for _ in range(n_retain):
                if not retain_order:
                    retain_order = list(range(len(r_train)))
                    rng.shuffle(retain_order)
                r_batch.append(r_train[retain_order.pop()])
            f_loss = losses(peft_model, pad_batch(f_batch, pad, side="right"), "forget")
            r_loss = losses(peft_model, pad_batch(r_batch, pad, side="right"), "retain")
            loss = f_loss + cfg.retain_weight * r_loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optim.step()
            sched.step()
            step += 1
            f_val_, r_val_ = float(f_loss.detach()), float(r_loss.detach())
            sums["forget_ce"] += f_val_
            sums["retain_kl"] += r_val_
            sums["loss"] += f_val_ + cfg.retain_weight * r_val_
            if bar is not None:
                bar.set_postfix(forget_ce=f"{f_val_:.3f}", retain_kl=f"{r_val_:.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        record: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": round(v / steps_per_epoch, 4) for k, v in sums.items()},
                                  "seconds": round(time.perf_counter() - t_epoch, 1)}
        if has_val:
            val = evaluate(peft_model, f_val, r_val, pad, cfg.retain_weight)
            record.update({f"val_{k}": (round(v, 4) if v is not None else None) for k, v in val.items()})
            score = float(val["total"])
            if score < best_score - 1e-4:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
            else:
                bad_epochs += 1
        history.append(record)
        log.info("uld epoch %d: %s", epoch, json.dumps(record))
        if has_val and bad_epochs >= cfg.patience:
            stopped_early = True
            log.info("uld: held-out signal did not improve for %d epochs; keeping epoch %d", cfg.patience, best_epoch)
            break
    if best_state is not None:
        peft_model.load_state_dict(best_state, strict=False)
    else:
        best_epoch = len(history)
    peft_model.eval()
    return {"history": history, "initial_val": initial, "best_epoch": best_epoch,
            "best_val": None if best_score == math.inf else round(best_score, 4), "stopped_early": stopped_early,
            "steps_per_epoch": steps_per_epoch, "train_time_s": round(time.perf_counter() - started, 1),
            "examples": {"forget_train": len(f_train), "retain_train": len(r_train), "forget_val": len(f_val), "retain_val": len(r_val)}}


# --------------------------------------------------------------------------------------------
# optional report: greedy answers with and without ULD


def generation_report(model_dir: Path, tokenizer: Any, assistant: Any, data: UldData, cfg: UldConfig,
                      *, progress: bool = True) -> dict[str, Any]:
    """ROUGE-L of greedy answers: forget items vs gold (should drop), retain items vs the plain answer (should stay)."""
    import torch
    from transformers import AutoModelForCausalLM

    from guard.interventions.uld_decoding import AssistantRuntime, ULDLogitsProcessor, ULDSettings
    from guard.train.chat_data import encode_prompt
    from guard.train.memorisation import rouge_l_recall

    target = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    runtime = AssistantRuntime(assistant)
    settings = ULDSettings(alpha=cfg.alpha, top_k=cfg.top_k, min_prob_ratio=cfg.min_prob_ratio)
    forget = [it for it in data.forget_train + data.forget_val if it.question][: cfg.eval_items]
    retain = [it for it in data.retain_val + data.retain_train if it.question][: cfg.eval_items]

    def answer(question: str, uld: bool) -> str:
        ids = torch.tensor([encode_prompt(tokenizer, question, cfg.system_prompt)])
        kwargs: dict[str, Any] = {}
        if uld:
            kwargs["logits_processor"] = [ULDLogitsProcessor(runtime, settings)]
        with torch.no_grad():
            out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.eval_max_new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **kwargs)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    rows = []
    todo = [("forget", it) for it in forget] + [("retain", it) for it in retain]
    iterator = todo
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc="uld report", leave=False)
    for kind, it in iterator:
        plain, guarded = answer(it.question, False), answer(it.question, True)
        rows.append({"set": kind, "question": it.question, "gold": it.answer, "plain": plain, "uld": guarded,
                     "rouge_plain_vs_gold": rouge_l_recall(plain, it.answer), "rouge_uld_vs_gold": rouge_l_recall(guarded, it.answer),
                     "rouge_uld_vs_plain": rouge_l_recall(guarded, plain)})

    def mean(kind: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["set"] == kind]
        return round(sum(vals) / len(vals), 4) if vals else None

    summary = {kind: {"n": sum(r["set"] == kind for r in rows), **{k: mean(kind, k) for k in
               ("rouge_plain_vs_gold", "rouge_uld_vs_gold", "rouge_uld_vs_plain")}} for kind in ("forget", "retain")}
    return {"summary": summary, "items": rows}


# --------------------------------------------------------------------------------------------
# the command


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_uld(policy_path: Path, out: Path, cfg: UldConfig | None = None, *, model_name: str = "default",
              targets: Sequence[str] | None = None, retain: Sequence[tuple[str, Any]] | None = None,
              threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the assistant for the policy's targets and write the artifact to ``out``; returns its manifest."""
    import torch
    from transformers import AutoTokenizer

    from guard.artifacts import model_identity
    from guard.models import resolve_model
    from guard.policy import load_policy
    from guard.train.uld_assistant import (
        attach_lora,
        base_layer_count,
        default_layers,
        load_base_assistant,
        lora_config,
        trainable_parameters,
    )

    cfg = cfg or UldConfig()
    cfg.validate()
    policy_path = Path(policy_path)
    policy = load_policy(policy_path)
    if threads is not None:
        if threads < 1:
            raise ConfigError("--threads must be >= 1", param="threads")
        torch.set_num_threads(threads)
    started = time.perf_counter()
    model_dir = Path(resolve_model(model_name))
    n_layers = base_layer_count(model_dir)
    k = cfg.layers or default_layers(n_layers)
    if k > n_layers:
        raise ConfigError(f"--layers {k} exceeds the served model's {n_layers} layers", param="layers")
    data = collect_data(policy, cfg, targets=targets, retain=retain)
    identity = model_identity(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(cfg.seed)
    base = load_base_assistant(model_dir, k)
    lcfg = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    model = attach_lora(base, lcfg, seed=cfg.seed)
    log.info("uld: assistant = first %d of %d layers of %s + LoRA r=%d (%d trainable parameters); %d forget items "
             "(%d held out, %d training examples with paraphrases=%s), %d retain items (%d held out); %d threads",
             k, n_layers, identity["name"], cfg.lora_r, trainable_parameters(model), data.sources["n_forget"],
             data.sources["n_forget_val"], data.sources["n_forget_examples"], cfg.paraphrases, data.sources["n_retain"],
             data.sources["n_retain_val"], torch.get_num_threads())
    result = train_assistant(model, tokenizer, data, cfg, progress=progress)
    report = None
    if cfg.eval_items:
        t0 = time.perf_counter()
        merged = copy.deepcopy(model).merge_and_unload().eval()
        report = generation_report(model_dir, tokenizer, merged, data, cfg, progress=progress)
        report["time_s"] = round(time.perf_counter() - t0, 1)
    manifest = {
        "kind": KIND,
        "version": 1,
        "method": METHOD,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": identity,
        "assistant": {"layers": k, "base_layers": n_layers, "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha,
                      "dropout": cfg.lora_dropout, "target_modules": "all-linear"},
                      "trainable_parameters": trainable_parameters(model), "adapter": ADAPTER_DIR},
        "decoding": {"alpha": cfg.alpha, "top_k": cfg.top_k, "min_prob_ratio": cfg.min_prob_ratio,
                     "plausibility": "top_k tokens by target probability, then p >= min_prob_ratio * p_max"},
        "policy": {"path": str(policy_path.resolve()), "sha256": _sha256_file(policy_path)},
        "data": data.sources,
        "hyperparameters": cfg.to_dict(),
        "metrics": {
            "initial_val": result["initial_val"], "best_val": result["best_val"], "best_epoch": result["best_epoch"],
            "epochs_run": len(result["history"]), "stopped_early": result["stopped_early"],
            "steps_per_epoch": result["steps_per_epoch"], "examples": result["examples"], "history": result["history"],
            "train_time_s": result["train_time_s"], "total_time_s": round(time.perf_counter() - started, 1),
            "threads": torch.get_num_threads(), "generation": report["summary"] if report else None,
        },
    }
    write_artifact(Path(out), model, manifest, report=report)
    return manifest


def write_artifact(out: Path, peft_model: Any, manifest: dict[str, Any], *, report: dict[str, Any] | None = None) -> None:
    """Write ``out`` atomically: ``manifest.json`` and the adapter (PEFT format, safetensors) in ``adapter/``."""
    from guard.atomic import staged_dir, write_json
    from guard.train.uld_assistant import save_adapter

    for key in ("kind", "base_model", "assistant", "decoding"):
        if key not in manifest:
            raise ValueError(f"a ULD manifest needs {key!r}")
    with staged_dir(Path(out)) as tmp:
        save_adapter(peft_model, tmp / ADAPTER_DIR)
        write_json(tmp / MANIFEST, manifest)
        if report is not None:
            write_json(tmp / "report.json", report)


def minimal_manifest(identity: dict[str, Any], layers: int, base_layers: int, *, alpha: float = 0.8, top_k: int = 20,
                     min_prob_ratio: float = 0.0, **extra: Any) -> dict[str, Any]:
    """The fields the guard reads from a ULD manifest (for artifacts built without ``train_uld``, e.g. tests)."""
    return {"kind": KIND, "version": 1, "method": METHOD, "base_model": identity,
            "assistant": {"layers": layers, "base_layers": base_layers, "adapter": ADAPTER_DIR},
            "decoding": {"alpha": alpha, "top_k": top_k, "min_prob_ratio": min_prob_ratio}, **extra}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "uld", help="train the ULD assistant (remember forget data, forget retain data) for a policy's targets",
        description=("Build the assistant from the served model (embeddings, first K layers, final norm, LM head) with LoRA "
                     "on its linear layers, and train it with the reversed objectives: cross-entropy on the targets' "
                     "forget_data (plus TOFU paraphrases), KL(uniform || assistant) on their keep_data. Writes "
                     "DIR/manifest.json + DIR/adapter/ (PEFT, safetensors); point a target's params.artifact at DIR with "
                     "action: uld."))
    p.add_argument("--policy", type=Path, required=True, help="policy YAML whose targets' forget_data/keep_data to use")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--model", default="default", help="the served model: 'default', a cached name (tofu-micro-target), a folder")
    p.add_argument("--target", action="append", default=None, help="train for this target id only (repeatable)")
    p.add_argument("--retain", type=Path, default=None, help="retain QA file (tofu_qa) instead of the targets' keep_data")
    p.add_argument("--retain-rows", default=None, help="rows of --retain, e.g. 0:400")
    m = p.add_argument_group("assistant and objective")
    m.add_argument("--layers", type=int, default=None, help="K: transformer layers kept (default 8 for >= 32-layer models, else depth // 7, at least 2: 4 for the bundled model)")
    m.add_argument("--lora-r", type=int, default=16)
    m.add_argument("--lora-alpha", type=int, default=32)
    m.add_argument("--lora-dropout", type=float, default=0.05)
    m.add_argument("--retain-weight", type=float, default=1.0, help="weight of KL(uniform || assistant) on retain data (default 1)")
    m.add_argument("--no-paraphrases", action="store_true", help="train on the forget QA only, not their paraphrases")
    d = p.add_argument_group("decoding defaults stored in the artifact (overridable in the policy)")
    d.add_argument("--alpha", type=float, default=0.8, help="logits = target - alpha * assistant (default 0.8, as the paper)")
    d.add_argument("--top-k", type=int, default=20, help="plausible set: the target's top-k tokens (default 20; <= vLLM --max-logprobs)")
    d.add_argument("--min-prob-ratio", type=float, default=0.0, help="also require p >= ratio * p_max (default 0: off)")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=10, help="at most this many epochs (default 10)")
    t.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3; the paper used 1e-3 on Llama-2-7B)")
    t.add_argument("--batch-size", type=int, default=8, help="examples per step, half forget, half retain (default 8)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of forget and retain items (default 0.1)")
    t.add_argument("--patience", type=int, default=2, help="stop after this many epochs without held-out improvement")
    t.add_argument("--max-retain", type=int, default=200, help="use at most this many retain items (default 200; 0 = all)")
    t.add_argument("--max-length", type=int, default=192)
    t.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("running")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--eval", type=int, default=0, metavar="N",
                   help="after training, compare greedy plain vs ULD answers on N forget and N retain questions (default 0)")
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
    cfg = UldConfig(layers=args.layers, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                    retain_weight=args.retain_weight, paraphrases=not args.no_paraphrases, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, val_fraction=args.val_fraction, patience=args.patience,
                    max_retain=args.max_retain or None, max_length=args.max_length, seed=args.seed, alpha=args.alpha,
                    top_k=args.top_k, min_prob_ratio=args.min_prob_ratio, eval_items=args.eval,
                    eval_max_new_tokens=args.eval_max_new_tokens)
    manifest = train_uld(args.policy, args.out, cfg, model_name=args.model, targets=args.target, retain=retain,
                         threads=args.threads, progress=not args.no_progress)
    metrics = manifest["metrics"]
    print(json.dumps({"out": str(args.out), "base_model": manifest["base_model"]["name"],
                      "layers": manifest["assistant"]["layers"], "decoding": manifest["decoding"],
                      "initial_val": (metrics["initial_val"] or {}).get("total"), "best_val": metrics["best_val"],
                      "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                      "stopped_early": metrics["stopped_early"], "train_time_s": metrics["train_time_s"],
                      "total_time_s": metrics["total_time_s"], "generation": metrics["generation"]}, indent=2))
    return 0
