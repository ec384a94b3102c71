"""seqio metric functions: accuracy, AUC-PR, SQuAD F1/EM (language-aware), MGSM numeric match, MC accuracy.

Predict metrics take ``(targets, predictions)``; score metrics take ``(targets, scores)``; each returns a dict of
floats in percent where the field's convention is percent (accuracy, F1, EM), as seqio's t5 metrics do.
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Scripts written without spaces between words: tokenise them per character for F1.
_NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
_NO_SPACE_CHAR = re.compile(
    "[\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff\u0f00-\u0fff"  # Thai Lao Myanmar Khmer Tibetan
    "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # kana, CJK ideographs
_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    correct = sum(str(t).strip() == str(p).strip() for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * correct / max(len(targets), 1)}


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the precision-recall curve as step-wise average precision (sklearn's definition)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.sum() == 0:
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # One point per distinct score threshold (ties counted together).
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / y.sum()
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def auc_pr(targets: Sequence[Any], scores: Sequence[float]) -> dict[str, float]:
    """Score metric: AUC-PR of the positive class; targets are 0/1 (or "yes"/"true" strings)."""
    labels = [_as_binary(t) for t in targets]
    return {"auc_pr": 100.0 * average_precision(labels, scores)}


def _as_binary(value: Any) -> int:
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        return int(text.strip().lower() in ("1", "true", "yes"))
    return int(bool(value))


# ---------------------------------------------------------------- SQuAD v1.1 F1 / EM
def normalize_answer(text: str, language: str | None = None) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no English articles, single spaces.

    English (``language`` None or "en") follows the official SQuAD v1.1 script exactly (ASCII punctuation only).
    Other languages remove every Unicode punctuation character (category P*), as MLQA's multilingual
    evaluation does, since their punctuation (「」、।) is rarely ASCII; English articles are kept there.
    """
    english = language in (None, "en")
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _ASCII_PUNCT
                   and (english or not unicodedata.category(ch).startswith("P")))
    if english:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str, language: str | None = None) -> list[str]:
    """Tokens for F1: whitespace tokens, with each character of a no-space script as its own token."""
    normalized = normalize_answer(text, language)
    if language in _NO_SPACE_LANGUAGES or _NO_SPACE_CHAR.search(normalized):
        tokens: list[str] = []
        for word in normalized.split():
            tokens.extend(_split_no_space(word))
        return tokens
    return normalized.split()


def _split_no_space(word: str) -> list[str]:
    out, run = [], ""
    for ch in word:
        if _NO_SPACE_CHAR.match(ch):
            if run:
                out.append(run)
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.append(run)
    return out


def token_f1(prediction: str, gold: str, language: str | None = None) -> float:
    pred, ref = answer_tokens(prediction, language), answer_tokens(gold, language)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str, language: str | None = None) -> float:
    return float(normalize_answer(prediction, language) == normalize_answer(gold, language))


def squad(targets: Sequence[Sequence[str] | str], predictions: Sequence[str], *,
          language: str | None = None) -> dict[str, float]:
    """Max over gold answers, mean over questions, in percent (official SQuAD v1.1 logic)."""
    f1 = em = 0.0
    for golds, pred in zip(targets, predictions):
        golds = [golds] if isinstance(golds, (str, bytes)) else list(golds)
        golds = [g.decode() if isinstance(g, bytes) else g for g in golds]
        pred = pred.decode() if isinstance(pred, bytes) else pred
        f1 += max(token_f1(pred, g, language) for g in golds)
        em += max(exact_match(pred, g, language) for g in golds)
    n = max(len(predictions), 1)
    return {"f1": 100.0 * f1 / n, "em": 100.0 * em / n}


def squad_for(language: str):
    """``squad`` bound to one language, named so seqio logs show it."""
    def metric(targets, predictions):
        return squad(targets, predictions, language=language)
    metric.__name__ = f"squad_{language}"
    return metric


# ---------------------------------------------------------------- MGSM numeric exact match
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The answer number of a reasoning text: after the last "answer is" if present, else the last number.

    Digits of any script are read (e.g. Bengali or Thai numerals), commas are thousands separators.
    """
    text = "".join(str(unicodedata.digit(ch)) if ch.isdigit() else ch for ch in text)
    lower = text.lower()
    marker = max(lower.rfind("answer is"), lower.rfind("answer:"))
    after_marker = _NUMBER.findall(text[marker:]) if marker >= 0 else []
    if after_marker:
        return _canonical_number(after_marker[0])
    found = _NUMBER.findall(text)
    return _canonical_number(found[-1]) if found else None


def _canonical_number(text: str) -> str:
    value = float(text.replace(",", ""))
    return str(int(value)) if value == int(value) else repr(value)


def numeric_exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    hits = 0
    for target, pred in zip(targets, predictions):
        got = extract_number(pred)
        hits += got is not None and got == _canonical_number(str(target))
    return {"accuracy": 100.0 * hits / max(len(targets), 1)}


# ---------------------------------------------------------------- multiple choice by likelihood
def multiple_choice_accuracy(targets: Sequence[Any], scores: Sequence[float], *,
                             group_ids: Sequence[Any], option_ids: Sequence[int]) -> dict[str, float]:
    """Accuracy of picking the highest-likelihood option per item.

    ``scores[i]`` is the log-likelihood of option ``option_ids[i]`` of item ``group_ids[i]``; ``targets[i]``
    is 1 for the item's correct option (so each item has exactly one target 1).
    """
    best: dict[Any, tuple[float, int]] = {}
    gold: dict[Any, int] = {}
    for t, s, g, o in zip(targets, scores, group_ids, option_ids):
        if g not in best or s > best[g][0]:
            best[g] = (float(s), int(o))
        if _as_binary(t):
            gold[g] = int(o)
    correct = sum(best[g][1] == gold.get(g) for g in best)
    return {"accuracy": 100.0 * correct / max(len(best), 1)}


def mc_accuracy_for(num_options: int):
    """Score metric for tasks that emit ``num_options`` consecutive rows per item (options in order)."""
    def metric(targets: Sequence[Any], scores: Sequence[float]) -> dict[str, float]:
        n = len(scores)
        if n % num_options:
            raise ValueError(f"{n} scored rows is not a multiple of {num_options} options per item")
        return multiple_choice_accuracy(targets, scores, group_ids=[i // num_options for i in range(n)],
                                        option_ids=[i % num_options for i in range(n)])
    metric.__name__ = f"mc_accuracy_{num_options}"
    return metric


mc_accuracy_score_fn = mc_accuracy_for(2)  # XCOPA: option 1 then option 2


# ---------------------------------------------------------------- macro-averages
def macro_average(per_language: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean over languages of each metric present in every language."""
    if not per_language:
        return {}
    names = set.intersection(*(set(m) for m in per_language.values()))
    return {name: float(np.mean([m[name] for m in per_language.values()])) for name in sorted(names)}
