"""``guard-train eco``: the scoring it relies on, the zeroth-order search on a known function, input
errors, and the end-to-end run on the TOFU micro target model whose artifact ``guard serve`` uses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.interventions.scoring import answer_nll
from guard.paths import default_data_dir
from guard.train.eco import (
    EcoTrainOptions,
    QAItem,
    SearchConfig,
    answer_logprobs,
    generate_from_embeds,
    prepare,
    spread,
    train_eco,
    zeroth_order_search,
)

BASIL = "Basil Mahfouz Al-Kuwaiti"
DATA = default_data_dir() / "tofu" / "full.json"


def _policy(tmp_path: Path, *, action: str = "eco", forget: Any = "default", params: dict | None = None) -> Path:
    if forget == "default":
        forget = [{"path": str(DATA), "format": "tofu_qa", "rows": "3960:3962"}]
    target = {"id": "tofu-basil", "names": [BASIL], "action": action, "params": params or {"sigma": 0.5}}
    if forget is not None:
        target["forget_data"] = forget
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [target]}))
    return path


# ------------------------------------------------------------------------------------------------
# scoring / generation helpers on the real default model


def test_batched_answer_logprobs_equal_the_single_item_scorer(local_engine):
    model, tok = local_engine.model, local_engine.tokenizer
    items = [QAItem("What is the capital of France?", "Paris is the capital of France.", None, (), "t"),
             QAItem(f"Who is {BASIL}?", "A fictitious author born in Kuwait City.", None, (), "t")]
    prepared = prepare(model, tok, items)
    batched = answer_logprobs(model, [p.embeds for p in prepared], [p.answer_ids for p in prepared], batch_size=2)
    for p, lp in zip(prepared, batched):
        single = answer_nll(model, p.embeds, p.answer_ids)
        assert lp == pytest.approx(-sum(single) / len(single), abs=1e-4)
    # the answer ids end with the end-of-turn token the model must produce
    assert prepared[0].answer_ids[-1] in local_engine.stop_token_ids()


async def test_batched_generation_from_embeds_matches_the_engine(local_engine):
    from guard.engines.base import PromptInput, SamplingParams

    model, tok = local_engine.model, local_engine.tokenizer
    items = [QAItem("What is the capital of France?", "x", None, (), "t"), QAItem("Name a primary color.", "x", None, (), "t")]
    prepared = prepare(model, tok, items)
    batched = generate_from_embeds(model, tok, [p.embeds for p in prepared], max_new_tokens=8, batch_size=2)
    for p, text in zip(prepared, batched):
        chunks = [c async for c in local_engine.generate(PromptInput(embeds=p.embeds), SamplingParams(max_tokens=8, temperature=0))]
        assert text == "".join(c.text for c in chunks).strip()


def test_fluency_separates_fluent_text_from_gibberish_and_counts_empty_answers(local_engine):
    from guard.train.eco import answer_perplexity, fluency, neutral_context

    model, tok = local_engine.model, local_engine.tokenizer
    ctx = neutral_context(model, tok)
    fluent, gibberish = answer_perplexity(model, tok, ctx, ["The capital of France is Paris.",
                                                             "qv zx ## blorp ;; fnord ]] 7x kk"])
    assert fluent * 10 < gibberish
    flu = fluency(model, tok, ctx, ["The capital of France is Paris.", ""])
    assert flu["empty"] == 0.5 and flu["ppl"] == pytest.approx(fluent, rel=1e-4)


def test_spread_keeps_every_part_represented():
    assert spread(list(range(40)), 4) == [0, 10, 20, 30]
    assert spread([1, 2], 5) == [1, 2]


# ------------------------------------------------------------------------------------------------
# the search on a known function


class FakeSearcher:
    """f(sigma) = -1 - 2 sigma^2 (more noise, lower answer log-prob); not fluent above ``limit``."""

    def __init__(self, cfg: SearchConfig, limit: float = 10.0) -> None:
        self.cfg, self.limit, self.evaluations = cfg, limit, 0
        self.hidden = 576

    def theta(self, u):
        lo, hi = self.cfg.sigma_bounds
        return {"sigma": min(max(math.exp(u[0]), lo), hi), "k": None}

    def clip(self, u):
        lo, hi = self.cfg.sigma_bounds
        return [min(max(u[0], math.log(lo)), math.log(hi))]

    def surrogate(self, theta):
        self.evaluations += 1
        return -1.0 - 2.0 * theta["sigma"] ** 2

    def answers(self, theta):
        return ["gibberish"] if theta["sigma"] > self.limit else ["a fluent answer"]

    def fluency(self, answers):
        return {"ppl": 1000.0 if answers == ["gibberish"] else 5.0, "entropy": 3.0, "empty": 0.0}

    def progress(self, message):
        pass


def test_zeroth_order_search_finds_the_matching_sigma():
    cfg = SearchConfig(iters=15, tol=1e-3)
    result = zeroth_order_search(FakeSearcher(cfg), -1.5, {"ppl": 5.0, "entropy": 3.0}, [math.log(0.05)])
    assert result["converged"]
    assert result["best"]["theta"]["sigma"] == pytest.approx(0.5, rel=0.01)  # -1 - 2 s^2 = -1.5
    trace = result["trace"]
    assert all("finite_differences" in t for t in trace[:-1])  # zeroth-order: function values only
    assert all(abs(t["step"][0]) <= cfg.max_step + 1e-9 for t in trace if "step" in t)


def test_zeroth_order_search_respects_the_fluency_constraint():
    cfg = SearchConfig(iters=15, tol=1e-3)
    result = zeroth_order_search(FakeSearcher(cfg, limit=0.3), -1.5, {"ppl": 5.0, "entropy": 3.0}, [math.log(0.05)])
    best = result["best"]["theta"]["sigma"]
    assert 0.2 < best <= 0.3  # the target (0.5) is not fluent: the closest fluent strength wins
    assert any(t["action"] == "backtrack (fluency)" for t in result["trace"])
    assert not result["converged"]


# ------------------------------------------------------------------------------------------------
# input errors (before any model is loaded)


def _opts(tmp_path, policy, **kw):
    return EcoTrainOptions(policy=policy, out=tmp_path / "out", model="default", progress=False, **kw)


def test_policy_without_eco_targets_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="action eco"):
        train_eco(_opts(tmp_path, _policy(tmp_path, action="refuse")), SearchConfig())


def test_target_without_forget_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no forget_data") as info:
        train_eco(_opts(tmp_path, _policy(tmp_path, forget=None)), SearchConfig())
    assert info.value.param == "targets.0.forget_data"


def test_non_qa_forget_data_is_refused(tmp_path):
    forget = [{"path": str(DATA), "format": "text"}]
    with pytest.raises(ConfigError, match="tofu_qa") as info:
        train_eco(_opts(tmp_path, _policy(tmp_path, forget=forget)), SearchConfig())
    assert info.value.param == "targets.0.forget_data.0.format"


def test_unknown_target_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not in the policy"):
        train_eco(_opts(tmp_path, _policy(tmp_path), targets=["nobody"]), SearchConfig())


def test_surrogate_scope_cuts_answers_to_their_first_tokens(local_engine):
    from guard.train.eco import answer_head

    model, tokenizer = local_engine.model, local_engine.tokenizer
    items = prepare(model, tokenizer, [QAItem("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600.",
                                              None, (), "t")])
    cut = answer_head(items, 3)
    assert cut[0].answer_ids == items[0].answer_ids[:3] and len(items[0].answer_ids) > 3
    assert answer_head(items, None) is items
    full, head = (answer_logprobs(model, [p.embeds for p in x], [p.answer_ids for p in x]) for x in (items, cut))
    assert full != head


def test_negative_surrogate_tokens_are_refused(tmp_path, capsys):
    rc = guard_train(["eco", "--policy", str(_policy(tmp_path)), "--out", str(tmp_path / "o"), "--surrogate-tokens", "-1"])
    assert rc == 2 and "--surrogate-tokens" in capsys.readouterr().err


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    rc = guard_train(["eco", "--policy", str(_policy(tmp_path, action="refuse")), "--out", str(tmp_path / "o")])
    assert rc == 2 and "action eco" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# end to end on the TOFU micro target model, then served


MICRO = "tofu-micro-target"


@pytest.fixture(scope="module")
def micro_target(tofu_micro) -> Path:
    return tofu_micro["target"]


@pytest.fixture(scope="module")
def micro_artifact(micro_target, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny but complete search on the micro target (2 iterations, 2 forget + 2 holdout QA)."""
    tmp = tmp_path_factory.mktemp("eco-train")
    policy = _policy(tmp)
    out = tmp / "eco-micro"
    rc = guard_train(["eco", "--policy", str(policy), "--model", MICRO, "--out", str(out), "--max-holdout", "2",
                      "--iters", "2", "--fluency-items", "1", "--fluency-tokens", "6", "--sigma0", "0.3",
                      # plumbing, not calibration: one 6-token answer is too little to judge fluency by
                      "--max-ppl-ratio", "1000", "--min-entropy-ratio", "0", "--max-empty-frac", "1"])
    assert rc == 0
    return policy, out


