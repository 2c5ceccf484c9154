"""RWKU metrics: hand-computed values; the ROUGE-L port is checked against the ``rouge`` package."""

from __future__ import annotations

import json
import math
import random

import pytest

from guard.eval.metrics import get_metric
from guard.eval.rwku_metrics import (
    NOANSWER, accuracy, argmax_choice, bbh_em, bbh_em_rwku, bbh_exact_match, bbh_extract_answer, exact_match,
    f1_score, fluency_tokenizer_name, mmlu_accuracy, n_gram_entropy, ngram_entropy, ngram_entropy_of_tokens,
    normalize_answer, rouge_l_recall_mean, rwku_prediction, rwku_rouge_l_recall, triviaqa_em, triviaqa_f1,
    truthfulqa_mc1, truthfulqa_mc1_item, truthfulqa_mc2, truthfulqa_mc2_item, word_tokenize,
)
from guard.paths import default_data_dir

# ------------------------------------------------------------------------------ ROUGE-L (RWKU)


@pytest.mark.parametrize("prediction, reference, expected", [
    ("Stephen King", "Stephen King", 1.0),
    ("The author is Stephen King.", "Stephen King", 1.0),
    ("stephen king", "Stephen King", 0.0),                 # case-sensitive
    ("King, Stephen", "Stephen King", 0.5),                # "King," != "King"; LCS = Stephen
    ("York", "New York City", 1 / 3),
    ("the dog", "the cat and the dog", 2 / 4),             # distinct reference words: the cat and dog
    ("France is near Paris", "Paris. France", 1.0),        # '.' splits sentences; union of LCS words
    ("Richard  Bachman\n", "Richard Bachman", 1.0),         # whitespace squeezed
    ("2003", "2003", 1.0),
    ("NOANSWER", "Carrie", 0.0),
])
def test_rwku_rouge_l_recall_hand_values(prediction, reference, expected):
    assert rwku_rouge_l_recall(prediction, reference) == pytest.approx(expected)


def test_rwku_rouge_edge_cases():
    assert rwku_rouge_l_recall("", "Carrie") == 0.0
    assert rwku_rouge_l_recall("...", "Carrie") == 0.0
    with pytest.raises(ValueError, match="no words"):
        rwku_rouge_l_recall("Carrie", "")
    assert rwku_prediction("  \n") == NOANSWER and rwku_prediction(" Carrie \n") == "Carrie"
    assert rouge_l_recall_mean(["Carrie", "", "Different"], ["Carrie", "Carrie", "Different Seasons"]) == \
        pytest.approx((1 + 0 + 0.5) / 3)
    assert get_metric("rwku_rouge_l") is rouge_l_recall_mean
    with pytest.raises(ValueError):
        rouge_l_recall_mean(["a"], ["a", "b"])


def _rouge_cases(n: int = 400) -> list[tuple[str, str]]:
    """(prediction, answer) pairs built from real RWKU answers plus shuffled/noisy predictions."""
    rng = random.Random(0)
    answers = ["Stephen King", "The Shawshank Redemption", "Richard Bachman", "2003", "Different Seasons",
               "the cat and the dog. the dog and the cat", "New York City, New York", "Dr. No"]
    rwku = default_data_dir() / "rwku"
    if rwku.is_dir():
        for folder in sorted(rwku.iterdir())[:3]:
            for level in ("forget_level1.json", "forget_level2.json", "neighbor_level2.json"):
                path = folder / level
                if path.exists():
                    answers += [x["answer"] for x in json.loads(path.read_text(encoding="utf-8"))[:15]]
    vocab = sorted({w for a in answers for w in a.replace(".", " . ").split()}) + ["the", "is", ".", ",", "a"]
    cases = []
    for _ in range(n):
        ans = rng.choice(answers)
        kind = rng.random()
        if kind < 0.3:
            words = ans.split()
            rng.shuffle(words)
            pred = " ".join(words[: rng.randint(1, len(words))])
        elif kind < 0.6:
            pred = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12)))
        else:
            pred = f"The answer is {ans}." + (" " + " ".join(rng.choice(vocab) for _ in range(3)) if kind > 0.8 else "")
        cases.append((pred, ans))
    # tiny vocabulary: many repeated words, so LCS tie-breaks decide which words enter the union
    tiny = ["a", "b", "c", ".", "a.", "b,"]
    for _ in range(n):
        cases.append(tuple(" ".join(rng.choice(tiny) for _ in range(rng.randint(1, 15))) for _ in range(2)))
    return [(p, a) for p, a in cases if a.replace(".", "").strip()]


