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
