"""Mean and Student-t confidence intervals across seeds, without scipy.

Sweeps have few seeds (2-5), where the normal approximation understates the interval badly (t(1) = 12.7 vs
1.96), so the exact t quantile matters. For integer degrees of freedom the t CDF has a closed form, inverted here
by bisection.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


def t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (closed form for integer df)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, c
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # c + (2/3) c^3 + (2*4)/(3*5) c^5 + ... up to c^(df-2)
                term *= c * c * (k - 1) / k
                total += term
        return (2 / math.pi) * (theta + s * total)
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):  # 1 + (1/2) c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2)
        term *= c * c * (k - 1) / k
        total += term
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """The t with ``P(|T| <= t) = confidence`` (e.g. 12.706 for 0.95 and df=1, 2.262 for df=9)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_mass(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


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
