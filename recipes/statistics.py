"""Uncertainty of the lab's headline numbers: every stage that reports a mean over a few hundred
held-out items (gold reward, a reward model's pair accuracy) reports its 95% interval too."""

import numpy as np


def bootstrap_interval(values, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


# Student's t 97.5% quantiles for 1-10 degrees of freedom; beyond that the normal 1.96 is within 5%.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def seed_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean over a few runs (seeds); one run gives no interval."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    t = _T975[len(values) - 2] if len(values) - 1 <= len(_T975) else 1.96
    half = t * float(values.std(ddof=1)) / np.sqrt(len(values))
    return mean, mean - half, mean + half
