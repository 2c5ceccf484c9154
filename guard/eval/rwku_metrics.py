"""RWKU metrics, as RWKU's own evaluation code computes them (jinzhuoran/RWKU,
``LLaMA-Factory/src/llmtuner/eval/eval_*.py``).

- **Forget / neighbor FB, QA, AA**: ROUGE-L *recall* of the stripped greedy answer against the gold
  answer, from the ``rouge`` package (pltrdy, 1.0.1): ``Rouge().get_scores(hyps, refs,
  avg=True)['rouge-l']['r']``, i.e. the mean of the per-item recalls. That package's ROUGE-L is
  *summary level* over sentences split on ``.``, words split on single spaces, case-sensitive, and
  counts distinct words (``exclusive=True``). :func:`rwku_rouge_l_recall` is a line-by-line port of
  it (the package is not a dependency; the tests check the port against it when it is installed).
  An empty answer is scored as the string ``NOANSWER``, as RWKU does.
- **MMLU** (Gen): accuracy of the argmax over the A-D next-token probabilities.
- **BBH** (Rea): the text after "the answer is" up to the next period (else the whole stripped
  output), exact match after SQuAD-style normalisation. RWKU passes the gold answer as a *string*
  where its ``EM`` expects a list of references, so it effectively compares the prediction with
  each *character* of the answer; :func:`bbh_exact_match` with ``rwku_compat=True`` reproduces that
  (numbers comparable with RWKU's tables), the default compares with the whole answer.
- **TruthfulQA** (Tru): MC1 = the first true choice scores strictly above every false one; MC2 =
  normalised probability mass of the true choices; scores are summed completion log-probs.
- **TriviaQA** (Fac): EM and token F1, max over the gold aliases, SQuAD-style normalisation.
- **Fluency** (Flu): ROME's n-gram entropy: per text, the mean of ``[2/3 * H2, 4/3 * H3]`` where
  ``Hn`` is the base-2 entropy of the text's n-gram frequency distribution over NLTK word tokens;
  then the arithmetic mean over texts.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

from guard.eval.metrics import mean, register

NOANSWER = "NOANSWER"

# ------------------------------------------------------------------- ROUGE-L recall (RWKU's)


def _rouge_sentences(text: str) -> list[str]:
    return [" ".join(s.split()) for s in text.split(".") if len(s) > 0]


def _lcs_words(x: list[str], y: list[str]) -> set[str]:
    """Words of the LCS of ``x`` and ``y`` that ``rouge``'s ``_recon_lcs`` picks (same tie-breaks)."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        xi, row, prev = x[i - 1], table[i], table[i - 1]
        for j in range(1, m + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    words: set[str] = set()
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rwku_rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``prediction`` vs ``reference`` exactly as ``rouge.Rouge`` 1.0.1 computes it.

    Differences from ``rouge_score``: no lower-casing, stemming or punctuation stripping; ``.`` splits
    sentences; recall counts distinct reference words. A prediction with no sentence (``""``,
    ``"..."``) scores 0 here, where the package raises ``ValueError``.
    """
    hyp = _rouge_sentences(prediction)
    ref = _rouge_sentences(reference)
    if not ref:
        raise ValueError(f"rouge-l: the reference {reference!r} has no words")
    if not hyp:
        return 0.0
    ref_words = [s.split(" ") for s in ref]
    hyp_words = [s.split(" ") for s in hyp]
    m = len({w for words in ref_words for w in words})
    union: set[str] = set()
    for r in ref_words:
        for h in hyp_words:
            union |= _lcs_words(r, h)
    return len(union) / m


def rwku_prediction(output: str) -> str:
    """RWKU's post-processing of a generated answer: stripped; empty -> ``NOANSWER``."""
    out = output.strip()
    return out if out else NOANSWER


@register("rwku_rouge_l")
def rouge_l_recall_mean(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Mean ROUGE-L recall over items (RWKU's forget/neighbor FB, QA and AA scores)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    return mean(rwku_rouge_l_recall(rwku_prediction(p), a) for p, a in zip(predictions, answers))


# --------------------------------------------------------------------------------- EM / F1

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop articles, squeeze whitespace (SQuAD / RWKU order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    pred = _tokens(prediction)
    return float(max(int(_tokens(ref) == pred) for ref in references))


def f1_score(prediction: str, references: Sequence[str]) -> float:
    """Best token-level F1 over the references."""
    pred = _tokens(prediction)
    best = 0.0
    for ref in references:
        gold = _tokens(ref)
        if not gold or not pred:
            score = float(gold == pred)
        else:
            common = sum((Counter(gold) & Counter(pred)).values())
            if common == 0:
                score = 0.0
            else:
                precision, recall = common / len(pred), common / len(gold)
                score = 2 * precision * recall / (precision + recall)
        best = max(best, score)
    return best


@register("triviaqa_em")
def triviaqa_em(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    _same_length(predictions, answers)
    return mean(exact_match(p, refs) for p, refs in zip(predictions, answers))


@register("triviaqa_f1")
def triviaqa_f1(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    _same_length(predictions, answers)
    return mean(f1_score(p, refs) for p, refs in zip(predictions, answers))


# ------------------------------------------------------------------------------------- BBH

_BBH_ANSWER = re.compile(r"[t|T]he answer is (.*?)\.")


def bbh_extract_answer(output: str) -> str:
    """The text after "the answer is" up to the next ``.``; else the stripped output; ``NOANSWER`` if empty."""
    found = _BBH_ANSWER.search(output)
    pred = found.group(1).strip() if found else output.strip()
    return pred if pred else NOANSWER


def bbh_exact_match(output: str, answer: str, rwku_compat: bool = False) -> float:
    refs = list(answer) if rwku_compat else [answer]
    return exact_match(bbh_extract_answer(output), refs)


@register("bbh_em")
def bbh_em(outputs: Sequence[str], answers: Sequence[str], rwku_compat: bool = False) -> float:
    _same_length(outputs, answers)
    return mean(bbh_exact_match(o, a, rwku_compat) for o, a in zip(outputs, answers))


@register("bbh_em_rwku")
def bbh_em_rwku(outputs: Sequence[str], answers: Sequence[str]) -> float:
    """BBH exact match with RWKU's per-character comparison (see the module docstring)."""
    return bbh_em(outputs, answers, rwku_compat=True)


# ------------------------------------------------------------------------ multiple choice

def argmax_choice(scores: Sequence[float]) -> int:
    """Index of the best score (the first on ties, like ``torch.argmax``)."""
    if len(scores) == 0:
        raise ValueError("argmax_choice: no scores")
    return int(np.argmax(np.asarray(scores, dtype=np.float64)))


@register("accuracy")
def accuracy(predictions: Sequence[int], answers: Sequence[int]) -> float:
    _same_length(predictions, answers)
    return mean(float(int(p) == int(a)) for p, a in zip(predictions, answers))


@register("mmlu_accuracy")
def mmlu_accuracy(choice_scores: Sequence[Sequence[float]], answers: Sequence[int]) -> float:
    """``choice_scores[i]``: the A-D next-token (log-)probabilities of item ``i``."""
    return accuracy([argmax_choice(s) for s in choice_scores], answers)


def _split_true_false(scores: Sequence[float], labels: Sequence[int]) -> tuple[list[float], list[float]]:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    true = [float(s) for s, l in zip(scores, labels) if l == 1]
    false = [float(s) for s, l in zip(scores, labels) if l != 1]
    if not true or not false:
        raise ValueError("a TruthfulQA item needs at least one true and one false choice")
    return true, false


def truthfulqa_mc1_item(scores: Sequence[float], labels: Sequence[int]) -> float:
    """1.0 if the first true choice's log-likelihood beats every false choice (strictly)."""
    true, false = _split_true_false(scores, labels)
    return 1.0 if true[0] > max(false) else 0.0


def truthfulqa_mc2_item(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Probability mass of the true choices, normalised over all choices."""
    true, false = _split_true_false(scores, labels)
    top = max(true + false)
    p_true = sum(math.exp(s - top) for s in true)
    p_false = sum(math.exp(s - top) for s in false)
    return p_true / (p_true + p_false)


@register("truthfulqa_mc1")
def truthfulqa_mc1(choice_scores: Sequence[Sequence[float]], labels: Sequence[Sequence[int]]) -> float:
    _same_length(choice_scores, labels)
    return mean(truthfulqa_mc1_item(s, l) for s, l in zip(choice_scores, labels))


@register("truthfulqa_mc2")
def truthfulqa_mc2(choice_scores: Sequence[Sequence[float]], labels: Sequence[Sequence[int]]) -> float:
    _same_length(choice_scores, labels)
    return mean(truthfulqa_mc2_item(s, l) for s, l in zip(choice_scores, labels))


# --------------------------------------------------------------------------------- fluency

class WordTokenizer:
    """NLTK's ``word_tokenize`` (what RWKU uses) when its ``punkt_tab`` data is installed; else the
    same Treebank word tokenizer over an *untrained* Punkt sentence splitter (no abbreviation list,
    so "Dr. Smith" splits after "Dr"). ``name`` says which one this machine has."""

    def __init__(self) -> None:
        import nltk
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        try:
            nltk.data.find("tokenizers/punkt_tab/english/")
            self.name, self._tokenize = "nltk.word_tokenize", nltk.word_tokenize
        except LookupError:
            sentences, words = PunktSentenceTokenizer(), NLTKWordTokenizer()
            self.name = "untrained-punkt+treebank"
            self._tokenize = lambda text: [t for s in sentences.tokenize(text) for t in words.tokenize(s)]

    def __call__(self, text: str) -> list[str]:
        return self._tokenize(text)


def fluency_tokenizer_name() -> str:
    """Which tokenizer :func:`n_gram_entropy` uses on this machine (record it with the results)."""
    return WordTokenizer().name


def word_tokenize(text: str) -> list[str]:
    return WordTokenizer()(text)


def ngram_entropy_of_tokens(tokens: Sequence[str], ns: Sequence[int] = (2, 3),
                            weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy`` on a token list (0 for an n with no n-gram)."""
    weighted = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum((c / total) * math.log2(c / total) for c in counts.values()) if total else 0.0
        weighted.append(h * w)
    return float(np.mean(weighted))


def ngram_entropy(text: str, tokenizer: WordTokenizer | None = None) -> float:
    return ngram_entropy_of_tokens((tokenizer or WordTokenizer())(text))


@register("fluency_entropy")
def n_gram_entropy(texts: Sequence[str]) -> float:
    """Arithmetic mean over texts of :func:`ngram_entropy` (RWKU's Flu)."""
    tokenizer = WordTokenizer()
    return mean(ngram_entropy(t, tokenizer) for t in texts)


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions for {len(b)} references")
