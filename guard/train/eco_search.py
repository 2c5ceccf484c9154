"""ECO's search, the method's own part: a zeroth-order (finite-difference) search of the corruption
strength in log space with damped Gauss-Newton steps, under the fluency constraint (see
``guard.train.eco`` for the objective). ``Searcher`` evaluates the surrogate and the fluency at a
point; ``zeroth_order_search`` moves the point."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch

from guard.train.eco_data import Prepared
from guard.train.eco_scoring import answer_logprobs, fluency, generate_from_embeds, neutral_context


class Searcher:
    """Holds the prepared data and evaluates the surrogate and the fluency at a parameter point."""

    def __init__(self, model: Any, tokenizer: Any, forget: list[Prepared], cfg: Any,
                 fluency_set: list[Prepared], progress: Callable[[str], None]) -> None:
        from guard.interventions.corruption import get_corruption

        self.model, self.tokenizer, self.forget, self.cfg = model, tokenizer, forget, cfg
        self.fluency_set = fluency_set
        self.hidden = int(model.get_input_embeddings().weight.shape[1])
        self.corruption = get_corruption(cfg.corruption, "corruption")
        self.special = set(getattr(tokenizer, "all_special_ids", ()))
        self.progress = progress
        self.evaluations = 0
        self.context = neutral_context(model, tokenizer)  # what every answer's fluency is scored after

    # parameter <-> log space
    def theta(self, u: Sequence[float]) -> dict[str, Any]:
        values: dict[str, Any] = {"sigma": self.cfg.sigma0, "k": self.cfg.k0}
        for name, x in zip(self.cfg.search, u):
            if name == "sigma":
                lo, hi = self.cfg.sigma_bounds
                values["sigma"] = float(min(max(math.exp(x), lo), hi))
            else:
                values["k"] = int(min(max(round(math.exp(x)), 1), self.hidden))
        return values

    def clip(self, u: list[float]) -> list[float]:
        out = []
        for name, x in zip(self.cfg.search, u):
            if name == "sigma":
                lo, hi = self.cfg.sigma_bounds
                out.append(min(max(x, math.log(lo)), math.log(hi)))
            else:
                out.append(min(max(x, 0.0), math.log(self.hidden)))
        return out

    def eco_config(self, theta: dict[str, Any]) -> Any:
        from guard.interventions.eco import EcoConfig

        return EcoConfig(self.cfg.corruption, theta["sigma"], theta["k"], self.cfg.select)

    def corrupted(self, items: Sequence[Prepared], theta: dict[str, Any]) -> list[torch.Tensor]:
        from guard.interventions.eco import corrupt_prompt

        config = self.eco_config(theta)
        # common random numbers: item i always draws from seed + i, so f is smooth in sigma
        return [corrupt_prompt(p.rendered, p.embeds, config, p.item.names, self.cfg.seed + i, self.special)[0]
                for i, p in enumerate(items)]

    def surrogate(self, theta: dict[str, Any]) -> float:
        self.evaluations += 1
        prompts = self.corrupted(self.forget, theta)
        values = answer_logprobs(self.model, prompts, [p.answer_ids for p in self.forget], self.cfg.batch_size)
        return sum(values) / len(values)

    def answers(self, theta: dict[str, Any]) -> list[str]:
        prompts = self.corrupted(self.fluency_set, theta)
        return generate_from_embeds(self.model, self.tokenizer, prompts, self.cfg.fluency_tokens, self.cfg.batch_size)

    def fluency(self, answers: Sequence[str]) -> dict[str, float]:
        return fluency(self.model, self.tokenizer, self.context, answers, self.cfg.batch_size)


def _fmt(theta: dict[str, Any]) -> str:
    parts = []
    if theta.get("sigma") is not None:
        parts.append(f"sigma={theta['sigma']:.4g}")
    if theta.get("k") is not None:
        parts.append(f"k={theta['k']}")
    return " ".join(parts) or "-"


def zeroth_order_search(s: Searcher, target_level: float, baseline_fluency: dict[str, float],
                        u0: list[float]) -> dict[str, Any]:
    """Minimise (f(theta) - r)^2 under the fluency constraint; returns the chosen point and the trace."""
    cfg = s.cfg
    bounds = {"max_ppl": baseline_fluency["ppl"] * cfg.max_ppl_ratio,
              "min_entropy": baseline_fluency["entropy"] * cfg.min_entropy_ratio,
              "max_empty": cfg.max_empty_frac}
    u = s.clip(list(u0))
    trace: list[dict[str, Any]] = []
    feasible_u: list[float] | None = None  # the last feasible iterate
    infeasible: list[list[float]] = []  # iterates that broke the fluency bound
    best: dict[str, Any] | None = None
    converged = False
    started = time.perf_counter()
    for it in range(cfg.iters):
        t0 = time.perf_counter()
        theta = s.theta(u)
        f = s.surrogate(theta)
        resid = f - target_level
        answers = s.answers(theta)
        flu = s.fluency(answers)
        feasible = (flu["ppl"] <= bounds["max_ppl"] and flu["entropy"] >= bounds["min_entropy"]
                    and flu.get("empty", 0.0) <= bounds["max_empty"])
        entry: dict[str, Any] = {"iter": it, **theta, "u": [round(x, 6) for x in u], "forget_logprob": f,
                                 "target_logprob": target_level, "residual": resid, "fluency": flu,
                                 "feasible": feasible, "example_answer": answers[0] if answers else ""}
        if feasible and (best is None or abs(resid) < abs(best["residual"])):
            best = {"theta": theta, "residual": resid, "forget_logprob": f, "fluency": flu, "answers": answers,
                    "iter": it}
        if feasible and abs(resid) <= cfg.tol:
            entry["action"] = "converged"
            converged = True
            entry["time_s"] = round(time.perf_counter() - t0, 2)
            trace.append(entry)
            s.progress(f"[{it + 1}/{cfg.iters}] {_fmt(theta)}  f={f:.4f}  target={target_level:.4f}  "
                       f"ppl={flu['ppl']:.1f}  H={flu['entropy']:.2f}  converged")
            break
        if not feasible:
            infeasible.append(list(u))
            # fluency violated: pull back halfway (log space) towards the last feasible point (or down)
            if feasible_u is not None:
                new_u = [(a + b) / 2 for a, b in zip(feasible_u, u)]
            else:
                new_u = [x - cfg.max_step for x in u]
            entry["action"] = "backtrack (fluency)"
        else:
            feasible_u = list(u)
            grads = []
            for j in range(len(u)):
                up, down = list(u), list(u)
                up[j] += cfg.mu
                down[j] -= cfg.mu
                f_up, f_down = s.surrogate(s.theta(up)), s.surrogate(s.theta(down))
                grads.append((f_up - f_down) / (2 * cfg.mu))
                entry.setdefault("finite_differences", []).append(
                    {"param": cfg.search[j], "f_plus": f_up, "f_minus": f_down, "df_du": grads[-1]})
            norm2 = sum(g * g for g in grads)
            if norm2 < 1e-12:
                # flat: the corruption does not move f at this scale; grow it by the largest step
                step = [cfg.max_step if resid > 0 else -cfg.max_step for _ in u]
                entry["action"] = "flat: step"
            else:
                # Levenberg-Marquardt on 0.5 * resid^2 (one residual): step = -resid * g / (|g|^2 + lambda)
                step = [-resid * g / (norm2 + cfg.damping) for g in grads]
                entry["action"] = "gauss-newton step"
            step = [max(-cfg.max_step, min(cfg.max_step, d)) for d in step]
            new_u = [a + d for a, d in zip(u, step)]
            # never step into (or past) a strength already found disfluent: bisect towards it instead
            beyond = [b for b in infeasible if all(n >= x for n, x in zip(new_u, b)) and any(x > a for x, a in zip(b, u))]
            if beyond:
                nearest = min(beyond, key=lambda b: sum((x - a) ** 2 for x, a in zip(b, u)))
                new_u = [(a + x) / 2 for a, x in zip(u, nearest)]
                entry["action"] += " (capped: bisect towards the nearest disfluent strength)"
            entry["step"] = [n - a for n, a in zip(new_u, u)]
        new_u = s.clip(new_u)
        entry["time_s"] = round(time.perf_counter() - t0, 2)
        trace.append(entry)
        s.progress(f"[{it + 1}/{cfg.iters}] {_fmt(theta)}  f={f:.4f}  target={target_level:.4f}  "
                   f"ppl={flu['ppl']:.1f}  H={flu['entropy']:.2f}  empty={flu['empty']:.2f}  {'ok' if feasible else 'NOT fluent'}  "
                   f"({entry['time_s']:.1f}s) -> {_fmt(s.theta(new_u))}")
        if new_u == u:
            entry["action"] += " (no change: at a bound)"
            break
        u = new_u
    return {"best": best, "trace": trace, "converged": converged, "bounds": bounds,
            "evaluations": s.evaluations, "time_s": round(time.perf_counter() - started, 1)}