def test_port_equals_the_rouge_package():
    rouge = pytest.importorskip("rouge")
    scorer = rouge.Rouge()
    cases = [(p, a) for p, a in _rouge_cases() if p.replace(".", "").strip()]  # the package raises on no sentence
    for pred, ans in cases:
        expected = scorer.get_scores(pred, ans)[0]["rouge-l"]["r"]
        assert rwku_rouge_l_recall(pred, ans) == pytest.approx(expected, abs=1e-12), (pred, ans)
    preds, refs = [p for p, _ in cases], [a for _, a in cases]
    avg = scorer.get_scores(hyps=preds, refs=refs, avg=True)["rouge-l"]["r"]
    assert rouge_l_recall_mean(preds, refs) == pytest.approx(avg, abs=1e-12)


# ------------------------------------------------------------------------------- EM / F1

def test_normalize_answer():
    assert normalize_answer("  The Eiffel-Tower, Paris!  ") == "eiffeltower paris"
    assert normalize_answer("An apple a day") == "apple day"


def test_exact_match_and_f1():
    assert exact_match("The Eiffel Tower", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower", "the tower"]) == 0.0
    assert exact_match("tower", ["eiffel tower", "the tower"]) == 1.0
    assert f1_score("Paris France", ["Paris"]) == pytest.approx(2 / 3)     # p = 1/2, r = 1
    assert f1_score("Paris", ["Paris, France", "paris"]) == 1.0            # best reference
    assert f1_score("", ["Paris"]) == 0.0 and f1_score("the", ["a"]) == 1.0  # both empty after normalising
    assert f1_score("London", ["Paris"]) == 0.0
    assert triviaqa_em(["1908", "no idea"], [["1908"], ["Rim of Fire"]]) == 0.5
    assert triviaqa_f1(["US Airways flight", "Rim of Fire"], [["US Airways Flight 1549"], ["Ring of Fire"]]) == \
        pytest.approx((2 * 1 * 0.75 / 1.75 + 2 * (2 / 3) * (2 / 3) / (4 / 3)) / 2)


# ----------------------------------------------------------------------------------- BBH

def test_bbh_extraction():
    assert bbh_extract_answer("Let's think step by step. So the answer is (A).") == "(A)"
    assert bbh_extract_answer("The answer is Yes. Done.") == "Yes"
    assert bbh_extract_answer("  (B)  ") == "(B)"
    assert bbh_extract_answer("the answer is .") == NOANSWER
    assert bbh_extract_answer("") == NOANSWER


def test_bbh_exact_match_standard_and_rwku_compat():
    assert bbh_exact_match("So the answer is (A).", "(A)") == 1.0
    assert bbh_exact_match("So the answer is Yes.", "Yes") == 1.0
    assert bbh_exact_match("So the answer is no.", "Yes") == 0.0
    # RWKU compares with each character of the answer: single-letter options still match...
    assert bbh_exact_match("So the answer is (A).", "(A)", rwku_compat=True) == 1.0
    assert bbh_exact_match("So the answer is (B).", "(A)", rwku_compat=True) == 0.0
    # ...but multi-character answers never do (and a single character of them may)
    assert bbh_exact_match("So the answer is Yes.", "Yes", rwku_compat=True) == 0.0
    assert bbh_exact_match("So the answer is s.", "Yes", rwku_compat=True) == 1.0
    outs, golds = ["the answer is (A).", "the answer is Yes."], ["(A)", "Yes"]
    assert bbh_em(outs, golds) == 1.0 and bbh_em_rwku(outs, golds) == 0.5


# ------------------------------------------------------------------------ multiple choice

def test_mmlu_accuracy_is_argmax_over_choices():
    assert argmax_choice([0.1, 0.5, 0.2, 0.2]) == 1
    assert argmax_choice([0.3, 0.3, 0.1, 0.0]) == 0                      # first on ties
    assert mmlu_accuracy([[0.1, 0.5, 0.2, 0.2], [0.9, 0, 0, 0], [-3.0, -1.0, -2.0, -4.0]], [1, 2, 1]) == \
        pytest.approx(2 / 3)
    assert accuracy([0, 1, 2, 3], [0, 1, 2, 0]) == 0.75


def test_truthfulqa_mc1_and_mc2():
    assert truthfulqa_mc1_item([-1.0, -2.0, -3.0], [1, 0, 0]) == 1.0
    assert truthfulqa_mc1_item([-2.0, -1.0], [1, 0]) == 0.0
    assert truthfulqa_mc1_item([-1.0, -1.0], [1, 0]) == 0.0                # strictly greater
    assert truthfulqa_mc1_item([-5.0, -1.0, -3.0], [0, 1, 0]) == 1.0       # the first *true* choice
    assert truthfulqa_mc2_item([math.log(0.2), math.log(0.3), math.log(0.5)], [1, 1, 0]) == pytest.approx(0.5)
    assert truthfulqa_mc2_item([-1000.0, -1001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)))
    assert truthfulqa_mc1([[-1.0, -2.0], [-2.0, -1.0]], [[1, 0], [1, 0]]) == 0.5
    assert truthfulqa_mc2([[0.0, 0.0]], [[1, 0]]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="true and one false"):
        truthfulqa_mc1_item([-1.0], [1])


