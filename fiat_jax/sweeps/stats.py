"""Statistics of a sweep report: bootstrap intervals over seeds and items, paired comparisons with a
permutation test (numpy, seeded), number formatting; and Student-t intervals and tests over seeds (scipy: with
2-5 seeds t(1) = 12.7 vs 1.96, so the exact quantile matters).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats


def t_quantile(confidence: float, df: int) -> float:
    """The t with ``P(|T| <= t) = confidence`` (e.g. 12.706 for 0.95 and df=1, 2.262 for df=9)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(scipy.stats.t.ppf(0.5 + confidence / 2, df))


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values and the half-width of its confidence interval (nan when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean ± t_{df=n-1} * s / sqrt(n): the usual interval for a mean over seeds."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, t_quantile(confidence, n - 1) * math.sqrt(variance / n), n)


# ------------------------------------------------------------------------------------------- bootstrap statistics
# A cell of a report is ``{seed: {language: values}}``: ``values`` holds one score per evaluation item (their mean
# is the run's metric for that language), or the run's metric alone when its per-item scores are unknown. The
# statistic is the mean over seeds of the mean over languages of the mean over items. Intervals come from a
# two-way bootstrap that resamples seeds and, within each language, items (the same item draw for every seed, as
# the seeds score the same items); percentile intervals of means of in-range scores stay in the range, and are
# clipped to it besides. A paired comparison takes per-item differences on the items and seeds both runs scored;
# its p-value is a sign-flip permutation test (the sharp null: the two methods' scores are exchangeable on each
# seed and item), two-sided: exact when the sign patterns are few, else sampled with the +1 correction (never 0).

Cell = dict  # {seed: {language: numpy array of per-item scores (or one run-level score)}}
BOOTSTRAP_SAMPLES = 2000
PERMUTATIONS = 10000
SEED = 0


@dataclasses.dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval; ``seeds`` and ``items`` say what it was resampled over."""

    mean: float
    low: float
    high: float
    seeds: int
    items: int  # items per seed and language (summed over languages); 0 when only run-level scores were known

    @property
    def per_item(self) -> bool:
        return self.items > 0


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``method - baseline`` on shared seeds and items: the paired difference, its interval and p-value."""

    diff: Interval
    p_value: float


def _matrices(cell: Mapping[Any, Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Seeds that scored every language, and per language the (seeds x items) score matrix."""
    languages = sorted(set.intersection(*(set(v) for v in cell.values()))) if cell else []
    seeds = sorted(cell)
    mats = []
    for lang in languages:
        rows = [np.asarray(cell[s][lang], dtype=np.float64).reshape(-1) for s in seeds]
        width = min(len(r) for r in rows)
        if any(len(r) != width for r in rows):  # seeds scored different item counts: keep run-level means only
            rows = [np.array([r.mean()]) for r in rows]
        mats.append(np.stack(rows))
    return seeds, mats


def _statistic_draws(mats: Sequence[Any], n_seeds: int, samples: int, rng: Any) -> Any:
    """``samples`` bootstrap draws of the statistic: seeds resampled once per draw, items per language."""
    seed_w = rng.multinomial(n_seeds, [1.0 / n_seeds] * n_seeds, size=samples) / n_seeds
    total = np.zeros(samples)
    for mat in mats:
        items = mat.shape[1]
        item_w = rng.multinomial(items, [1.0 / items] * items, size=samples) / items if items > 1 \
            else np.ones((samples, 1))
        total += ((seed_w @ mat) * item_w).sum(axis=1)
    return total / len(mats)


def _clip(value: float, bounds: tuple[float, float] | None) -> float:
    if bounds is None:
        return value
    return min(max(value, bounds[0]), bounds[1])


def bootstrap_interval(cell: Mapping[Any, Mapping[str, Any]], *, bounds: tuple[float, float] | None = None,
                       confidence: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED) -> Interval:
    """Mean and percentile bootstrap interval of a cell (seeds x languages x items), clipped to ``bounds``."""
    seeds, mats = _matrices(cell)
    if not mats:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    mean = float(np.mean([m.mean() for m in mats]))
    items = sum(m.shape[1] for m in mats) if all(m.shape[1] > 1 for m in mats) else 0
    if len(seeds) < 2 and items == 0:  # one run-level number: nothing to resample
        return Interval(_clip(mean, bounds), math.nan, math.nan, len(seeds), 0)
    draws = _statistic_draws(mats, len(seeds), samples, np.random.default_rng(seed))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(_clip(mean, bounds), _clip(float(low), bounds), _clip(float(high), bounds), len(seeds), items)


def paired_difference(method: Mapping[Any, Mapping[str, Any]], baseline: Mapping[Any, Mapping[str, Any]], *,
                      bounds: tuple[float, float] | None = None, confidence: float = 0.95,
                      samples: int = BOOTSTRAP_SAMPLES, permutations: int = PERMUTATIONS,
                      seed: int = SEED) -> Comparison | None:
    """``method - baseline`` on the seeds and languages both scored, item by item where both cells hold the same
    number of items (callers align items first). None when they share no seed and language.

    ``bounds`` are the metric's; the difference is clipped to ``(lo - hi, hi - lo)``."""
    seeds = sorted(set(method) & set(baseline))
    diff: dict[Any, dict[str, Any]] = {}
    for s in seeds:
        for lang in set(method[s]) & set(baseline[s]):
            a = np.asarray(method[s][lang], dtype=np.float64).reshape(-1)
            b = np.asarray(baseline[s][lang], dtype=np.float64).reshape(-1)
            diff.setdefault(s, {})[lang] = a - b if len(a) == len(b) else np.array([a.mean() - b.mean()])
    if not diff:
        return None
    span = None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])
    interval = bootstrap_interval(diff, bounds=span, confidence=confidence, samples=samples, seed=seed)
    return Comparison(diff=interval, p_value=sign_flip_p_value(diff, permutations=permutations, seed=seed))


def sign_flip_p_value(diff: Mapping[Any, Mapping[str, Any]], *, permutations: int = PERMUTATIONS,
                      seed: int = SEED) -> float:
    """Two-sided p-value of a paired permutation test: each (seed, item) difference keeps or flips its sign.

    Exact (every sign pattern) when there are at most ``permutations`` patterns, as with a few seeds and no
    per-item scores (2 seeds: p >= 1/2; 3 seeds: p >= 1/4); else ``permutations`` random patterns with the +1
    correction."""
    _, mats = _matrices(diff)
    if not mats:
        return math.nan
    # The statistic is linear in the signs: sum over units of weight * difference * sign.
    terms = np.concatenate([(m / (m.size * len(mats))).reshape(-1) for m in mats])
    observed = abs(float(terms.sum()))
    tolerance = 1e-12 * max(1.0, observed)
    n = terms.size
    if 2 ** n <= permutations:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        return float(np.mean(np.abs(patterns @ terms) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    hits, done, chunk = 0, 0, max(1, min(1000, 2_000_000 // n))
    while done < permutations:
        k = min(chunk, permutations - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, n))
        hits += int(np.sum(np.abs(signs @ terms) >= observed - tolerance))
        done += k
    return (hits + 1) / (permutations + 1)


def seed_level_p_value(diff: Mapping[Any, Mapping[str, Any]]) -> float:
    """Two-sided p of a one-sample t-test on the per-seed mean differences (seeds as the units, n - 1 df).

    Why beside :func:`sign_flip_p_value`: flipping (seed, item) signs treats every item of every seed as an
    independent draw, so a shift shared by all items of one training run (the seed's luck) counts hundreds of
    times; when runs of the same method vary as much as the methods differ, that p is far too small. Here each
    seed is one unit: the item-level noise is averaged away inside a seed and only the spread between seeds
    tests the difference. NaN with fewer than 2 seeds; 0 when every seed shows the same non-zero difference."""
    seeds, mats = _matrices(diff)
    if len(seeds) < 2 or not mats:
        return math.nan
    per_seed = np.mean([m.mean(axis=1) for m in mats], axis=0)  # mean over items, then over languages
    mean, sd = float(per_seed.mean()), float(per_seed.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return 1.0 if abs(mean) <= 1e-12 else 0.0
    return float(scipy.stats.ttest_1samp(per_seed, 0.0).pvalue)


def format_number(value: float, *, percent: bool) -> str:
    """One decimal for percentages; three significant digits (no exponent below 1e6) otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if percent:
        return f"{value:.1f}"
    if value != 0 and abs(value) >= 1000:
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3g}"


def format_p(p: float) -> str:
    """``"< 0.001"`` below that, else ``"= 0.042"`` / ``"= 0.37"`` (two significant digits)."""
    if math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}" if p < 0.1 else f"= {p:.2f}"