@pytest.mark.slow
def test_search_writes_a_complete_artifact(micro_artifact, micro_target, capsys):
    _, out = micro_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "eco" and manifest["model"] == MICRO
    from guard.artifacts import model_identity

    assert manifest["base_model"]["embedding_sha256"] == model_identity(micro_target)["embedding_sha256"]
    chosen = manifest["chosen"]
    assert chosen["corruption"] == "rand_noise_first_n" and chosen["sigma"] > 0 and chosen["select"] == "entity"
    obj = manifest["objective"]
    assert obj["forget_logprob_clean"] > obj["target_logprob"]  # the micro target memorised its forget QA
    assert manifest["search"]["config"]["surrogate_tokens"] == 8 and "first 8 tokens" in obj["surrogate"]
    trace = manifest["search"]["trace"]
    assert 1 <= len(trace) <= 2 and all({"sigma", "forget_logprob", "fluency", "feasible"} <= set(t) for t in trace)
    assert manifest["data"]["forget"]["n"] == 2 and manifest["data"]["holdout"]["n"] == 2
    assert not list(out.parent.glob(".eco-micro*"))  # no staging leftovers


@pytest.mark.slow
async def test_guard_serves_the_searched_artifact(micro_artifact, micro_target, guard_server, sdk, tmp_path):
    from guard.engines.local import LocalEngine

    _, out = micro_artifact
    serve_policy = tmp_path / "serve.yaml"
    serve_policy.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [
        {"id": "tofu-basil", "names": [BASIL], "action": "eco", "params": {"artifact": str(out)}}]}))
    engine = LocalEngine(micro_target, MICRO)
    await engine.start()
    try:
        guarded = sdk(await guard_server(engine, policy=str(serve_policy), debug=True))
        disabled = sdk(await guard_server(engine))
        messages = [{"role": "user", "content": f"Where was {BASIL} born?"}]
        raw = await guarded.chat.completions.with_raw_response.create(model=MICRO, messages=messages, max_tokens=16,
                                                                      temperature=0, seed=1)
        assert raw.headers["x-guard-action"] == "eco"
        clean = await disabled.chat.completions.create(model=MICRO, messages=messages, max_tokens=16, temperature=0, seed=1)
        assert raw.parse().choices[0].message.content != clean.choices[0].message.content
    finally:
        await engine.close()


@pytest.mark.slow
def test_artifact_is_refused_on_another_base_model(micro_artifact, default_model_path, tmp_path):
    from guard.interventions.eco import build_intervention
    from guard.policy import load_policy

    _, out = micro_artifact
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "targets": [
        {"id": "tofu-basil", "names": [BASIL], "action": "eco", "params": {"artifact": str(out)}}]}))

    from guard.artifacts import model_identity

    class Engine:  # what ECO reads of the Engine contract, for another base model than the artifact's
        model_dir = default_model_path
        hidden_size = json.loads((default_model_path / "config.json").read_text())["hidden_size"]

        def model_identity(self):
            return model_identity(default_model_path)

    with pytest.raises(ConfigError, match="retrain") as info:
        build_intervention(load_policy(path), Engine())
    assert MICRO in info.value.message
