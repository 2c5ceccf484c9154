"""Reports for ``guard-eval``: ``results.json`` (every number), ``report.md`` (tables) and PNG plots,
all written atomically (a reader sees the previous file or the new one, never half of one).

Plots use matplotlib's non-interactive ``Agg`` backend, so they work on a headless server.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from guard.atomic import write_json, write_text
from guard.eval.rwku_report import rwku_screening_lines

# ------------------------------------------------------------------------------------ helpers


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers rounded, ``None`` as ``n/a``; tiny p-values in scientific notation."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    head = "| " + " | ".join(str(h) for h in headers) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"
    body = ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def save_figure(fig: Any, path: Path) -> Path:
    """``fig.savefig`` to a temp file beside ``path``, then an atomic rename."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_outputs(out_dir: Path, results: dict[str, Any], markdown: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "report.md", markdown)
    return {"results": out_dir / "results.json", "report": out_dir / "report.md"}


# ---------------------------------------------------------------------------------------- RWKU

RWKU_FORGET_COLS = (("forget_fb", "FB"), ("forget_qa", "QA"), ("forget_aa", "AA"), ("forget_all", "All"))
RWKU_NEIGHBOR_COLS = (("neighbor_fb", "FB"), ("neighbor_qa", "QA"), ("neighbor_all", "All"))
RWKU_UTILITY_COLS = (("mmlu_acc", "MMLU acc"), ("bbh_em", "BBH EM"), ("bbh_em_rwku", "BBH EM (RWKU-compat)"),
                     ("truthfulqa_mc1", "TruthfulQA MC1"), ("truthfulqa_mc2", "TruthfulQA MC2"),
                     ("triviaqa_em", "TriviaQA EM"), ("triviaqa_f1", "TriviaQA F1"), ("fluency_entropy", "Fluency"))


