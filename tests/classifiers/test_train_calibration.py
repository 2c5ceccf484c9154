"""The detector's long-input calibration features are held by a ``LongWindowCache`` the caller owns
(no module cache): a live update's removal and addition share one featurisation, and it is bounded."""

from __future__ import annotations

import numpy as np

from classifiers.train import add_targets, recalibrate, remove_targets
from classifiers.train_calibration import LongWindowCache
from guard.policy import load_policy


def test_a_live_update_featurises_the_long_negatives_once(trained) -> None:
    path, model = trained
    policy = load_policy(path)
    tid = model.target_ids[0]
    cache = LongWindowCache()
    smaller = remove_targets(model, [tid], long_cache=cache)
    assert len(cache) == 1  # the long texts are made of calibration negatives without hard ones
    again = add_targets(smaller, policy, [tid], long_cache=cache)
    assert len(cache) == 1 and sorted(again.target_ids) == sorted(model.target_ids)
    # the same numbers as with a fresh cache per call (the default)
    fresh = add_targets(remove_targets(model, [tid]), policy, [tid])
    assert np.isclose(again.stages["static"].tau_long, fresh.stages["static"].tau_long)


def test_the_cache_is_bounded_and_can_be_cleared(trained) -> None:
    _, model = trained
    own = remove_targets(model, [model.target_ids[0]])  # a new model: the session's stays untouched
    cache = LongWindowCache(size=1)
    recalibrate(own, long_cache=cache)
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
