"""``guard-train finetune``: the TOFU benchmark models (a target and its retain twin).

TOFU only means something on a model that was fine-tuned on the fictitious authors, compared with
a twin fine-tuned without the forget authors. This builds both from a base model (the bundled
SmolLM2-135M-Instruct by default) with a plain, deterministic torch loop:

* chat template, loss on the answer tokens only (``guard.lm.chat_format``);
* AdamW (weight decay on matrices only, as HF Trainer), linear warm-up then linear decay (TOFU)
  or constant, gradient clipping, gradient accumulation with token-weighted loss;
* batches of similar length (less padding), data order from ``seed + epoch``;
* on a GPU, ``dtype=bfloat16`` means bf16 autocast over fp32 master weights.

Outputs go to ``models_dir()/<name>`` (``tofu-<preset>-target`` / ``tofu-<preset>-retain``) as a
normal transformers folder (safetensors) plus ``guard_manifest.json`` (what, from which base,
which rows, the full recipe and its hash, losses, timings, evaluation) and ``guard_eval.json``
(per-item generations, NLLs and truth ratios). Folders are written through
``guard.atomic.staged_dir``: an interrupted run leaves nothing half-written. Long runs save a
checkpoint after each epoch and every ``checkpoint_minutes`` of training
(``models_dir()/.<name>.ckpt``); a re-run resumes from it (same data order, same weights). Re-running with the
same recipe reuses the cached model (``--force`` retrains).
"""

from __future__ import annotations

import logging
import json
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from guard.atomic import staged_dir, write_json
from guard.errors import ConfigError
from guard.paths import default_data_dir
from guard.train import tofu_recipes as R
from guard.train.finetune_eval import evaluate_model, eval_sets, store_eval, update_forget_quality
from guard.train.finetune_plan import (EVAL_FILE, KIND, MANIFEST, RunOptions, TwinPlan, cached_manifest, plan_preset, plan_twin,
                                       read_manifest)

__all__ = ["EVAL_FILE", "KIND", "MANIFEST", "RunOptions", "TwinPlan", "build_preset", "eval_sets", "evaluate_saved",
           "length_grouped_batches", "plan_preset", "plan_twin", "read_manifest", "train_twin", "training_pairs"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# data


def _data_dir(opts: RunOptions) -> Path:
    from guard.data.tofu import tofu_dir

    data = Path(opts.data_dir) if opts.data_dir else default_data_dir()
    tofu_dir(data)  # raises a ConfigError naming --data when TOFU is not there
    return data


def training_pairs(data_dir: Path, rows: Sequence[int]) -> list[tuple[str, str]]:
    from guard.data.tofu import load_rows

    full = load_rows(data_dir, "full")
    return [(full[r]["question"], full[r]["answer"]) for r in rows]


# --------------------------------------------------------------------------------------------
# training


def _device(opts: RunOptions, preset: str) -> str:
    import torch

    from guard.devices import resolve_device

    if opts.device == "auto" and preset == "full" and not torch.cuda.is_available():
        raise ConfigError(
            "the full preset (TOFU's recipe: 4,000 QA x 5 epochs) needs a GPU and none is visible; "
            "pass --device cpu to run it on the CPU anyway, or use --preset mini",
            param="device",
        )
    return resolve_device(opts.device, label="--device")


def _amp_dtype(recipe: R.Recipe, device: str):
    import torch

    if not device.startswith("cuda"):
        if recipe.dtype == "bfloat16":
            log.warning("dtype bfloat16 is for GPUs; training in float32 on %s", device)
        return None
    if recipe.dtype == "float32":
        return None
    if recipe.dtype == "bfloat16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, grouped: bool = True) -> list[list[int]]:
    """One epoch of batches: a seeded permutation; with ``grouped``, examples are sorted by length
    inside windows of 8 batches and the batches shuffled (every example once per epoch)."""
    import torch

    n = len(lengths)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).tolist()
    if not grouped or n <= batch_size:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    window = batch_size * 8
    batches: list[list[int]] = []
    for start in range(0, n, window):
        group = sorted(perm[start:start + window], key=lambda i: -lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def _optimizer(model: Any, recipe: R.Recipe):
    import torch

    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8)


