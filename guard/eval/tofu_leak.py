"""The sampling leak section of ``guard-eval tofu`` (``--samples K --temperature T --probes ...``;
issues #14 and #16).

For every system the run evaluates, each probe is answered ``K`` times at temperature ``T`` with
the run's seed, and judged by :func:`guard.eval.leak.leaks` (a leak: any sample with ROUGE-L recall
>= 0.5 against the gold answer, or naming the author when the question did not). Rows:

* ``target``: the fine-tuned model alone; ``retain``: its retain twin alone (the level of a model
  that never saw the forget authors; issue #16's bar is "each method <= the twin's rate + 5 points");
* each guard (``--guard LABEL=POLICY``, ``--policy P --actions ...``): two rows on the target model,
  ``input-only`` (the request screen decides, then the method or the plain model answers; output
  screening off) and ``input+output`` (as served: the serving path's own screened stream,
  :func:`guard.eval.leak.served_answers`).

Probe sets: ``forget`` (the forget questions the run scores, the same rows and ``--limit``) and
``nameless`` (:func:`guard.eval.nameless_probes.nameless_probes` of the forget split, evenly spread
to ``--limit``). Probes are decided as served in every regime (the worst-case regime routes only
retain / real-author / world-fact questions), so a ``LABEL@worst-case`` row gets no leak rows of its
own when its served row is in the run.

Per-probe results go to ``leak/<label>.jsonl`` as they are made (one line per probe and row, keyed by
the settings that make the answers: model files, policy, action, samples, temperature, seed, answer
length), so an interrupted or repeated run reuses them; the file is rewritten atomically with the
run's results once a system is done.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from guard.engines.base import SamplingParams
from guard.errors import ConfigError
from guard.eval.leak import (
    LEAK_ROUGE, PROBE_SETS, LeakProbe, ProbeLog, ProbeResult, answer_probes, evenly_spread, forget_probes, leak_probe, leak_stats,
)
from guard.eval.tofu_plan import EvalPlan, TofuItem
from guard.eval.tofu_regime import DEFAULT_REGIME

LEAK_VERSION = 1
PROBE_CHOICES = {"forget": ("forget",), "nameless": ("nameless",), "both": PROBE_SETS}
SCREENS = {"target": ("target",), "retain": ("target",), "guard": ("input-only", "input+output")}
SCREEN_NAMES = {"target": "none", "input-only": "input-only", "input+output": "input+output"}


@dataclass(frozen=True)
class LeakSpec:
    """What ``--samples/--temperature/--probes`` ask for."""

    samples: int
    temperature: float = 1.0
    probes: str = "both"     # forget | nameless | both

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError("--samples must be >= 1", param="samples")
        if self.temperature < 0:
            raise ConfigError("--temperature must be >= 0", param="temperature")
        if self.samples > 1 and self.temperature <= 0:
            raise ConfigError("--samples > 1 needs --temperature > 0 (greedy answers are all the same)", param="temperature")
        if self.probes not in PROBE_CHOICES:
            raise ConfigError(f"--probes {self.probes!r}: choose {', '.join(PROBE_CHOICES)}", param="probes")

    @property
    def sets(self) -> tuple[str, ...]:
        return PROBE_CHOICES[self.probes]

    def params(self, max_new_tokens: int, seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_new_tokens, temperature=self.temperature, seed=seed, n=self.samples)


def leak_probes(spec: LeakSpec, data_dir: Path, plan: EvalPlan, items: dict[str, list[TofuItem]]) -> list[LeakProbe]:
    """The probes of the run: the forget questions it scores and/or the split's nameless probes."""
    from guard.eval.nameless_probes import nameless_probes

    probes: list[LeakProbe] = []
    if "forget" in spec.sets:
        probes += forget_probes(data_dir, plan.forget_split, [it.index for it in items["forget"]])
    if "nameless" in spec.sets:
        probes += [leak_probe(p) for p in evenly_spread(nameless_probes(data_dir, plan.forget_split), plan.limit)]
    return probes


