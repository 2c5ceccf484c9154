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
* with ``AlphaSearch`` (``--holdout``), alpha is chosen after training (``guard.train.uld_alpha``):
  the forget answers' truth ratios through ULD should look like the target's on QA about people it
  never saw, while flagged retain answers keep their greedy tokens; otherwise alpha is ``--alpha``;
* the artifact (written atomically): ``DIR/manifest.json`` (kind ``uld-assistant``, base-model
  identity, K, alpha, plausibility filter, LoRA, data, hyperparameters, per-epoch metrics, the alpha
  search and its trace) and ``DIR/adapter/`` (PEFT format, ``adapter_model.safetensors``).

This module holds ULD's configuration, its loop and the run; the data is ``guard.train.uld_data``,
the objective ``guard.train.uld_objective``, the optional report ``guard.train.uld_report`` and the
command line ``guard.train.cmd_uld``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from guard.errors import ConfigError
from guard.train.artifact_files import loop_summary, policy_stamp, utc_now
from guard.train.method_data import SourceRef
from guard.train.uld_data import Item, UldData, _split, collect_data, encode_items, load_source
from guard.train.uld_objective import evaluate, losses

__all__ = ["ADAPTER_DIR", "AlphaSearch", "KIND", "MANIFEST", "METHOD", "Item", "UldConfig", "UldData", "_split", "collect_data",
           "load_source", "minimal_manifest", "train_assistant", "train_uld", "write_artifact"]

log = logging.getLogger(__name__)

KIND = "uld-assistant"
MANIFEST = "manifest.json"
ADAPTER_DIR = "adapter"
METHOD = "ULD (Ji et al., NeurIPS 2024, Reversing the Forget-Retain Objectives: LLM Unlearning from Logit Difference)"


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


DEFAULT_ALPHAS = tuple(round(0.05 * i, 2) for i in range(21)) + (1.2, 1.5, 2.0, 3.0)


@dataclass
class AlphaSearch:
    """Choosing ``alpha`` after training (``guard.train.uld_alpha``), from the policy's data and
    never-seen QA only. ``holdout``: QA about people the served model never saw, with TOFU's
    paraphrased and perturbed answers (the level the forget answers' truth ratios should reach);
    ``forget_every``: the search reads every n-th forget item (the rest stay held out from the choice);
    ``retain_items``: at most this many of the assistant's held-out retain items are the flagged-retain
    answers; ``min_retain_agreement``: share of their answer positions whose top token ULD must keep
    (greedy answers unchanged); ``max_retain_shift`` / ``max_retain_nll_rise``: optional bounds on their
    mean |change of log truth ratio| and mean gold-NLL rise (nats/token) vs alpha 0."""

    holdout: SourceRef
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    forget_every: int = 2
    retain_items: int = 20
    min_retain_agreement: float = 0.98
    max_retain_shift: float | None = None
    max_retain_nll_rise: float | None = None

    def validate(self) -> None:
        if not self.alphas or any(not 0 <= a <= 10 for a in self.alphas):
            raise ConfigError("--alphas must be numbers in [0, 10]", param="alphas")
        if self.forget_every < 1:
            raise ConfigError("--search-forget-every must be >= 1", param="search_forget_every")
        if self.retain_items < 1:
            raise ConfigError("--search-retain-items must be >= 1", param="search_retain_items")
        if not 0 <= self.min_retain_agreement <= 1:
            raise ConfigError("--min-retain-agreement must be in [0, 1]", param="min_retain_agreement")


def _schedule(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_assistant(peft_model: Any, tokenizer: Any, data: UldData, cfg: UldConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the LoRA weights; returns history, best epoch and the best adapter state (already loaded)."""
    import torch

    from guard.lm.chat_format import pad_batch, pad_token_id

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


def train_uld(policy_path: Path, out: Path, cfg: UldConfig | None = None, *, model_name: str = "default",
              targets: Sequence[str] | None = None, retain: Sequence[SourceRef] | None = None,
              threads: int | None = None, progress: bool = True, alpha_search: AlphaSearch | None = None) -> dict[str, Any]:
    """Train the assistant for the policy's targets and write the artifact to ``out``; returns its manifest.
    With ``alpha_search`` the artifact's ``decoding.alpha`` is chosen after training (else ``cfg.alpha``)."""
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
    if alpha_search is not None:
        alpha_search.validate()
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
    if alpha_search is not None:
        from guard.train.uld_alpha import search_items

        search_items(data, alpha_search)  # the search's data is checked before training, not after
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
    search = None
    if alpha_search is not None:
        from guard.train.uld_alpha import run_alpha_search

        merged = copy.deepcopy(model).merge_and_unload().eval()
        search = run_alpha_search(model_dir, tokenizer, merged, data, cfg, alpha_search, progress=progress)
        cfg = replace(cfg, alpha=float(search["chosen"]["alpha"]))
    report = None
    if cfg.eval_items:
        t0 = time.perf_counter()
        merged = copy.deepcopy(model).merge_and_unload().eval()
        from guard.train.uld_report import generation_report

        report = generation_report(model_dir, tokenizer, merged, data, cfg, progress=progress)
        report["time_s"] = round(time.perf_counter() - t0, 1)
    manifest = {
        "kind": KIND,
        "version": 1,
        "method": METHOD,
        "created_at": utc_now(),
        "base_model": identity,
        "assistant": {"layers": k, "base_layers": n_layers, "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha,
                      "dropout": cfg.lora_dropout, "target_modules": "all-linear"},
                      "trainable_parameters": trainable_parameters(model), "adapter": ADAPTER_DIR},
        "decoding": {"alpha": cfg.alpha, "top_k": cfg.top_k, "min_prob_ratio": cfg.min_prob_ratio,
                     "plausibility": "top_k tokens by target probability, then p >= min_prob_ratio * p_max",
                     "alpha_from": "alpha_search" if search else "--alpha"},
        "alpha_search": search,
        "policy": policy_stamp(policy_path),
        "data": data.sources,
        "hyperparameters": cfg.to_dict(),
        "metrics": {
            **loop_summary(result, result["best_val"]), "examples": result["examples"], "history": result["history"],
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
