"""Build the detector a policy asks for (called at start-up and on every policy reload).

``trained`` loads the artifact written by ``guard-train classifier`` and reconciles it with the
policy's targets, so live target changes need no retraining run and no restart:

* a target removed from the policy: its head is dropped and thresholds re-calibrated (milliseconds);
* a target added to the policy (or whose names/data changed): its head is trained now from the
  policy data against the artifact's stored negatives (seconds; only the new target's texts are
  embedded), unless ``detector.update_missing: false``, in which case loading fails with the command
  that retrains. The updated model is cached under ``<cache>/detector-overlays/`` so the next reload
  is instant; the artifact itself is never modified here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from classifiers.base import Detector, NullDetector
from classifiers.keyword import KeywordDetector
from guard.errors import ConfigError
from guard.policy import Policy

log = logging.getLogger(__name__)


def build_detector(policy: Policy) -> Detector:
    kind = policy.detector.kind
    if kind == "none":
        return NullDetector()
    if kind == "keyword":
        return KeywordDetector({t.id: t.all_names for t in policy.targets})
    if kind == "trained":
        return build_trained(policy)
    raise ConfigError(f"detector kind {kind!r} is not available in this version", param="detector.kind")


def reconcile(model, policy: Policy, *, progress=lambda s: None):  # type: ignore[no-untyped-def]
    """(model matching the policy's targets, what changed)."""
    from classifiers.train import add_targets, remove_targets, target_digest

    wanted = [t.id for t in policy.targets]
    digests = {t.id: target_digest(t) for t in policy.targets}
    extra = [t for t in model.target_ids if t not in digests]
    stale = [t for t in wanted if t in model.target_ids and model.target_digests.get(t) and model.target_digests[t] != digests[t]]
    missing = [t for t in wanted if t not in model.target_ids] + stale
    changes = {"removed": extra, "added": missing}
    if extra:
        model = remove_targets(model, extra, progress)
    if missing:
        model = add_targets(model, policy, missing, progress)
    if model.target_ids != wanted and set(model.target_ids) == set(wanted):
        pass  # order differs: harmless, heads are looked up by id
    return model, changes


def _overlay_key(artifact: Path, policy: Policy) -> str:
    from classifiers.train import target_digest

    manifest = (artifact / "manifest.json").read_bytes()
    h = hashlib.sha1(manifest)
    h.update(json.dumps(sorted((t.id, target_digest(t)) for t in policy.targets)).encode())
    return h.hexdigest()[:20]


def build_trained(policy: Policy) -> Detector:
    from classifiers.detector import TrainedDetector, load_model, save_model
    from guard.atomic import staged_dir
    from guard.paths import cache_dir

    spec = policy.detector
    artifact = Path(spec.artifact) if spec.artifact else None
    if artifact is None:
        raise ConfigError("detector.kind is 'trained' but detector.artifact is missing", param="detector.artifact")
    started = time.perf_counter()
    model = load_model(artifact)
    wanted = {t.id for t in policy.targets}
    if set(model.target_ids) != wanted or _any_stale(model, policy):
        missing = sorted(wanted - set(model.target_ids))
        if missing and not spec.update_missing:
            raise ConfigError(
                f"detector artifact {artifact} has no head for target(s) {', '.join(missing)}: run "
                f"`guard-train classifier --policy POLICY --out {artifact} --update` (seconds), or set detector.update_missing: true",
                param="detector.artifact")
        overlay = cache_dir() / "detector-overlays" / _overlay_key(artifact, policy)
        if (overlay / "manifest.json").exists():
            try:
                model = load_model(overlay)
            except ConfigError:
                log.warning("ignoring corrupt detector overlay %s", overlay)
                model, _ = reconcile(model, policy, progress=log.info)
        else:
            model, changes = reconcile(model, policy, progress=log.info)
            log.info("detector: reconciled artifact with the policy (added %s, removed %s) in %.1fs",
                     changes["added"] or "none", changes["removed"] or "none", time.perf_counter() - started)
            try:
                with staged_dir(overlay) as tmp:
                    save_model(model, tmp)
            except OSError as exc:  # a read-only cache only costs the next reload some seconds
                log.warning("could not cache the updated detector at %s: %s", overlay, exc)
    detector = TrainedDetector(model, threshold=spec.threshold,
                               cover_above=spec.max_screen_tokens if spec.long_input == "cover" else None)
    detector.warm()
    log.info("detector: %d target(s), mode %s, loaded in %.2fs", model.n_targets, model.mode, time.perf_counter() - started)
    return detector


def _any_stale(model, policy: Policy) -> bool:  # type: ignore[no-untyped-def]
    from classifiers.train import target_digest

    for t in policy.targets:
        have = model.target_digests.get(t.id)
        if have and have != target_digest(t):
            return True
    return False
