"""The comparison statistics against hand computations."""

import itertools
import math

import numpy as np
import pytest

from recipes.core.statistics import bootstrap_interval, holm, kendalls_w, paired_difference, seed_interval


def exact_bootstrap_quantiles(d, levels):
    """The bootstrap distribution of the mean enumerated exactly: every one of the n**n equally likely
    resamples of n items, by hand."""
    means = sorted(np.mean(c) for c in itertools.product(d, repeat=len(d)))
    return [np.quantile(means, q) for q in levels]


def test_paired_difference_matches_the_exact_bootstrap_by_enumeration():
    a = np.array([0.9, 0.1, 0.6, 0.4, 1.0, 0.2])
    b = np.array([0.5, 0.3, 0.1, 0.4, 0.2, 0.3])
    d = a - b  # 0.4, -0.2, 0.5, 0.0, 0.8, -0.1: mean 0.2333
    diff = paired_difference(a, b, resamples=40_000, seed=1)
    assert diff.mean == pytest.approx(1.4 / 6, abs=1e-12)
    low, high = exact_bootstrap_quantiles(d, [0.025, 0.975])  # 6**6 = 46,656 resamples
    assert diff.low == pytest.approx(low, abs=0.01) and diff.high == pytest.approx(high, abs=0.01)
    means = [np.mean(c) for c in itertools.product(d, repeat=len(d))]
    p = 2 * min(np.mean(np.array(means) <= 0), np.mean(np.array(means) >= 0))
    assert diff.p_value == pytest.approx(p, abs=0.01)


def test_pairing_removes_what_the_prompts_share():
    """Per-prompt difficulty varies a lot, the method adds a small constant-ish gain: paired, the gain is
    clear; set side by side as two unpaired intervals, it would not be."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1.0, 300)
    sft = difficulty + rng.normal(0, 0.1, 300)
    policy = difficulty + 0.1 + rng.normal(0, 0.1, 300)
    diff = paired_difference(policy, sft, seed=0)
    assert diff.significant and diff.low > 0.05 and diff.high < 0.15
    p_low, p_high = bootstrap_interval(policy)
    assert p_low < sft.mean() < p_high  # the unpaired view overlaps the SFT mean


def test_a_constant_difference_has_no_width_and_a_zero_one_is_not_significant():
    d = paired_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert (d.mean, d.low, d.high, d.significant) == (0.5, 0.5, 0.5, True)
    same = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert (same.mean, same.significant, same.p_value) == (0.0, False, 1.0)


def test_holm_by_hand():
    # sorted p: 0.01 (<= 0.05/4), 0.015 (<= 0.05/3), 0.03 (> 0.05/2 = 0.025): stop; 0.04 not rejected either
    assert holm([0.03, 0.01, 0.04, 0.015]) == [False, True, False, True]
    assert holm([0.03, 0.01, 0.04, 0.02]) == [False, True, False, False]  # 0.02 > 0.05/3
    assert holm([0.001, 0.2]) == [True, False]


def test_seed_interval_uses_students_t():
    values = [1.0, 2.0, 4.0]  # mean 7/3, sd sqrt(7/3), t(0.975, 2) = 4.302653
    mean, low, high = seed_interval(values)
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half), abs=1e-5)
    twelve = list(range(12))  # 11 degrees of freedom: t = 2.200985, not 1.96
    _, low, high = seed_interval(twelve)
    assert (high - low) / 2 == pytest.approx(2.200985 * np.std(twelve, ddof=1) / math.sqrt(12), abs=1e-5)
    assert math.isnan(seed_interval([1.0])[1])


def test_kendalls_w_by_hand():
    assert kendalls_w([[1, 2, 3, 4], [10, 20, 30, 40], [0.1, 0.2, 0.3, 0.4]]) == pytest.approx(1.0)
    # two raters in opposite order: rank sums all 5, S = 0
    assert kendalls_w([[1, 2, 3, 4], [4, 3, 2, 1]]) == pytest.approx(0.0)
    # raters' ranks (1,2,3), (1,3,2), (2,1,3): rank sums 4, 6, 8; S = (4-6)^2 + 0 + (8-6)^2 = 8;
    # W = 12 S / (m^2 (k^3 - k)) = 96 / (9 * 24) = 0.4444
    assert kendalls_w([[1, 2, 3], [1, 3, 2], [2, 1, 3]]) == pytest.approx(96 / 216)
    assert math.isnan(kendalls_w([[1, 2, 3]]))