def rwku_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = _plt()
    runs = results["runs"]
    paths = []
    # forget vs neighbor trade-off: one marker per run (mean), small dots per target
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for run in runs:
        pts = [(t["metrics"].get("forget_all"), t["metrics"].get("neighbor_all")) for t in run["per_target"]]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        agg = run["aggregate"]
        color = None
        if pts:
            sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, alpha=0.35)
            color = sc.get_facecolor()[0]
        if agg.get("forget_all") is not None and agg.get("neighbor_all") is not None:
            ax.scatter([agg["forget_all"]], [agg["neighbor_all"]], s=90, marker="*", color=color, label=run["label"],
                       edgecolors="black", linewidths=0.5)
    ax.set_xlabel("forget ROUGE-L recall, All (lower = more forgotten)")
    ax.set_ylabel("neighbor ROUGE-L recall, All (higher = kept)")
    ax.set_title("RWKU forget / neighbor trade-off")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    paths.append(save_figure(fig, out_dir / "plots" / "rwku_forget_vs_neighbor.png"))
    # per-target bars (forget All and neighbor All)
    targets = [t["name"] for t in results["targets"]]
    for metric, title, fname in (("forget_all", "forget ROUGE-L recall (All)", "rwku_per_target_forget.png"),
                                 ("neighbor_all", "neighbor ROUGE-L recall (All)", "rwku_per_target_neighbor.png")):
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(targets) * max(1, len(runs)) * 0.5 + 2), 3.8))
        width = 0.8 / max(1, len(runs))
        for j, run in enumerate(runs):
            by_name = {t["name"]: t["metrics"].get(metric) for t in run["per_target"]}
            vals = [by_name.get(n) if by_name.get(n) is not None else 0.0 for n in targets]
            ax.bar([i + j * width for i in range(len(targets))], vals, width=width, label=run["label"])
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(targets))])
        ax.set_xticklabels(targets, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(title)
        ax.set_ylim(0, 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        paths.append(save_figure(fig, out_dir / "plots" / fname))
    return paths


def rwku_markdown(results: dict[str, Any], command: str | None = None, plots: Sequence[Path] = (),
                  out_dir: Path | None = None) -> str:
    s = results["settings"]
    runs = results["runs"]
    lines = ["# RWKU results", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        f"Targets: {len(results['targets'])} ({', '.join(t['name'] for t in results['targets'][:12])}"
        f"{' ...' if len(results['targets']) > 12 else ''}); items per set: {s['limit'] or 'all'}; "
        f"prompt format: `{s['prompt_format']}`; multiple choice: `{s['mc_scoring']}`; "
        f"max-tokens cap: {s['max_tokens_cap'] or 'none (RWKU lengths)'}; fluency tokenizer: `{s['fluency_tokenizer']}`.",
        "",
        "Forget and neighbor numbers are ROUGE-L recall (RWKU's `rouge` semantics); each number is the mean over "
        "targets of the per-target mean. Lower forget = more forgotten; higher neighbor / utility = better.",
        "",
        "## Forget and neighbor (ROUGE-L recall)",
        "",
    ]
    headers = ["run", "model", *[f"Forget {n}" for _, n in RWKU_FORGET_COLS], *[f"Neighbor {n}" for _, n in RWKU_NEIGHBOR_COLS]]
    rows = [[r["label"] + (" (ICU)" if r["icu"] else ""), r["model"],
             *[r["aggregate"].get(k) for k, _ in RWKU_FORGET_COLS], *[r["aggregate"].get(k) for k, _ in RWKU_NEIGHBOR_COLS]]
            for r in runs]
    lines += [md_table(headers, rows), ""]
    util_cols = [(k, n) for k, n in RWKU_UTILITY_COLS if any(r["aggregate"].get(k) is not None for r in runs)]
    if util_cols:
        n_util = max(max((v or 0) for k, v in r["aggregate"].items() if k.startswith("n_targets_")
                         and k[len("n_targets_"):] in dict(util_cols)) for r in runs)
        lines += ["## Utility", "",
                  f"On the targets that ship utility files ({n_util} here)."
                  + (" BBH EM is reported twice: standard (whole-answer match) and RWKU-compatible (RWKU's code "
                     "compares with each character of the answer)." if any(k == "bbh_em" for k, _ in util_cols) else "")
                  + (" MMLU / TruthfulQA: " + ("greedy letter answer; TruthfulQA MC2 needs log-likelihoods, so it is "
                                               "n/a." if s["mc_scoring"] == "generate" else "RWKU's log-likelihood scoring."))
                  ,
                  "",
                  md_table(["run", *[n for _, n in util_cols]],
                           [[r["label"] + (" (ICU)" if r["icu"] else ""), *[r["aggregate"].get(k) for k, _ in util_cols]]
                            for r in runs]),
                  ""]
    # per target
    lines += ["## Per target", ""]
    headers = ["target", *[f"{r['label']} forget All" for r in runs], *[f"{r['label']} neighbor All" for r in runs]]
    trows = []
    for t in results["targets"]:
        row: list[Any] = [t["name"]]
        for key in ("forget_all", "neighbor_all"):
            for r in runs:
                found = next((p for p in r["per_target"] if p["target"] == t["key"]), None)
                row.append(found["metrics"].get(key) if found else None)
        trows.append(row)
    lines += [md_table(headers, trows), ""]
    rates = [(r["label"], t["target"], t.get("guard_action_rate") or {}) for r in runs for t in r["per_target"]]
    if any(v is not None for _, _, d in rates for v in d.values()):
        sets = ("forget_fb", "forget_qa", "forget_aa", "neighbor_fb", "neighbor_qa")
        lines += ["## Guard actions", "", "Share of items the guard did not pass (from its `X-Guard-Action` debug header).", "",
                  md_table(["run", "target", *sets], [[lab, tgt, *[d.get(s) for s in sets]] for lab, tgt, d in rates
                                                      if any(v is not None for v in d.values())]), ""]
    lines += rwku_screening_lines(results.get("screening") or {}, md_table)
    errors = [(r["label"], t["target"], t.get("errors") or {}) for r in runs for t in r["per_target"]]
    if any(sum(e.values()) for _, _, e in errors):
        lines += ["## Failed requests", "", "Left out of the metrics (e.g. prompt longer than the server's context).", ""]
        lines += [f"- {lab} / {tgt}: " + ", ".join(f"{k}: {v}" for k, v in e.items() if v) for lab, tgt, e in errors if sum(e.values())]
        lines.append("")
    lines += plots_section(plots, out_dir)
    lines.append(f"Wall time: {results.get('elapsed_s')} s.")
    return "\n".join(lines) + "\n"


def plots_section(plots: Sequence[Path], out_dir: Path | None) -> list[str]:
    """Markdown lines embedding ``plots`` (paths relative to the report), none without plots."""
    if not plots:
        return []
    return ["## Plots", "", *[f"![{Path(p).stem}]({os.path.relpath(p, out_dir) if out_dir else str(p)})" for p in plots], ""]


def write_rwku_report(results: dict[str, Any], out_dir: Path, command: str | None = None) -> dict[str, Path]:
    plots = rwku_plots(results, out_dir)
    paths = write_outputs(out_dir, results, rwku_markdown(results, command, plots, out_dir))
    return {**paths, **{p.stem: p for p in plots}}


# ---------------------------------------------------------------------------------------- TOFU

TOFU_SUMMARY_COLS = (("forget_quality", "Forget quality"), ("forget_quality_even_rows", "FQ even rows"),
                     ("forget_quality_odd_rows", "FQ odd rows"), ("model_utility", "Model utility"),
                     ("forget_Q_A_Prob", "Forget Prob"), ("forget_Q_A_ROUGE", "Forget ROUGE"),
                     ("forget_truth_ratio", "Forget truth ratio"))
TOFU_UTILITY_COLS = (("retain_Q_A_Prob", "Retain Prob"), ("retain_Q_A_ROUGE", "Retain ROUGE"),
                     ("retain_Truth_Ratio", "Retain TR"), ("ra_Q_A_Prob_normalised", "Real-auth Prob"),
                     ("ra_Q_A_ROUGE", "Real-auth ROUGE"), ("ra_Truth_Ratio", "Real-auth TR"),
                     ("wf_Q_A_Prob_normalised", "World Prob"), ("wf_Q_A_ROUGE", "World ROUGE"),
                     ("wf_Truth_Ratio", "World TR"))
_TOFU_SPLITS = (("forget", "forget"), ("retain", "retain"), ("real", "real authors"), ("world", "world facts"))


def tofu_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = _plt()
    systems = results["systems"]
    paths = []
    # forget quality vs model utility (TOFU's standard picture)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for s in systems:
        m = s["metrics"]
        fq, mu = m.get("forget_quality"), m.get("model_utility")
        if fq is None or mu is None:
            continue
        ax.scatter([max(fq, 1e-30)], [mu], s=70, label=s["label"])
        ax.annotate(s["label"], (max(fq, 1e-30), mu), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("forget quality (KS p-value vs retain twin; higher = closer to never trained)")
    ax.set_ylabel("model utility")
    ax.set_title("TOFU: forget quality vs model utility")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    paths.append(save_figure(fig, out_dir / "plots" / "tofu_forget_quality_vs_utility.png"))
    # grouped bars of the main numbers
    keys = [("forget_Q_A_Prob", "forget Prob"), ("forget_Q_A_ROUGE", "forget ROUGE"),
            ("forget_truth_ratio", "forget TR"), ("retain_Q_A_ROUGE", "retain ROUGE"), ("model_utility", "model utility")]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(keys) + 0.4 * len(systems)), 3.8))
    width = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        vals = [s["metrics"].get(k) for k, _ in keys]
        ax.bar([i + j * width for i in range(len(keys))], [v if v is not None else 0.0 for v in vals], width=width,
               label=s["label"], hatch=None)
        for i, v in enumerate(vals):
            if v is None:
                ax.text(i + j * width, 0.01, "n/a", ha="center", fontsize=6, rotation=90)
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(keys))])
    ax.set_xticklabels([n for _, n in keys], fontsize=8)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    paths.append(save_figure(fig, out_dir / "plots" / "tofu_metrics.png"))
    # forget truth-ratio distributions (what the KS test compares)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for s in systems:
        vals = s.get("forget_truth_ratios") or []
        if vals:
            ax.hist(vals, bins=20, range=(0, max(1.0, max(vals))), histtype="step", label=s["label"])
    ax.set_xlabel("forget truth ratio R = P(perturbed)/P(paraphrased), per question")
    ax.set_ylabel("questions")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    paths.append(save_figure(fig, out_dir / "plots" / "tofu_forget_truth_ratios.png"))
    if results.get("leak"):
        paths.append(tofu_leak_plot(results["leak"], out_dir))
    return paths


