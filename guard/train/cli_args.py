"""The arguments every ``guard-train`` method command shares (policy, output, model, targets,
retain override, threads), so ``eco``, ``spul`` and ``uld`` read the same way."""

from __future__ import annotations

import argparse
from pathlib import Path

from guard.errors import ConfigError
from guard.policy import DataSource
from guard.train.method_data import SourceRef


def add_policy_args(p: argparse.ArgumentParser, *, policy_help: str, model_default: str, model_help: str,
                    target_help: str, target_default: list[str] | None = None) -> None:
    p.add_argument("--policy", type=Path, required=True, help=policy_help)
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--model", default=model_default, help=model_help)
    p.add_argument("--target", action="append", default=target_default, help=target_help)


def add_method_data_args(p: argparse.ArgumentParser, *, model_example: str, target_help: str) -> None:
    """Policy, output, served model, targets and the ``--retain`` override of a method trained on the
    targets' forget and keep data (SPUL, ULD)."""
    add_policy_args(p, policy_help="policy YAML whose targets' forget_data/keep_data to use", model_default="default",
                    model_help=f"the served model: 'default', a cached name ({model_example}), a folder", target_help=target_help)
    add_retain_args(p)


def add_retain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retain", type=Path, default=None, help="retain QA file (tofu_qa) instead of the targets' keep_data")
    p.add_argument("--retain-rows", default=None, help="rows of --retain, e.g. 0:400")


def add_data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="benchmark data folder (default ../shared/data or $GUARD_DATA_DIR)")


def add_optimisation_args(p: argparse.ArgumentParser, *, epochs: int, lr: float, lr_note: str, val_fraction: float,
                          max_retain: int, unit: str) -> None:
    """The loop's settings every method with a held-out early stop shares (``unit``: "QA" or "items")."""
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int, default=epochs, help=f"at most this many epochs (default {epochs})")
    t.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate (default {lr:g}{lr_note})")
    t.add_argument("--batch-size", type=int, default=8, help="examples per step, half forget, half retain (default 8)")
    t.add_argument("--val-fraction", type=float, default=val_fraction,
                   help=f"held-out share of forget and retain {unit} (default {val_fraction:g})")
    t.add_argument("--patience", type=int, default=2, help="stop after this many epochs without held-out improvement")
    t.add_argument("--max-retain", type=int, default=max_retain,
                   help=f"use at most this many retain {unit} (default {max_retain}; 0 = all)")
    t.add_argument("--max-length", type=int, default=192)
    t.add_argument("--seed", type=int, default=0)


HOLDOUT_HELP = ("tofu_qa file of QA about people the model never saw, with paraphrased_answer and perturbed_answer "
                "(e.g. ../shared/data/tofu/retain_perturbed.json --holdout-rows 360:400 for the mini preset)")
FORGET_EVERY_HELP = "the search reads every n-th forget item; the others stay out of the choice (default 2)"


def add_retain_check_args(group: argparse._ArgumentGroup, *, what: str, min_agreement: float) -> None:
    """The forget-quality search's flagged-retain check (SPUL, ULD): how many held-out retain items it
    reads, and the share of their answer positions whose top token ``what`` must keep."""
    group.add_argument("--search-forget-every", type=int, default=2, help=FORGET_EVERY_HELP)
    group.add_argument("--search-retain-items", type=int, default=20,
                       help="flagged-retain check: at most this many of the held-out retain items (default 20)")
    group.add_argument("--min-retain-agreement", type=float, default=min_agreement,
                       help=f"share of their answer positions whose top token {what} must keep (default {min_agreement:g})")


def holdout_source(path: Path, rows: str | None) -> SourceRef:
    """``--holdout PATH [--holdout-rows A:B]`` as a data source (a bad row range names ``--holdout-rows``)."""
    try:
        return SourceRef("--holdout", DataSource(path=Path(path).resolve(), format="tofu_qa", rows=rows))
    except ValueError as exc:
        raise ConfigError(f"--holdout-rows: {exc}", param="holdout_rows") from None
