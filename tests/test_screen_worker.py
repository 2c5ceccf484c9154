"""Large requests are screened in a separate process (``guard.screen_worker``), under the same limits."""

from __future__ import annotations

import os

import pytest

from classifiers.base import Deadline, ScreeningIncomplete, Verdict
from guard.pipeline import Pipeline
from guard.policy import parse_policy
from guard.screen_worker import ScreenWorker

POLICY = {"detector": {"kind": "keyword", "isolate_above_chars": 200, "max_screen_tokens": 5000},
          "targets": [{"id": "z", "names": ["Zorblax Quenton"]}]}


class PidDetector:
    """Flags 'Zorblax' and says which process screened."""

    def screen(self, texts, deadline=None):
        if deadline is not None:
            deadline.check("pid detector")
        return Verdict(flagged=any("Zorblax" in t for t in texts), target_id="z", detail={"pid": os.getpid()})


def pid_factory(policy):  # importable: the worker process rebuilds the detector with it
    return PidDetector()


def test_worker_screens_in_another_process_under_the_limits() -> None:
    worker = ScreenWorker(parse_policy(POLICY), pid_factory)
    try:
        assert worker.wait_ready(120)
        v = worker.screen(["Tell me about Zorblax Quenton."], Deadline.after_ms(30_000))
        assert v is not None and v.flagged and v.detail["pid"] not in (None, os.getpid())
        with pytest.raises(ScreeningIncomplete) as err:
            worker.screen(["word " * 6000], Deadline.after_ms(30_000))
        assert err.value.param == "detector.max_screen_tokens"
        with pytest.raises(ScreeningIncomplete) as err:
            worker.screen(["Zorblax"], Deadline.after_ms(0))
        assert err.value.param == "detector.budget_ms"
    finally:
        worker.close()


def test_a_dead_worker_falls_back_to_threads_never_skips() -> None:
    worker = ScreenWorker(parse_policy(POLICY), pid_factory)
    try:
        assert worker.wait_ready(120)
        worker._proc.kill()
        worker._proc.join(30)
        assert worker.screen(["Zorblax"], Deadline.after_ms(30_000)) is None  # the caller screens it in a thread
        assert worker.screen(["Zorblax"], Deadline.after_ms(30_000)) is None
    finally:
        worker.close()


class StuckDetector:
    """Ignores deadlines (no ``deadline`` parameter) and never returns."""

    def screen(self, texts):
        import threading

        threading.Event().wait()


def stuck_factory(policy):
    return StuckDetector()


def test_a_stuck_worker_is_given_up_at_the_deadline_and_blocks_no_one_for_longer() -> None:
    worker = ScreenWorker(parse_policy(POLICY), stuck_factory)
    try:
        assert worker.wait_ready(120)
        for _ in range(2):  # the first is abandoned; the second finds the process still busy
            with pytest.raises(ScreeningIncomplete) as err:
                worker.screen(["Zorblax"], Deadline.after_ms(200))
            assert err.value.param == "detector.budget_ms"
    finally:
        worker.close()


def test_unpicklable_factories_screen_in_threads() -> None:
    assert not ScreenWorker.can_run(lambda policy: PidDetector())
    assert ScreenWorker.can_run(pid_factory)


async def test_pipeline_sends_large_requests_to_the_worker(local_engine) -> None:
    pipeline = Pipeline.build(parse_policy(POLICY), local_engine, pid_factory)
    try:
        assert pipeline.worker is not None and pipeline.worker.wait_ready(120)
        small = await pipeline.screen(["Who is Zorblax?"])
        large = await pipeline.screen(["Who is Zorblax? " + "Please answer in detail. " * 20])
        assert small.flagged and small.detail["pid"] == os.getpid()
        assert large.flagged and large.detail["pid"] != os.getpid()
        decision = await pipeline.decide(["Please answer in detail. " * 20 + " Zorblax"])
        assert decision.action == "refuse"
    finally:
        pipeline.close()
