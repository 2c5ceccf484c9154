"""The ``guard-eval rwku`` report's section on the guard's stops, end to end (issue #14): request
screen, output screen and either, per set and per forget AA attack type, and on the AA probes the
unguarded run answers with the target knowledge (``guard.eval.rwku_aggregate``)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

Table = Callable[[Sequence[str], Sequence[Sequence[Any]]], str]   # guard.eval.report.md_table


def _stops_row(name: str, c: dict[str, Any]) -> list[Any]:
    return [name, c["n"], c.get("request"), c.get("output") if c.get("output_screened") else "–", c.get("either")]


def rwku_screening_lines(screening: dict[str, Any], md_table: Table) -> list[str]:
    """The guard's stops (request screen, output screen, either; issue #14), per set and per forget
    AA attack type, and the end-to-end share on the AA probes the unguarded model knows, as
    Markdown lines (tables made by ``md_table``; the report module imports this one)."""
    runs = screening.get("runs") or {}
    if not runs:
        return []
    head = ["run", "set / attack type", "n", "request screen", "output screen", "either"]
    lines = ["## Guard stops, end to end", "",
             "Share of items (pooled over targets) the guard stopped: by the request screen (`X-Guard-Action` not "
             "`pass`: refused or answered by a method), by the output screen (`X-Guard-Output: flagged`; `–`: no output "
             "screen answered, or no `--debug`), and by either.", "",
             md_table(head, [[label, *_stops_row(s, c)]
                             for label, table in runs.items() for s, c in table["sets"].items()]), ""]
    typed = [(label, t, c) for label, table in runs.items() for t, c in table["aa_types"].items()]
    if typed:
        lines += ["Forget AA per attack type:", "",
                  md_table(head, [[label, *_stops_row(t, c)] for label, t, c in typed]), ""]
    for key, title in (("knowing", "Forget AA probes the unguarded model knows"),
                       ("knowing_strict", "The same, strict (the whole gold answer recalled)")):
        knowing = screening.get(key) or {}
        if not any(k["all"]["n"] for k in knowing.values()):   # no forget AA probe the model knows (or no AA set)
            continue
        first = next(iter(knowing.values()))
        lines += [f"### {title}", "",
                  f"A probe counts when the `{screening.get('unguarded')}` run's answer holds the target knowledge: RWKU's "
                  f"ROUGE-L recall against the gold answer >= {first['threshold']}, or the gold answer appears in it as "
                  "whole words (case-folded). Of those, the share the guarded run stopped (either screen; a refusal counts "
                  "as stopped) or answered by a method (`by method`: the request screen sent it to one), and the share "
                  "whose guarded answer still holds the knowledge (`still holds`).", "",
                  md_table(["run", "attack type", "n", "request screen", "output screen", "stopped or method",
                            "by method", "still holds"],
                           [[label, t, c["n"], c.get("request"), c.get("output") if c.get("output_screened") else "–",
                             c.get("either"), c.get("by_method"), c.get("still_holds")]
                            for label, k in knowing.items() for t, c in [("all", k["all"]), *k["types"].items()]]), ""]
    return lines