def _leak_row_name(row: dict[str, Any]) -> str:
    return row["label"] if row["screen"] == "none" else f"{row['label']} ({row['screen']})"


def tofu_leak_plot(leak: dict[str, Any], out_dir: Path) -> Path:
    """Leak rate per system and screen, one bar group per probe set."""
    plt = _plt()
    rows, sets = leak["rows"], leak["settings"]["sets"]
    fig, ax = plt.subplots(figsize=(max(5.5, 0.7 * len(rows) * len(sets) + 2), 3.8))
    width = 0.8 / max(1, len(sets))
    for j, name in enumerate(sets):
        vals = [r["sets"][name]["leak_rate"] for r in rows]
        ax.bar([i + j * width for i in range(len(rows))], [v if v is not None else 0.0 for v in vals], width=width,
               label=f"{name} ({leak['settings']['probes'][name]} probes)")
    ax.set_xticks([i + width * (len(sets) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([_leak_row_name(r) for r in rows], rotation=30, ha="right", fontsize=8)
    st = leak["settings"]
    ax.set_ylabel(f"leak rate (any of k = {st['samples']} samples)")
    ax.set_title(f"TOFU sampling leak, T = {st['temperature']}")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_figure(fig, out_dir / "plots" / "tofu_leak.png")


def tofu_leak_markdown(leak: dict[str, Any]) -> list[str]:
    """The report's "Sampling leak" section (``guard.eval.tofu_leak``)."""
    st = leak["settings"]
    rows = leak["rows"]
    twin = next((r for r in rows if r["kind"] == "retain"), None)
    lines = ["## Sampling leak", "",
             f"Each probe answered k = {st['samples']} times at T = {st['temperature']} (seed {st['seed']}, "
             f"{st['max_new_tokens']} new tokens). A probe **leaks** when any sample has ROUGE-L recall >= "
             f"{st['leak_rouge']} against the gold answer, or names the author when the question did not. Rows: the "
             "model alone (`none`), each guard with output screening off (`input-only`) and as served "
             "(`input+output`). Probes: " + ", ".join(f"{n} {st['probes'][n]}" for n in st["sets"]) + ".", ""]
    for name in st["sets"]:
        title = {"forget": "Forget questions", "nameless": "Nameless probes"}.get(name, name)
        headers = ["system", "screen", "actions", "probes", "leaked", "leak rate", "half a", "half b",
                   "by ROUGE-L", "by name", "samples >= ROUGE", "request flagged", "output stopped"]
        if twin is not None:
            headers.insert(6, "vs twin (points)")
        body = []
        for r in rows:
            x = r["sets"][name]
            halves = x.get("halves") or {}
            cells: list[Any] = [r["label"], r["screen"], ", ".join(r["actions"]), x["probes"], x["leaked"],
                                _pct(x["leak_rate"]), _pct((halves.get("a") or {}).get("leak_rate")),
                                _pct((halves.get("b") or {}).get("leak_rate")), x["rouge"], x["named"],
                                _pct(x["sample_rate"]), x["request_flagged"], x["output_stopped"]]
            if twin is not None:
                ref = twin["sets"][name]["leak_rate"]
                cells.insert(6, None if ref is None or x["leak_rate"] is None else f"{100 * (x['leak_rate'] - ref):+.1f}")
            body.append(cells)
        lines += [f"### {title}", "", md_table(headers, body), ""]
    lines += ["Halves: forget questions a = even rows (the ECO/ULD searches tune on them), b = odd rows (held out); "
              "nameless probes by a hash of the question. Per-probe answers: `leak/<system>.jsonl`.", ""]
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def tofu_markdown(results: dict[str, Any], command: str | None = None, plots: Sequence[Path] = (),
                  out_dir: Path | None = None) -> str:
    st = results["settings"]
    plan = st["plan"]
    systems = results["systems"]
    lines = ["# TOFU results", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        f"Target `{st['target_model']}`, retain twin `{st['retain_model'] or 'none (forget quality n/a)'}`, preset "
        f"`{st.get('preset') or 'n/a'}`; forget split `{plan['forget_split']}`; items per split: "
        + ", ".join(f"{k} {v}" for k, v in st["items"].items())
        + f" (limit {plan['limit'] or 'none'}); greedy, {st['max_new_tokens']} new tokens; seed {st['seed']}.",
        "",
        "Probabilities and truth ratios are teacher-forced through the intervention each question gets (plain "
        "model when the detector does not flag it); refused questions are scored by generation only (ROUGE, refusal "
        "rate) and left out of Prob / truth ratio / KS (see `n scored`).",
        "",
        "`regime`: `served`, the detector decides which questions the method answers (as the server does); "
        "`worst-case`, every retain / real-author / world-fact question goes through the method as if flagged "
        "(the policy's targets in turn), so its model utility is the method's at a 100 % false-positive rate.",
        "",
        "## Summary",
        "",
        md_table(["system", "regime", "model", "actions", *[n for _, n in TOFU_SUMMARY_COLS]],
                 [[s["label"], s.get("regime") or "–", s["model"], ", ".join(s["actions"]),
                   *[s["metrics"].get(k) for k, _ in TOFU_SUMMARY_COLS]]
                  for s in systems], digits=4),
        "",
        "## Model utility breakdown",
        "",
        md_table(["system", *[n for _, n in TOFU_UTILITY_COLS]],
                 [[s["label"], *[s["metrics"].get(k) for k, _ in TOFU_UTILITY_COLS]] for s in systems]),
        "",
        "## Screening and scoring per split",
        "",
        "`flagged`: share of questions the detector flagged; `via method`: share answered by the method (flagged, "
        "or routed by the worst-case regime); `n scored`: questions with teacher-forced scores.",
        "",
        md_table(["system", *[f"{t} flagged" for _, t in _TOFU_SPLITS], *[f"{t} via method" for _, t in _TOFU_SPLITS],
                  *[f"{t} n scored / n" for _, t in _TOFU_SPLITS]],
                 [[s["label"], *[s["metrics"].get(f"{k}_flag_rate") for k, _ in _TOFU_SPLITS],
                   *[s["metrics"].get(f"{k}_intervened_rate") for k, _ in _TOFU_SPLITS],
                   *[f"{s['metrics'].get(f'{k}_n_scored')} / {s['metrics'].get(f'{k}_n')}" for k, _ in _TOFU_SPLITS]]
                  for s in systems]),
        "",
    ]
    if results.get("leak"):
        lines += tofu_leak_markdown(results["leak"])
    timed = [s for s in systems if s.get("elapsed_s") is not None]
    if timed:
        lines += ["Wall time per system (this run; reused systems not listed): "
                  + ", ".join(f"{s['label']} {s['elapsed_s']} s" for s in timed) + ".", ""]
    leak_timed = [r for r in (results.get("leak") or {}).get("rows", []) if r.get("elapsed_s") is not None and r["screen"] != "input-only"]
    if leak_timed:
        lines += ["Leak wall time per system (this run; reused not listed): "
                  + ", ".join(f"{r['label']} {r['elapsed_s']} s" for r in leak_timed) + ".", ""]
    lines += plots_section(plots, out_dir)
    lines.append(f"Total wall time: {results.get('elapsed_s')} s.")
    return "\n".join(lines) + "\n"


def write_tofu_report(results: dict[str, Any], out_dir: Path, command: str | None = None) -> dict[str, Path]:
    plots = tofu_plots(results, out_dir)
    paths = write_outputs(out_dir, results, tofu_markdown(results, command, plots, out_dir))
    return {**paths, **{p.stem: p for p in plots}}
