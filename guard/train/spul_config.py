"""SPUL's configuration (``guard-train spul``'s flags as one dataclass), checked before anything loads.

Apart from the run (``guard.train.spul``) so the loop, the data and the selection modules can read it
without importing the trainer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from guard.errors import ConfigError
from guard.train.spul_counterfactual import DEFAULT_STAND_INS
from guard.train.spul_objective import Weights

DEFAULT_INIT_TEXT = "I do not know anything about this. I don't know. I have no information on that."
FORGET_TARGETS = ("idk", "perturbed", "counterfactual", "distill", "uld")

@dataclass
class SpulConfig:
    n_tokens: int = 20
    position: str = "user"
    init: str = "text"  # text | vocab
    init_text: str = DEFAULT_INIT_TEXT
    forget_target: str = "idk"  # idk | perturbed | counterfactual | distill | uld
    teacher_artifact: str | None = None  # uld: the `guard-train uld` artifact whose logit difference is the teacher
    stand_ins: tuple[str, ...] = DEFAULT_STAND_INS  # counterfactual: invented names the teacher is asked about
    teacher_max_new_tokens: int = 64  # counterfactual: length of the teacher's greedy answers
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
    # --w-truth-ratio (guard.train.spul_truth_ratio): the never-seen QA whose truth ratios are the level,
    # and which forget items the term reads (every n-th; the others are its held-out half)
    truth_ratio_holdout: str | None = None
    truth_ratio_holdout_rows: str | None = None
    truth_ratio_every: int = 2
    truth_ratio_answers: str = "tofu"  # tofu: TOFU's perturbed answers; swapped: the true answer's facts swapped
    # --choose-epoch (guard.train.spul_epoch_choice): val-loss keeps the best held-out objective; never-seen
    # the epoch whose forget answers look most like a never-seen model's
    choose_epoch: str = "val-loss"
    choose_from_epoch: int = 3
    rouge_band: float = 0.1
    choose_max_new_tokens: int = 64

    def validate(self) -> None:
        from guard.interventions.spul import POSITIONS

        checks = [
            (self.n_tokens >= 1, "n_tokens", "--n-tokens must be >= 1"),
            (self.position in POSITIONS, "position", f"--position must be one of {', '.join(POSITIONS)}"),
            (self.init in ("text", "vocab"), "init", "--init must be 'text' or 'vocab'"),
            (self.forget_target in FORGET_TARGETS, "forget_target", f"--forget-target must be one of {', '.join(FORGET_TARGETS)}"),
            (self.teacher_max_new_tokens >= 1, "teacher_max_new_tokens", "--teacher-max-new-tokens must be >= 1"),
            (self.epochs >= 1, "epochs", "--epochs must be >= 1"),
            (self.lr > 0, "lr", "--lr must be > 0"),
            (self.batch_size >= 2, "batch_size", "--batch-size must be >= 2 (half forget, half retain)"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction", "--val-fraction must be in [0, 1)"),
            (self.patience >= 1, "patience", "--patience must be >= 1"),
            (self.max_retain is None or self.max_retain >= 1, "max_retain", "--max-retain must be >= 1"),
            (self.max_length >= 32, "max_length", "--max-length must be >= 32"),
            (min(self.weights.forget, self.weights.retain, self.weights.kl) >= 0, "weights", "loss weights must be >= 0"),
            (self.weights.forget > 0 or self.weights.truth_ratio > 0, "w_forget",
             "--w-forget must be > 0 (it is what makes the model forget), unless --w-truth-ratio is"),
            (self.weights.first_token > 0, "w_first_token", "--w-first-token must be > 0"),
            (self.weights.divergent > 0, "w_divergent", "--w-divergent must be > 0"),
            (self.forget_target not in ("distill", "uld") or self.weights.divergent == 1.0, "w_divergent",
             f"--w-divergent weights counterfactual labels; --forget-target {self.forget_target} matches whole "
             "distributions (drop it)"),
            (self.weights.truth_ratio >= 0, "w_truth_ratio", "--w-truth-ratio must be >= 0"),
            (bool(self.weights.truth_ratio) == bool(self.truth_ratio_holdout), "holdout",
             "--w-truth-ratio W > 0 needs --holdout FILE (never-seen QA whose truth ratios are the term's level)"),
            (self.truth_ratio_every >= (2 if self.truth_ratio_answers == "tofu" else 1), "truth_ratio_every",
             "--truth-ratio-every must be >= 2 with TOFU's perturbed answers (they are the evaluation's: one share of "
             "the forget items stays out of the term), >= 1 with --truth-ratio-answers swapped"),
            ((self.forget_target == "uld") == bool(self.teacher_artifact), "teacher_artifact",
             "--forget-target uld needs --teacher-artifact DIR (an artifact of `guard-train uld`), and "
             "--teacher-artifact is only read by --forget-target uld"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise ConfigError(message, param=param)
        from guard.train.spul_epoch_choice import check_choice

        check_choice(self.choose_epoch, self.choose_from_epoch, self.rouge_band, self.choose_max_new_tokens,
                     self.weights.truth_ratio)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights"] = self.weights.to_dict()
        return out