# ------------------------------------------------------------------------------- fluency

def test_ngram_entropy_known_values():
    # bigrams (a,b) x2, (b,a) x1 -> H2 = H(2/3, 1/3); trigrams (a,b,a), (b,a,b) -> H3 = 1
    h2 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert ngram_entropy_of_tokens(["a", "b", "a", "b"]) == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    # n distinct tokens: H2 = log2(n - 1), H3 = log2(n - 2)
    toks = [f"w{i}" for i in range(10)]
    assert ngram_entropy_of_tokens(toks) == pytest.approx((2 / 3 * math.log2(9) + 4 / 3 * math.log2(8)) / 2)
    assert ngram_entropy_of_tokens(["x"] * 50) == 0.0                       # degenerate repetition
    assert ngram_entropy_of_tokens(["x"]) == 0.0 and ngram_entropy_of_tokens([]) == 0.0
    assert ngram_entropy_of_tokens(["a", "b"]) == 0.0                        # one bigram, no trigram


def test_fluency_entropy_over_texts():
    fluent = "The quick brown fox jumps over the lazy dog while the cat watches from a sunny window."
    looping = "I don't know. " * 20
    assert ngram_entropy(fluent) > ngram_entropy(looping)
    assert n_gram_entropy([fluent, looping]) == pytest.approx((ngram_entropy(fluent) + ngram_entropy(looping)) / 2)
    assert get_metric("fluency_entropy") is n_gram_entropy


def test_word_tokenizer_matches_nltk_treebank_conventions():
    assert fluency_tokenizer_name() in ("nltk.word_tokenize", "untrained-punkt+treebank")
    assert word_tokenize("Hello, world! It's 3.50 dollars.") == \
        ["Hello", ",", "world", "!", "It", "'s", "3.50", "dollars", "."]