def _scheduler(optimizer: Any, recipe: R.Recipe, steps_per_epoch: int):
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    total = steps_per_epoch * recipe.epochs
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    if recipe.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_linear_schedule_with_warmup(optimizer, warmup, total)


def _ckpt_dir(plan: TwinPlan) -> Path:
    return plan.path.with_name(f".{plan.path.name}.ckpt")


def _save_checkpoint(plan: TwinPlan, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_model

    with staged_dir(_ckpt_dir(plan)) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps(state, indent=2))


def _load_checkpoint(plan: TwinPlan, model: Any, optimizer: Any) -> dict[str, Any] | None:
    import torch
    from safetensors.torch import load_model

    ckpt = _ckpt_dir(plan)
    try:
        state = json.loads((ckpt / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    if state.get("recipe_hash") != plan.recipe_hash:
        log.info("ignoring checkpoint %s (another recipe)", ckpt)
        return None
    load_model(model, str(ckpt / "model.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))  # no code runs on load
    log.info("resuming %s at epoch %d, batch %d, from %s", plan.name, state["epochs_done"] + 1,
             state.get("batches_done", 0), ckpt)
    return state


def _set_threads(opts: RunOptions) -> int:
    import os

    import torch

    if opts.threads:
        if opts.threads < 1:
            raise ConfigError("--threads must be >= 1", param="threads")
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return threads
    if threads > 1 and load > 2 * cores:
        # measured here: with load ~15 on 2 cores, 1 thread trained ~5x faster than 2 (threads that
        # wait for each other at every op lose their time slices)
        log.warning("the CPU is busy (load %.1f on %d cores): --threads 1 is usually faster then", load, cores)
    return threads


def _load_base(recipe: R.Recipe, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard.models import resolve_model

    source = resolve_model(recipe.base_model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    # fp32 master weights everywhere; bf16 only through autocast on a GPU
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.to(device)
    return model, tokenizer, str(source)


def train_twin(plan: TwinPlan, opts: RunOptions) -> Path:
    """Train one twin (or reuse the cached one) and return its folder."""
    import torch

    t_start = time.monotonic()
    cached = None if opts.force else cached_manifest(plan)
    if cached is not None:
        log.info("%s: reusing %s (same recipe %s; --force retrains)", plan.name, plan.path, plan.recipe_hash)
        if opts.evaluate and "eval" not in cached:
            evaluate_saved(plan, opts)
        return plan.path
    if opts.force:
        shutil.rmtree(_ckpt_dir(plan), ignore_errors=True)

    data_dir = _data_dir(opts)
    device = _device(opts, plan.preset)
    threads = _set_threads(opts)
    recipe = plan.recipe
    torch.manual_seed(recipe.seed)
    model, tokenizer, source = _load_base(recipe, device)
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    amp = _amp_dtype(recipe, device)

    from guard.lm.chat_format import encode_qa, pad_batch, pad_token_id
    from guard.lm.nll import answer_nll_sums

    pairs = training_pairs(data_dir, plan.rows)
    examples = [encode_qa(tokenizer, q, a, recipe.max_length, recipe.system_prompt) for q, a in pairs]
    truncated = sum(1 for (q, a), ex in zip(pairs, examples) if int(ex["input_ids"].shape[0]) >= recipe.max_length)
    if truncated:
        log.warning("%s: %d of %d examples were cut at max_length=%d", plan.name, truncated, len(examples), recipe.max_length)
    lengths = [int(ex["input_ids"].shape[0]) for ex in examples]
    pad = pad_token_id(tokenizer)
    steps_per_epoch = R.steps_per_epoch(recipe, len(examples))
    total_steps = steps_per_epoch * recipe.epochs
    optimizer = _optimizer(model, recipe)
    scheduler = _scheduler(optimizer, recipe, steps_per_epoch)
    checkpointing = opts.checkpoint if opts.checkpoint is not None else steps_per_epoch >= 20

    state = None if opts.force else _load_checkpoint(plan, model, optimizer)
    epoch_losses: list[float] = list(state["epoch_losses"]) if state else []
    step_losses: list[float] = list(state.get("step_losses", [])) if state else []
    train_time = float(state["train_time_s"]) if state else 0.0
    start_epoch = int(state["epochs_done"]) if state else 0
    skip = int(state.get("batches_done", 0)) if state else 0  # batches of start_epoch already done
    partial = (float(state.get("epoch_loss_sum", 0.0)), int(state.get("epoch_tokens", 0))) if state else (0.0, 0)
    done_steps = start_epoch * steps_per_epoch + skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" when fast-forwarding
        for _ in range(done_steps):
            scheduler.step()

    log.info(
        "%s: training %d examples x %d epochs (%d steps, batch %d = %d x %d accum, lr %g) on %s, %d threads",
        plan.name, len(examples), recipe.epochs, total_steps, recipe.batch_size, recipe.micro_batch_size,
        recipe.grad_accum, recipe.lr, device, threads,
    )
    from tqdm.auto import tqdm

    def checkpoint(epochs_done: int, batches_done: int, loss_sum: float, tokens: int) -> None:
        _save_checkpoint(plan, model, optimizer, {
            "recipe_hash": plan.recipe_hash, "epochs_done": epochs_done, "batches_done": batches_done,
            "epoch_loss_sum": loss_sum, "epoch_tokens": tokens, "epoch_losses": epoch_losses,
            "step_losses": step_losses, "train_time_s": train_time,
        })

    bar = tqdm(total=total_steps, initial=done_steps, desc=f"finetune {plan.name}",
               disable=not opts.progress, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    last_ckpt = time.monotonic()
    try:
        for epoch in range(start_epoch, recipe.epochs):
            t_epoch = time.monotonic()
            batches = length_grouped_batches(lengths, recipe.batch_size, recipe.seed + epoch, recipe.length_grouped)
            sum_loss, sum_tokens = partial if epoch == start_epoch else (0.0, 0)
            for b_idx, batch_idx in enumerate(batches):
                if epoch == start_epoch and b_idx < skip:
                    continue
                t_step = time.monotonic()
                micro = [batch_idx[i:i + recipe.micro_batch_size] for i in range(0, len(batch_idx), recipe.micro_batch_size)]
                padded = [pad_batch([examples[i] for i in m], pad, side="right") for m in micro]
                n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in padded)
                step_loss = 0.0
                for b in padded:
                    b = {k: v.to(device) for k, v in b.items()}
                    with torch.autocast(device_type="cuda", dtype=amp, enabled=amp is not None):
                        loss_sum = answer_nll_sums(model, b)[0].sum()
                    (loss_sum / max(n_tokens, 1)).backward()
                    step_loss += float(loss_sum.detach())
                if recipe.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                sum_loss += step_loss
                sum_tokens += n_tokens
                step_losses.append(round(step_loss / max(n_tokens, 1), 5))
                train_time += time.monotonic() - t_step
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss / max(n_tokens, 1):.4f}",
                                lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if (checkpointing and b_idx + 1 < len(batches)
                        and time.monotonic() - last_ckpt > 60 * opts.checkpoint_minutes):
                    checkpoint(epoch, b_idx + 1, sum_loss, sum_tokens)
                    last_ckpt = time.monotonic()
            epoch_loss = sum_loss / max(sum_tokens, 1)
            epoch_losses.append(epoch_loss)
            log.info("%s: epoch %d/%d mean answer loss %.4f (%.0f s)", plan.name, epoch + 1, recipe.epochs,
                     epoch_loss, time.monotonic() - t_epoch)
            if checkpointing and epoch + 1 < recipe.epochs:
                checkpoint(epoch + 1, 0, 0.0, 0)
                last_ckpt = time.monotonic()
    finally:
        bar.close()

    model.config.use_cache = True
    if opts.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    manifest: dict[str, Any] = {
        "kind": KIND,
        "name": plan.name,
        "preset": plan.preset,
        "twin": plan.twin,
        "base_model": recipe.base_model,
        "base_model_source": source,
        "data": {
            "dataset": "TOFU",
            "data_dir": str(data_dir),
            "split": "full",
            "rows": R.spans_of(plan.rows),
            "n_examples": len(plan.rows),
            "forget_split": R.DATA[plan.preset].forget_split,
            "forget_rows": R.spans_of(R.forget_rows(plan.preset)),
            "forget_rows_included": plan.twin == "target",
            "examples_truncated": truncated,
        },
        "recipe": recipe.to_dict(),
        "recipe_hash": plan.recipe_hash,
        "recipe_version": R.RECIPE_VERSION,
        "seed": recipe.seed,
        "train": {
            "time_s": round(train_time, 1),  # the training loop (summed over resumed runs)
            "wall_s": round(time.monotonic() - t_start, 1),  # this run: loading, encoding, training
            "resumed_from": {"epoch": start_epoch + 1, "batch": skip} if state else None,
            "device": device,
            "threads": threads,
            "autocast": str(amp).replace("torch.", "") if amp is not None else None,
            "steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "epoch_losses": [round(x, 5) for x in epoch_losses],
            "first_step_loss": step_losses[0] if step_losses else None,
            "final_loss": round(epoch_losses[-1], 5) if epoch_losses else None,
            "step_losses": step_losses,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_dtype = torch.bfloat16 if amp is torch.bfloat16 else torch.float32
    if save_dtype is not torch.float32:
        model.to(save_dtype)
    with staged_dir(plan.path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST, manifest)
    shutil.rmtree(_ckpt_dir(plan), ignore_errors=True)
    log.info("%s: saved to %s (train %.0f s, final loss %s)", plan.name, plan.path, train_time,
             manifest["train"]["final_loss"])
    # evaluated after the save, so a failing evaluation never costs the trained weights (a re-run
    # with the same recipe evaluates the cached model)
    if opts.evaluate:
        store_eval(plan, *evaluate_model(model, tokenizer, plan, data_dir, device, opts))
    return plan.path


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - informational only
        return None


def evaluate_saved(plan: TwinPlan, opts: RunOptions) -> None:
    """Evaluate an already-saved twin and add the numbers to its folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _device(opts, plan.preset)
    _set_threads(opts)
    tokenizer = AutoTokenizer.from_pretrained(plan.path)
    model = AutoModelForCausalLM.from_pretrained(plan.path, dtype=torch.float32 if device == "cpu" else "auto").to(device)
    store_eval(plan, *evaluate_model(model, tokenizer, plan, _data_dir(opts), device, opts))


# --------------------------------------------------------------------------------------------
# entry points


def build_preset(
    preset: str,
    twins: Sequence[str] = R.TWINS,
    overrides: dict[str, Any] | None = None,
    opts: RunOptions | None = None,
) -> dict[str, Path]:
    """Build (or reuse) the twins of ``preset``; returns ``{twin: folder}``. The entry point the
    CLI and the tests share, so a model built once is reused everywhere."""
    opts = opts or RunOptions()
    plans = plan_preset(preset, twins, overrides, opts.name)
    out = {plan.twin: train_twin(plan, opts) for plan in plans}
    # forget quality needs both twins; the other one may come from an earlier run
    t_plan = plan_twin(preset, "target", overrides, opts.name)
    r_plan = plan_twin(preset, "retain", overrides, opts.name)
    if cached_manifest(t_plan) and cached_manifest(r_plan):
        fq = update_forget_quality(t_plan.path, r_plan.path)
        if fq:
            log.info("forget quality (KS p-value, %s vs %s, n=%d): %.3g", t_plan.name, r_plan.name, fq["n"],
                     fq["forget_quality"])
    return out
