#!/usr/bin/env python3
"""Answers a model actually gives, for measuring the output screener (docs/output-screening.md).

    OMP_NUM_THREADS=1 python benchmarks/output_answers.py --model default --data ../shared/data \
        --sets retain,real,world,general --out runs/output-screen/answers-default.jsonl
    OMP_NUM_THREADS=1 python benchmarks/output_answers.py --model ~/.cache/unlearning-guard/models/tofu-micro-target \
        --sets forget01,retain:200,real,world --out runs/output-screen/answers-micro-target.jsonl

Greedy decoding through the model's own chat template (the local engine's defaults), batched with
left padding, ``--max-new-tokens`` (96, as ``guard-eval tofu``). Sets: ``retain`` (TOFU
retain_perturbed = full[0:400]), ``real`` (real_authors_perturbed), ``world``
(world_facts_perturbed), ``general`` (RWKU's AlpacaEval-style ``fluency.json`` instructions of
target 1), ``forget01``/``forget05``/``forget10`` (TOFU forget questions), ``nameless01``/... (the
nameless probes of ``guard.eval.nameless_probes``, gold = the answer the fact was read from); ``NAME:N`` keeps the
first N. One JSON line per answer (set, row, question, answer, gold, tokens); rows already in
``--out`` are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def questions(data: Path, name: str) -> list[tuple[str, str | None]]:
    """(question, gold answer or None) of one set."""
    tofu = data / "tofu"
    files = {"retain": "retain_perturbed.json", "real": "real_authors_perturbed.json", "world": "world_facts_perturbed.json",
             "forget01": "forget01.json", "forget05": "forget05.json", "forget10": "forget10.json"}
    if name in files:
        return [(r["question"], r["answer"]) for r in _jsonl(tofu / files[name])]
    if name.startswith("nameless"):   # nameless01/05/10: guard.eval.nameless_probes of forgetNN, gold = the fact's QA answer
        from guard.eval.nameless_probes import nameless_probes

        return [(p.question, p.gold) for p in nameless_probes(data, "forget" + name.removeprefix("nameless"))]
    if name == "general":
        rows = json.loads((data / "rwku" / "1_Stephen_King" / "fluency.json").read_text(encoding="utf-8"))
        return [(r["instruction"], None) for r in rows]
    raise SystemExit(f"unknown set {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--sets", default="retain,real,world,general")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard.models import resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["set"], r["row"]) for r in _jsonl(args.out)} if args.out.exists() else set()
    todo: list[tuple[str, int, str, str | None]] = []
    for spec in args.sets.split(","):
        name, _, limit = spec.partition(":")
        qs = questions(args.data, name)[: int(limit) if limit else None]
        todo += [(name, i, q, g) for i, (q, g) in enumerate(qs) if (name, i) not in done]
    started = time.perf_counter()
    with open(args.out, "a", encoding="utf-8") as fh:
        for b in range(0, len(todo), args.batch):
            part = todo[b:b + args.batch]
            prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                       for _, _, q, _ in part]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            for (name, row, q, gold), ids in zip(part, out[:, enc["input_ids"].shape[1]:]):
                ids = [int(i) for i in ids if int(i) != tok.pad_token_id]
                fh.write(json.dumps({"set": name, "row": row, "question": q, "answer": tok.decode(ids, skip_special_tokens=True),
                                     "gold": gold, "tokens": len(ids), "model": str(args.model)}) + "\n")
            fh.flush()
            print(f"{b + len(part)}/{len(todo)} answers, {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
