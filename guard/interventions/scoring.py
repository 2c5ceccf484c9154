"""Teacher-forced scoring through an intervention (local engine), for TOFU's probability and
truth-ratio metrics: the per-token negative log-likelihood of a given answer after a prompt, where
the prompt may be given as embeddings (ECO, SPUL) and the logits may be transformed (ULD).

The implementation is the LM toolkit's (``guard.lm.nll``); interventions name the transform type
and the scorer from here."""

from __future__ import annotations

from guard.lm.nll import LogitsTransform
from guard.lm.nll import answer_token_nll as answer_nll

__all__ = ["LogitsTransform", "answer_nll"]
