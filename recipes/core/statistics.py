"""Uncertainty of the lab's numbers, and the comparisons made with it.

Every mean over held-out items (gold reward, a reward model's pair accuracy) carries a 95% bootstrap
interval. Methods are compared prompt by prompt: a method's gain over SFT, or over another method, is the
mean of per-prompt differences with a paired bootstrap interval (resampling prompts keeps each prompt's two
numbers together, so what the prompts share cancels out), and a difference is called significant only when
that interval leaves out zero, never by setting one interval against a point. Across seeds, the mean has a
Student-t interval, and Kendall's W says how far the seeds agree on the ranking.
The resampling and the distributions are scipy's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

RESAMPLES = 4000


def bootstrap_interval(values, *, resamples: int = RESAMPLES, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling the items)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    result = stats.bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=level,
                             method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclasses.dataclass
class Difference:
    """Mean of per-item differences a - b, its paired bootstrap interval and two-sided p-value."""

    mean: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:  # at the interval's level: the interval leaves out zero
        return self.low > 0 or self.high < 0


def paired_difference(a, b, *, resamples: int = RESAMPLES, level: float = 0.95, seed: int = 0) -> Difference:
    """a[i] - b[i] over paired items (prompts): the mean, its percentile bootstrap interval from resampling
    the items, and the bootstrap p-value of "no difference" (twice the smaller tail beyond zero)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2 or np.all(d == d[0]):
        return Difference(float(d.mean()), float(d.mean()), float(d.mean()), 1.0 if d.mean() == 0 else 0.0)
    result = stats.bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                             vectorized=True, rng=np.random.default_rng(seed))
    means = result.bootstrap_distribution
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return Difference(float(d.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high), p)


def holm(p_values: list[float], level: float = 0.05) -> list[bool]:
    """Holm's step-down rejections at family-wise error `level` (many pairs of methods tested at once)."""
    p = np.nan_to_num(np.asarray(p_values, dtype=float), nan=1.0)  # no p-value rejects nothing
    reject = [False] * len(p)
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > level / (len(p) - rank):
            break
        reject[i] = True
    return reject


def seed_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean over a few runs (seeds); one run gives none."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1)) * float(values.std(ddof=1)) / np.sqrt(len(values))
    return mean, mean - half, mean + half


def kendalls_w(scores) -> float:
    """Kendall's coefficient of concordance of a (raters x items) score matrix, e.g. seeds x methods: 1 when
    every seed ranks the methods the same, 0 when the rankings share nothing. From Friedman's chi-square
    (ties corrected), W = chi2 / (raters * (items - 1)); nan with fewer than 2 raters or 3 items."""
    scores = np.asarray(scores, dtype=float)
    raters, items = scores.shape
    if raters < 2 or items < 3:
        return float("nan")
    chi2 = stats.friedmanchisquare(*scores.T).statistic
    return float(chi2 / (raters * (items - 1)))
