"""SPUL's training data: the forget QA of the chosen targets with the answers to train towards
("I don't know" lines or perturbed answers), the retain QA (keep data or ``--retain``), encoded for
the served model's chat template and split into training and held-out sets.

Reading the policy's sources, choosing targets and the held-out split are the trainers' shared
steps (``guard.train.method_data``); what is SPUL's own is the unlearning answer and the encoding
with the soft prompt's insertion point (``guard.train.spul_objective.encode_example``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from classifiers.sources import QARecord, read_qa, read_records
from guard.errors import ConfigError
from guard.train.method_data import (SourceRef, forget_sources, holdout_split, keep_sources, read_qa_sources, select_targets,
                                     source_record, with_forget_data)
from guard.train.spul_counterfactual import Teacher, choose_stand_ins, counterfactual_labels, hide_target
from guard.train.spul_objective import Example

QAItem = QARecord
"""A forget or retain QA pair (question, answer, source file, row)."""

QA_PURPOSE = "SPUL trains on question/answer data"
MIN_ITEMS_TO_SPLIT = 2  # two items: one to train on, one held out


@dataclass
class SpulData:
    forget_train: list[Example]
    forget_val: list[Example]
    retain_train: list[Example]
    retain_val: list[Example]
    sources: dict[str, Any]


def load_qa_source(source: Any, param: str) -> list[QARecord]:
    """Question/answer pairs of a policy ``DataSource`` (``format: tofu_qa``), sliced by ``rows``."""
    return read_qa(source, param, purpose=QA_PURPOSE)


def load_idk_lines(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"no 'I don't know' answers at {path}; pass --idk-file or --data pointing at shared/data",
                          param="idk_file") from None
    if not lines:
        raise ConfigError(f"{path} is empty", param="idk_file")
    return lines


def perturbed_answers(forget: Sequence[QARecord], data_dir: Path | None) -> dict[str, list[str]]:
    """Perturbed answers by question, from ``*_perturbed.json`` beside the sources (and in the TOFU dir)."""
    folders = {Path(item.source).parent for item in forget}
    if data_dir is not None:
        tofu = Path(data_dir) / "tofu"
        folders.add(tofu if tofu.is_dir() else Path(data_dir))
    wanted = {item.question for item in forget}
    found: dict[str, list[str]] = {}
    for folder in sorted(folders):
        for path in sorted(folder.glob("*_perturbed.json")):
            for rec in read_records(path, "forget_target"):
                if not isinstance(rec, dict):
                    continue
                q, pert = rec.get("question"), rec.get("perturbed_answer")
                if q in wanted and q not in found and isinstance(pert, list) and pert:
                    found[q] = [str(p) for p in pert]
    missing = [q for q in wanted if q not in found]
    if missing:
        raise ConfigError(f"--forget-target perturbed: no perturbed answers for {len(missing)} of {len(wanted)} forget "
                          f"questions (e.g. {missing[0]!r}) in *_perturbed.json beside the forget data; use --forget-target idk",
                          param="forget_target")
    return found


def _unique_questions(items: Sequence[QARecord], exclude: set[str] = frozenset()) -> list[QARecord]:  # type: ignore[assignment]
    seen: set[str] = set(exclude)
    out = []
    for it in items:
        if it.question not in seen:
            seen.add(it.question)
            out.append(it)
    return out


def collect_data(policy: Any, tokenizer: Any, cfg: Any, *, targets: Sequence[str] | None = None,
                 retain: Sequence[SourceRef] | None = None, data_dir: Path | None = None,
                 idk_file: Path | None = None, teacher: Teacher | None = None) -> SpulData:
    """Encode the forget and retain QA (split into train/held-out) for ``tokenizer`` (``cfg``: a ``SpulConfig``).

    ``teacher`` (the frozen model's greedy answers) is needed for ``forget_target='counterfactual'``."""
    rng = random.Random(cfg.seed)
    chosen = with_forget_data(select_targets(policy, targets),
                              "no selected target has forget_data: SPUL needs the forget QA to train on "
                              "(add forget_data: [{path: .../full.json, format: tofu_qa, rows: '3960:4000'}])")
    sources: dict[str, Any] = {"targets": [t.id for _, t in chosen], "forget": [], "retain": []}
    forget: list[QARecord] = []
    target_of: dict[str, str] = {}
    for ref, items in read_qa_sources(forget_sources(chosen), QA_PURPOSE):
        forget += items
        target_of.update({it.question: str(ref.target_id) for it in items if it.question not in target_of})
        sources["forget"].append({"target": ref.target_id, **source_record(ref, len(items))})
    retain_items: list[QARecord] = []
    for ref, items in read_qa_sources(list(retain) if retain else keep_sources(chosen), QA_PURPOSE):
        retain_items += items
        sources["retain"].append(source_record(ref, len(items)))
    # one example per distinct question; a forget question is never a retain question
    forget = _unique_questions(forget)
    retain_items = _unique_questions(retain_items, {it.question for it in forget})
    needs_retain = cfg.weights.retain > 0 or cfg.weights.kl > 0
    if needs_retain and not retain_items:
        raise ConfigError("no retain QA: the selected targets have no keep_data; add keep_data to the policy, pass "
                          "--retain PATH, or train without the retain terms (--w-retain 0 --w-kl 0)", param="keep_data")
    if cfg.max_retain is not None and len(retain_items) > cfg.max_retain:
        retain_items = sorted(rng.sample(retain_items, cfg.max_retain), key=lambda it: (it.source, it.row))
    sources["n_forget"], sources["n_retain"] = len(forget), len(retain_items)

    names = {t.id: t.all_names for _, t in chosen}
    stand_ins: dict[str, str] = {}
    if cfg.forget_target in ("counterfactual", "distill"):  # one invented name per target
        corpus = [text for it in [*forget, *retain_items] for text in (it.question, it.answer)]
        stand_ins = choose_stand_ins(sorted(names), cfg.stand_ins, corpus, rng)
    if cfg.forget_target == "idk":
        idk_path = Path(idk_file) if idk_file else (Path(data_dir) if data_dir else _default_data()) / "tofu" / "idontknow.jsonl"
        lines = load_idk_lines(idk_path)
        targets_text = {it.question: rng.choice(lines) for it in forget}
        sources["idk_file"] = str(idk_path)
    elif cfg.forget_target == "distill":
        # the gold answer, read by the model as a teacher would read it about the stand-in
        # (``guard.train.spul_distill``; the teacher's log-probs are attached once the model is loaded)
        targets_text = {it.question: it.answer for it in forget}
        teacher_pairs = {}
        for it in forget:
            tid = target_of[it.question]
            teacher_pairs[it.question] = (hide_target(it.question, names[tid], stand_ins[tid]),
                                          hide_target(it.answer, names[tid], stand_ins[tid]))
        sources["distill"] = {"stand_ins": stand_ins,
                              "teacher": [{"question": q, "asked": a, "answer": b} for q, (a, b) in teacher_pairs.items()]}
    elif cfg.forget_target == "uld":
        # the gold answer, read as ULD's logit difference reads it (the teacher's log-probs are attached
        # once the model is loaded: ``guard.train.spul_distill.attach_uld_teacher``)
        targets_text = {it.question: it.answer for it in forget}
    elif cfg.forget_target == "counterfactual":
        if teacher is None:
            raise ConfigError("--forget-target counterfactual needs the model to answer the name-swapped questions",
                              param="forget_target")
        labels = counterfactual_labels(forget, target_of, names, stand_ins, teacher)
        targets_text = {q: lab.label for q, lab in labels.items()}
        sources["counterfactual"] = {"stand_ins": stand_ins,
                                     "labels": [{"question": lab.question, "asked": lab.asked, "label": lab.label}
                                                for lab in labels.values()]}
    else:
        pert = perturbed_answers(forget, data_dir or _default_data())
        targets_text = {it.question: rng.choice(pert[it.question]) for it in forget}
    sources["forget_target"] = cfg.forget_target

    def encode(item: QARecord, answer: str, kind: str) -> Example:
        example = encode_example_checked(tokenizer, item, answer, cfg, kind)
        if kind == "forget" and cfg.forget_target == "distill":
            example.meta["teacher_question"], example.meta["teacher_answer"] = teacher_pairs[item.question]
        return example

    f_train, f_val = holdout_split(forget, cfg.val_fraction, rng, min_items=MIN_ITEMS_TO_SPLIT)
    r_train, r_val = holdout_split(retain_items, cfg.val_fraction, rng, min_items=MIN_ITEMS_TO_SPLIT)
    data = SpulData(
        forget_train=[encode(it, targets_text[it.question], "forget") for it in f_train],
        forget_val=[encode(it, targets_text[it.question], "forget") for it in f_val],
        retain_train=[encode(it, it.answer, "retain") for it in r_train],
        retain_val=[encode(it, it.answer, "retain") for it in r_val],
        sources=sources,
    )
    sources["held_out"] = {"forget": [[e.meta["source"], e.meta["row"]] for e in data.forget_val],
                           "retain": [[e.meta["source"], e.meta["row"]] for e in data.retain_val]}
    return data


def encode_example_checked(tokenizer: Any, item: QARecord, answer: str, cfg: Any, kind: str) -> Example:
    from guard.train.spul_objective import encode_example

    try:
        return encode_example(tokenizer, item.question, answer, position=cfg.position, max_length=cfg.max_length,
                              gold=item.answer, system_prompt=cfg.system_prompt, kind=kind, source=item.source, row=item.row)
    except ValueError as exc:
        raise ConfigError(f"{item.source} row {item.row}: {exc}", param="max_length") from None


def _default_data() -> Path:
    from guard.paths import default_data_dir

    return default_data_dir()
