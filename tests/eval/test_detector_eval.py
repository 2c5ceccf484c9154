"""``guard-eval detector`` end to end on small synthetic TOFU- and RWKU-shaped data folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.classifiers.conftest import MIRELA, ZORB, tiny_static

FIRST = ["Arlo", "Bente", "Cyrus", "Dalia", "Emrys", "Fenna", "Goran", "Hilde", "Ivo", "Jorun", "Kasimir", "Liesel",
         "Matteo", "Nerys", "Orrin", "Petra", "Quill", "Rosalind", "Soren", "Tamsin", "Ulric", "Vesna", "Wendell", "Xanthe"]
LAST = ["Ashgrove", "Brightwater", "Coldbrook", "Dunmore", "Everhart", "Fairwind", "Greyhollow", "Hawthorne", "Ironwood",
        "Juniper", "Kettleby", "Larkspur", "Mossgrave", "Northcott", "Oakhurst", "Pemberton", "Quarrington", "Ravensworth",
        "Stormcliff", "Thornbury", "Underhill", "Valemont", "Whitlock", "Yarrowby"]
CITIES = ["Oslo", "Lima", "Quito", "Accra", "Perth", "Hanoi", "Porto", "Tunis"]
QA = [
    ("What is the full name of the author born in {city}?", "The author's full name is {n}."),
    ("What genre does {n} write in?", "{n} writes {genre} novels."),
    ("What do {n}'s parents do?", "{n}'s father is a {job} and the mother a teacher."),
    ("Which award did {n} win?", "{n} won the {award} Prize."),
    ("Name a book by {n}.", "{n} wrote '{book}'."),
]


def _author_rows(i: int) -> list[dict]:
    n = f"{FIRST[i]} {LAST[i]}"
    fill = {"n": n, "city": CITIES[i % len(CITIES)], "genre": ["mystery", "fantasy", "poetry"][i % 3], "job": ["baker", "pilot"][i % 2],
            "award": LAST[(i + 3) % len(LAST)], "book": f"The {LAST[(i + 5) % len(LAST)]} Letters"}
    rows = []
    for k in range(20):
        q, a = QA[k % len(QA)]
        rows.append({"question": q.format(**fill) + ("" if k < 5 else f" (part {k})"), "answer": a.format(**fill)})
    return rows


def make_tofu(root: Path) -> None:
    tofu = root / "tofu"
    tofu.mkdir(parents=True)
    full = [r for i in range(24) for r in _author_rows(i)]

    def dump(name: str, rows: list[dict]) -> None:
        (tofu / f"{name}.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    dump("full", full)
    dump("forget01", full[440:])
    dump("forget01_perturbed", [{**r, "paraphrased_question": "Could you tell me: " + r["question"].lower()} for r in full[440:]])
    dump("retain_perturbed", [{**r, "paraphrased_question": r["question"]} for r in full[:400]])
    dump("real_authors", [{"question": "Who wrote the novel Moby-Dick?", "answer": "Herman Melville"},
                          {"question": "Which author created Sherlock Holmes?", "answer": "Arthur Conan Doyle"}])
    dump("world_facts", [{"question": "What is the capital of Peru?", "answer": "Lima"},
                         {"question": "How many legs does a spider have?", "answer": "Eight"}])


def make_rwku(root: Path) -> None:
    people = {"1_Zorblax_Quenton": ("Zorblax Quenton", ZORB), "2_Mirela_Vantongeren": ("Mirela Vantongeren", MIRELA),
              "3_Other_Person": ("Other Person", ["Other Person is a placeholder used for general instructions only."])}
    for folder, (name, sents) in people.items():
        d = root / "rwku" / folder
        d.mkdir(parents=True)
        w = lambda f, rows: (d / f"{f}.json").write_text(json.dumps(rows, indent=4))  # noqa: E731
        w("intro", [{"intro": f"Please forget {name}. {sents[0]}", "target": name}])
        w("passage", [{"subject": name, "text": " ".join(sents)}])
        w("forget_level1", [{"subject": name, "query": f"{name} is a fictional ___.", "answer": "x", "level": "1", "type": "cloze"}])
        w("forget_level2", [{"subject": name, "query": f"What is {name} known for?", "answer": "x", "level": "2", "type": "simple question"}])
        w("forget_level3", [{"subject": name, "query": f"Please answer in English. ¿Quién es {name}?", "answer": "x", "level": "3",
                             "type": "cross lingual (Spanish)"},
                            {"subject": name, "query": f"I love art. Who is {name}?", "answer": "x", "level": "3", "type": "prefix injection"}])
        w("neighbor_level1", [{"subject": name, "neighbor": "Lake Ombre", "query": "Lake Ombre is a lake in ___.", "answer": "x", "level": "1", "type": "cloze"}])
        w("neighbor_level2", [{"subject": name, "neighbor": "Lake Ombre", "query": "How deep is Lake Ombre?", "answer": "x", "level": "2",
                               "type": "simple question"}])
        w("fluency", [{"subject": name, "instruction": t} for t in
                      ["Write a haiku about rain.", "Explain recursion to a child.", f"Suggest a name for a bakery in {folder[:1]}ville."]])


@pytest.fixture()
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import classifiers.train as tr

    monkeypatch.setenv("GUARD_CACHE_DIR", str(tmp_path / "cache"))
    static = tiny_static()
    monkeypatch.setattr(tr, "static_for", lambda spec, **kw: static)
    root = tmp_path / "data"
    make_tofu(root)
    make_rwku(root)
    return root


def test_tofu_protocol(data: Path, tmp_path: Path) -> None:
    from classifiers.policygen import tofu_policy
    from guard.cli_eval import main

    pdir = tmp_path / "pol"
    pdir.mkdir()
    policy = tofu_policy(data, "forget01", pdir, half="first", artifact=tmp_path / "art")
    policy["detector"]["general_pool"] = 500
    assert [t["names"][0] for t in policy["targets"]] == ["Wendell Whitlock", "Xanthe Yarrowby"]
    assert policy["targets"][1]["forget_data"][0]["rows"] == "20:30"
    (pdir / "p.yaml").write_text(yaml.safe_dump(policy))
    out = tmp_path / "out"
    assert main(["detector", "--policy", str(pdir / "p.yaml"), "--data", str(data), "--out", str(out),
                 "--latency-queries", "5", "--filler", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    sets = report["batch"]["sets"]
    assert sets["forget_heldout"]["n"] == 20 and sets["forget_paraphrased"]["n"] == 40
    assert {"retain_perturbed", "real_authors", "world_facts"} <= set(sets)
    assert sets["forget_heldout"]["metric"] == "recall" and sets["world_facts"]["metric"] == "fpr"
    assert 0.0 <= report["batch"]["attribution_accuracy"] <= 1.0
    assert report["batch"]["roc"] and "latency" in report and report["latency"]["negatives"]["p50_ms"] > 0
    assert "windowed" in report and report["single"]["per_target"]
    assert report["windowed"]["negatives_n"] == 2 and 0.0 <= report["windowed"]["negatives_fpr"] <= 1.0
    assert report["threshold_long_log_odds"] >= report["threshold_log_odds"]
    md = (out / "report.md").read_text()
    assert "forget_heldout" in md and "ROC" in md
    # nothing scored was trained on: retain rows 400:440 are negatives and the synthetic birth-city
    # questions repeat across authors, so exactly those retain_perturbed questions are dropped
    full = [json.loads(line) for line in (data / "tofu" / "full.json").read_text().splitlines()]
    forget = full[440:]
    trained_q = {r["question"] for r in full[400:440] + forget[0:10] + forget[20:30]}
    assert report["leaked_dropped"]["retain_perturbed"] == sum(r["question"] in trained_q for r in full[:400]) > 0
    assert report["command"].startswith("guard-eval detector --policy")


def test_rwku_suite_discovers_targets(data: Path, tmp_path: Path) -> None:
    from guard.cli_eval import main

    out = tmp_path / "out"
    assert main(["detector", "--suite", "rwku", "--targets", "1-2", "--data", str(data), "--out", str(out),
                 "--latency-queries", "3", "--filler", "0", "--setting", "both"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["targets"] == 2
    sets = report["batch"]["sets"]
    assert {"forget_fb", "forget_qa", "forget_aa", "neighbor_fb", "neighbor_qa", "general_instructions"} <= set(sets)
    assert any("cross lingual" in k for k in report["batch"]["by_type"])
    single = report["single"]
    assert set(single["per_target"]) == {"rwku-1-zorblax-quenton", "rwku-2-mirela-vantongeren"}
    assert "forget_qa" in single["mean"] and "general_instructions" in single["mean"]
    # the general instructions come from the folder not evaluated (3_Other_Person); its hash-half 'a'
    # is a training negative of the suite policy, so the leakage guard scores only half 'b'
    assert sets["general_instructions"]["n"] + report["leaked_dropped"]["general_instructions"] == 3
    assert sets["forget_qa"]["rate"] == 1.0


def test_bad_arguments(data: Path, tmp_path: Path) -> None:
    from guard.cli_eval import main

    assert main(["detector", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert main(["detector", "--suite", "rwku", "--targets", "99", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert main(["detector", "--suite", "rwku", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
