"""Metrics against reference logic: SQuAD v1.1 F1/EM, scikit-learn AUC-PR, MGSM number extraction."""

import collections
import re
import string

import numpy as np
import pytest

from fiat_jax.data import metrics


# -- a re-statement of the official SQuAD v1.1 evaluation (evaluate-v1.1.py), used as the reference --
def _ref_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _ref_f1(pred, gold):
    p, g = _ref_normalize(pred).split(), _ref_normalize(gold).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def _ref(golds_list, preds):
    f1 = em = 0.0
    for golds, pred in zip(golds_list, preds):
        f1 += max(_ref_f1(pred, g) for g in golds)
        em += max(float(_ref_normalize(pred) == _ref_normalize(g)) for g in golds)
    return {"f1": 100 * f1 / len(preds), "em": 100 * em / len(preds)}


CASES = [
    (["Denver Broncos", "The Denver Broncos", "Broncos"], "the Denver Broncos!"),
    (["Santa Clara, California", "Levi's Stadium"], "Levi's Stadium in the San Francisco Bay Area"),
    (["1,000"], "1000"),
    (["an apple a day"], "Apple day."),
    (["Saint Bernadette Soubirous"], "Bernadette"),
    (["gold"], "silver"),
    (["the the"], "The"),
    (["Broncos", "Denver"], "Denver, Colorado (USA)"),
    (["Levi’s Stadium"], "Levi's Stadium"),  # a curly apostrophe is not ASCII punctuation: no exact match
]


@pytest.mark.parametrize("golds,pred", CASES)
def test_squad_matches_official_logic_per_case(golds, pred):
    assert metrics.squad([golds], [pred], language="en") == pytest.approx(_ref([golds], [pred]))


def test_squad_matches_official_logic_over_a_set():
    golds, preds = [c[0] for c in CASES], [c[1] for c in CASES]
    got = metrics.squad(golds, preds)
    assert got == pytest.approx(_ref(golds, preds))
    assert 0 < got["em"] < got["f1"] < 100


def test_squad_scripts_without_spaces_score_per_character():
    # "东京都" vs "东京": 2 of 3 characters shared -> P=1, R=2/3 -> F1=0.8; whitespace tokens would give 0.
    assert metrics.token_f1("东京", "东京都", "zh") == pytest.approx(0.8)
    assert metrics.token_f1("กรุงเทพ", "กรุงเทพมหานคร", "th") > 0.5
    assert metrics.exact_match("「東京」", "東京", "ja") == 1.0  # CJK punctuation removed
    # English articles are removed only for English (a Finnish or Swahili "a" is not an article).
    assert metrics.normalize_answer("a kitabu", "sw") == "a kitabu"
    assert metrics.normalize_answer("a book", "en") == "book"


def test_auc_pr_agrees_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 200))
        labels = rng.integers(0, 2, n)
        labels[0] = 1
        scores = rng.random(n) if trial % 2 else rng.integers(0, 5, n).astype(float)  # odd trials: ties
        want = 100 * sklearn_metrics.average_precision_score(labels, scores)
        assert metrics.auc_pr(labels.tolist(), scores.tolist())["auc_pr"] == pytest.approx(want, abs=1e-9)


def test_accuracy_and_mc_accuracy():
    assert metrics.accuracy(["1", "2", "1"], ["1", "1", " 1 "]) == {"accuracy": pytest.approx(200 / 3)}
    # Two items: item 0 correct option 1 scored highest; item 1 correct option 0 scored lower.
    got = metrics.mc_accuracy_score_fn([0, 1, 1, 0], [-5.0, -1.0, -3.0, -2.0])
    assert got == {"accuracy": 50.0}


@pytest.mark.parametrize("text,number", [
    ("Roger has 5 balls. 2 cans of 3 is 6. 5 + 6 = 11. The answer is 11.", "11"),
    ("She makes 9 * 2 = $18 every day. The answer is $18.", "18"),
    ("Step-by-Step Answer: total 1,250 dollars", "1250"),
    ("Jibu ni ১৮", "18"),  # Bengali digits
    ("The answer is 0.5 liters, not 3", "0.5"),
    ("no digits here", None),
])
def test_extract_number(text, number):
    assert metrics.extract_number(text) == number


def test_numeric_exact_match_and_macro_average():
    got = metrics.numeric_exact_match(["18", "3", "70000"], ["The answer is 18.", "It is 4", "70,000"])
    assert got == {"accuracy": pytest.approx(200 / 3)}
    avg = metrics.macro_average({"sw": {"accuracy": 50.0, "f1": 1.0}, "bn": {"accuracy": 70.0}})
    assert avg == {"accuracy": 60.0}
