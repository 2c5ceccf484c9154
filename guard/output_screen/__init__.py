"""Output screening: the answer side of the two-sided guard (issue #14, docs/output-screening.md).

``build_output_screener(policy, detector)`` once per policy; per answer ``screener.start()`` gives an
``AnswerScreen`` fed the model's deltas (``feed(text, tokens, item)`` -> ``ScreenStep(release, hit)``,
``finish()`` at the end); ``screener.screen_text(text)`` screens a whole non-streamed answer.
"""

from guard.output_screen.build import build_output_screener
from guard.output_screen.matchers import (
           DATE,
           NAME,
           SEMANTIC,
           TITLE,
           NameFactMatcher,
           TargetFacts,
           WindowMatch,
)
from guard.output_screen.stream import (
           UNSCREENED,
           AnswerScreen,
           OutputHit,
           OutputScreener,
           ScreenStep,
)

__all__ = [
           "DATE",
           "NAME",
           "SEMANTIC",
           "TITLE",
           "UNSCREENED",
           "AnswerScreen",
           "NameFactMatcher",
           "OutputHit",
           "OutputScreener",
           "ScreenStep",
           "TargetFacts",
           "WindowMatch",
           "build_output_screener",
]
