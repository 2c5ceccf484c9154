"""False stops of the output screen, measured through the serving path (issue #14).

Benign questions, that ask about nothing the policy forgets, are answered by the guard as served
(``guard.eval.leak.served_answers`` with the ``input+output`` system: the request screen decides,
the plain model or the target's method answers, and ``screened_chunks`` screens the answer as it
streams). An answer is *cut* when the serving path's own counter of output-screen stops
(``guard_output_flagged_total``) rose while it was produced. A request the request screen flags is
not an output stop: it is counted apart (``request_flagged``), the detector's false positive.

A cut is a *caught leak*, not a false stop, when the answer the guard would have sent without its
output screen (the ``input-only`` system, answered again for cut questions only) names the stopped
target by its whole name or an alias (``NameFinder`` kinds ``full``/``inverted``: a given name or a
surname alone does not count, so a stop on "Basil" in a recipe stays a false stop). Over-fitted
models name their forget authors in unrelated answers ("The first person on the Moon was Nikolai
Abilov"); stopping that is the screen's job.

Sets (``BENIGN_SETS``), all from the data folder: ``retain`` (TOFU ``retain_perturbed`` = the first
20 authors of ``full.json``, never a forget split), ``real`` (``real_authors_perturbed``), ``world``
(``world_facts_perturbed``), ``general`` (RWKU's ``fluency.json`` instructions of every target
folder, AlpacaEval-style, deduplicated in folder order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from scipy.stats import beta

from classifiers.names import NameFinder
from guard.engines.base import Engine, SamplingParams
from guard.eval.leak import served_answers
from guard.metrics import GuardMetrics
from guard.policy import Policy

BENIGN_SETS = ("retain", "real", "world", "general")
TOFU_FILES = {"retain": "retain_perturbed", "real": "real_authors_perturbed", "world": "world_facts_perturbed"}
WHOLE_NAME_KINDS = ("full", "inverted")


def benign_questions(data_dir: Path, name: str) -> list[str]:
    """The questions of one benign set, in the data's order."""
    if name in TOFU_FILES:
        from guard.data.tofu import load_rows

        return [row["question"] for row in load_rows(data_dir, TOFU_FILES[name])]
    if name == "general":
        from guard.data.rwku import discover_targets

        instructions = [row["instruction"] for t in discover_targets(data_dir) if "fluency" in t.sets
                        for row in t.load("fluency")]
        return list(dict.fromkeys(instructions))
    raise ValueError(f"unknown benign set {name!r}; known: {', '.join(BENIGN_SETS)}")


@dataclass
class BenignAnswer:
    set: str
    question: str
    action: str                 # what the request screen decided (pass, or the flagged target's action)
    request_flagged: bool
    cut: bool                   # the output screen stopped the answer (guard_output_flagged_total rose)
    answer: str                 # what the client received
    stops: int = 0              # the counter's rise (a re-answer stopped again counts twice)
    target_id: str | None = None
    reason: str | None = None   # name | date | title | semantic | unscreened
    matched: str | None = None
    uncut_answer: str | None = None   # what input-only screening would have sent (cut answers only)
    names_target: bool | None = None  # the uncut answer names the stopped target (whole name or alias)
    sample: int = 0             # which of ``--samples`` answers to the question (0: greedy or the first)

    @property
    def false_stop(self) -> bool:
        return self.cut and not self.names_target


def names_target(policy: Policy, target_id: str | None, text: str) -> bool:
    """Whether ``text`` names ``target_id`` by its whole name or an alias (either name order)."""
    if target_id is None:
        return False
    try:
        target = policy.target(target_id)
    except KeyError:
        return False
    finder = NameFinder({target_id: [*target.names, *target.aliases]})
    return bool(finder.mentions(text, WHOLE_NAME_KINDS))


async def answer_benign(set_name: str, question: str, engine: Engine, pipeline: Any, params: SamplingParams,
                        metrics: GuardMetrics, sample: int = 0) -> BenignAnswer:
    """One benign question answered as served; a cut one is answered again without the output
    screen, to judge whether the stop caught a leak. A sampled answer (``params.seed`` set) is
    answered again with the same seed, so the uncut answer is the one the screen cut."""
    served = await served_answers(question, "input+output", engine, pipeline, params, metrics)
    result = BenignAnswer(set_name, question, served.action, served.request_flagged, served.output_cuts > 0,
                          served.answers[0], served.output_cuts, sample=sample)
    if result.cut:
        hit = served.hit
        uncut = await served_answers(question, "input-only", engine, pipeline, params)
        result.target_id, result.reason, result.matched = (hit.target_id, hit.reason, hit.text) if hit else (None, None, None)
        result.uncut_answer = uncut.answers[0]
        result.names_target = names_target(pipeline.policy, result.target_id, uncut.answers[0])
    return result


def upper_bound(events: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``events`` times in ``n``."""
    if n == 0:
        return 1.0
    if events >= n:
        return 1.0
    return float(beta.ppf(confidence, events + 1, n - events))


def summarise(results: Sequence[BenignAnswer]) -> dict[str, dict[str, Any]]:
    """Per set, and over all sets (``all``): answers, request flags, output cuts, false stops."""
    out: dict[str, dict[str, Any]] = {}
    groups = [(s, [r for r in results if r.set == s]) for s in dict.fromkeys(r.set for r in results)]
    for name, rows in groups + [("all", list(results))]:
        if not rows:
            continue
        n = len(rows)
        cut = sum(r.cut for r in rows)
        false = sum(r.false_stop for r in rows)
        out[name] = {"answers": n, "request_flagged": sum(r.request_flagged for r in rows),
                     "cut": cut, "cut_rate": cut / n, "caught_leaks": cut - false,
                     "false_stops": false, "false_stop_rate": false / n, "false_stop_upper95": upper_bound(false, n),
                     "reasons": {k: sum(r.reason == k for r in rows if r.cut) for k in sorted({r.reason or "?" for r in rows if r.cut})}}
    return out


def decoding(settings: dict[str, Any]) -> str:
    """How the answers were drawn, in words: greedy, or k samples per question at temperature T."""
    samples = settings.get("samples", 1)
    if not settings.get("temperature"):
        return "greedy"
    return f"{samples} sample{'s' if samples > 1 else ''} per question at temperature {settings['temperature']:g}"


def report_lines(summary: dict[str, dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    lines = [f"False stops through the serving path: model {settings['model']}, policy {settings['policy']}, "
             f"{decoding(settings)}, {settings['max_new_tokens']} new tokens", "",
             "| set | answers | request flagged | output cut | of which name the target | false stops | rate | 95 % upper |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in summary.items():
        lines.append(f"| {name} | {row['answers']} | {row['request_flagged']} | {row['cut']} | {row['caught_leaks']} | "
                     f"{row['false_stops']} | {row['false_stop_rate']:.1%} | {row['false_stop_upper95']:.1%} |")
    return lines


def results_json(results: Sequence[BenignAnswer], summary: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {"settings": settings, "summary": summary,
            "answers": [{**asdict(r), "false_stop": r.false_stop} for r in results]}