def leak_systems(systems: Sequence[Any]) -> list[Any]:
    """The systems that get leak rows: all but a worst-case guard row whose served row (same policy
    and action) is in the run, since probes are decided as served in every regime."""
    served = {(s.policy_path, s.action_override) for s in systems if s.kind == "guard" and s.regime == DEFAULT_REGIME}
    return [s for s in systems
            if s.kind != "guard" or s.regime == DEFAULT_REGIME or (s.policy_path, s.action_override) not in served]


def run_key(system: Any, spec: LeakSpec, max_new_tokens: int, seed: int, data_dir: Path, model_dir: Path,
            model_stamp: str) -> dict[str, Any]:
    """What makes a system's leak answers: a cached line is reused only under the same key."""
    policy_sha = hashlib.sha256(Path(system.policy_path).read_bytes()).hexdigest() if system.policy_path else None
    return {"leak_version": LEAK_VERSION, "kind": system.kind, "model": str(model_dir), "model_id": model_stamp,
            "data": str(data_dir), "policy_sha256": policy_sha, "action_override": system.action_override,
            "samples": spec.samples, "temperature": spec.temperature, "seed": seed, "max_new_tokens": max_new_tokens}


def leak_path(out_dir: Path, label: str) -> Path:
    return out_dir / "leak" / f"{label}.jsonl"


async def evaluate_leak(spec: LeakSpec, probes: Sequence[LeakProbe], systems: Sequence[Any], *, out_dir: Path,
                        max_new_tokens: int, seed: int, data_dir: Path, model_dirs: dict[str, Path],
                        model_stamp: Callable[[Path], str], engine_for: Callable[[str], Awaitable[Any]],
                        pipeline_for: Callable[[Any], Awaitable[Any]], progress: bool = True,
                        force: bool = False) -> dict[str, Any]:
    """The leak section: per system and screen, :func:`leak_stats` per probe set (``results.json``'s
    ``leak``), with the per-probe results in ``leak/<label>.jsonl`` (``force``: earlier lines are not reused)."""
    from tqdm.auto import tqdm

    params = spec.params(max_new_tokens, seed)
    chosen = leak_systems(systems)
    timings: dict[str, float] = {}
    results: dict[str, list[ProbeResult]] = {}
    total = sum(len(probes) * len(SCREENS[s.kind]) for s in chosen)
    with tqdm(total=total, desc=f"leak: probes x rows (k={spec.samples}, T={spec.temperature})", disable=not progress) as bar:
        for system in chosen:
            model_dir = model_dirs[system.model]
            if force:
                leak_path(out_dir, system.label).unlink(missing_ok=True)
            log = ProbeLog(leak_path(out_dir, system.label),
                           run_key(system, spec, max_new_tokens, seed, data_dir, model_dir, model_stamp(model_dir)))
            screens = SCREENS[system.kind]
            pending = any(log.get((p.set, p.question, system.label, s)) is None for p in probes for s in screens)
            engine = await engine_for(system.model) if pending else None
            pipeline = await pipeline_for(system) if pending and system.kind == "guard" else None
            bar.set_description(f"leak: {system.label}")
            t0 = time.perf_counter()
            results[system.label] = await answer_probes(probes, screens, engine, pipeline, params, label=system.label,
                                                        log=log, bar=bar)
            log.finish(results[system.label])
            if pending:
                timings[system.label] = round(time.perf_counter() - t0, 1)
    rows = []
    for system in chosen:
        for screen in SCREENS[system.kind]:
            mine = [r for r in results[system.label] if r.system == screen]
            rows.append({"label": system.label, "kind": system.kind, "screen": SCREEN_NAMES[screen],
                         "policy": str(system.policy_path) if system.policy_path else None,
                         "action_override": system.action_override,
                         "actions": sorted({r.action for r in mine}),
                         "sets": {name: leak_stats([r for r in mine if r.set == name]) for name in spec.sets},
                         "elapsed_s": timings.get(system.label)})
    return {"settings": {**asdict(spec), "sets": list(spec.sets), "max_new_tokens": max_new_tokens, "seed": seed,
                         "leak_rouge": LEAK_ROUGE, "probes": {name: sum(p.set == name for p in probes) for name in spec.sets}},
            "rows": rows}
