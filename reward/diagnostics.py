"""What a reward model learnt besides the truth: bias attribution, calibration against gold, ensemble disagreement.

    bias_attribution(rewards, golds, features)               -> dict[str, float]
    calibration(margins, gold_gaps, bins=10)                  -> (dict[str, float], per-bin table)
    reliability_figure(table)                                 -> matplotlib Figure
    ensemble_diagnostics(member_margins, gold_gaps, member_rewards=None, golds=None) -> dict[str, float]

Pure functions of numbers (no model, no files). The gold world knows each answer's true reward and its bias
features (recipes/core/world/annotators.py: `answer_features`, world tokens and flattery), so a reward model's
score can be split into what follows gold and what follows a feature that biased annotators liked.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

# ----------------------------------------------------------------------------------------------
# Bias attribution


def _ols(y: np.ndarray, columns: list[np.ndarray]) -> tuple[np.ndarray, float, np.ndarray | None]:
    """(coefficients, residual sum of squares, their covariance or None) of y on [1, *columns]."""
    x = np.column_stack([np.ones_like(y)] + columns)
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coefficients
    rss = float(residual @ residual)
    dof = len(y) - x.shape[1]
    if dof <= 0 or np.linalg.matrix_rank(x) < x.shape[1]:
        return coefficients, rss, None
    return coefficients, rss, rss / dof * np.linalg.inv(x.T @ x)


def _partial_r2(rss_without: float, rss_with: float, total: float) -> float:
    if rss_without <= 1e-12 * total:  # the others already explain everything (to rounding): nothing is left
        return math.nan
    return max(0.0, 1.0 - rss_with / rss_without)


def bias_attribution(rewards, golds, features: dict[str, list[float]]) -> dict[str, float]:
    """Ordinary least squares of the reward on [intercept, gold, each feature], for answers sampled from a policy.

    For each regressor r (gold and every feature name):
        <r>_coefficient     reward per unit of r, the others held fixed (length: reward per world token,
                            flattery: reward for flattering at all); a reward model that learnt only gold has
                            zero on every feature
        <r>_coefficient_se  its classical standard error, sqrt(s^2 (X'X)^-1) with s^2 = RSS / (n - p)
        <r>_partial_r2      of the reward's variance the other regressors leave unexplained, the share r
                            explains: (RSS without r - RSS with all) / RSS without r
    bias_r2                 R^2 of the full model (gold and features together)
    gold_length_slope       gold itself regressed on length alone: how much longer answers really are better,
                            to read length_coefficient against (needs a "length" feature)

    A regressor constant over the samples (say, no answer flatters) cannot be told apart from the intercept: its
    three numbers are nan and it is left out of the fit.
    """
    y = np.asarray(rewards, dtype=float)
    named = {"gold": np.asarray(golds, dtype=float)}
    named.update({name: np.asarray(values, dtype=float) for name, values in features.items()})
    used = {name: values for name, values in named.items() if len(values) > 1 and np.ptp(values) > 0}
    metrics: dict[str, float] = {}
    for name in named:
        if name not in used:
            metrics.update({f"{name}_coefficient": math.nan, f"{name}_coefficient_se": math.nan,
                            f"{name}_partial_r2": math.nan})
    coefficients, rss, covariance = _ols(y, list(used.values()))
    total = float(((y - y.mean()) ** 2).sum())
    metrics["bias_r2"] = 1.0 - rss / total if total > 0 else math.nan
    for i, name in enumerate(used, start=1):
        others = [values for other, values in used.items() if other != name]
        metrics[f"{name}_coefficient"] = float(coefficients[i])
        metrics[f"{name}_coefficient_se"] = float(math.sqrt(covariance[i, i])) if covariance is not None else math.nan
        metrics[f"{name}_partial_r2"] = _partial_r2(_ols(y, others)[1], rss, total)
    length = named.get("length")
    if length is not None:
        metrics["gold_length_slope"] = (float(_ols(named["gold"], [length])[0][1]) if "length" in used
                                        else math.nan)
    return metrics


# ----------------------------------------------------------------------------------------------
# Calibration


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def calibration(margins, gold_gaps, bins: int = 10) -> tuple[dict[str, float], list[dict]]:
    """How far the reward model's P(chosen) = sigmoid(reward(chosen) - reward(rejected)) is a probability of
    the truth: of the chosen answer being the gold-better one. Pairs whose gold gap is 0 have no truth to be
    calibrated against and are left out.

    ece    expected calibration error over `bins` equal-width bins of P on [0, 1]:
           sum_b (n_b / N) |observed_b - mean predicted_b|, observed_b the share of the bin's pairs whose chosen
           answer is gold-better; 0 is perfectly calibrated
    brier  mean of (P - outcome)^2: 0 is perfect, 0.25 is always saying 0.5

    Also returns the per-bin table (the reliability diagram's points): for each bin its edges, count, mean
    predicted P and observed share (None for an empty bin).
    """
    margins, gaps = np.asarray(margins, dtype=float), np.asarray(gold_gaps, dtype=float)
    decided = gaps != 0
    p, outcome = sigmoid(margins[decided]), (gaps[decided] > 0).astype(float)
    which = np.minimum((p * bins).astype(int), bins - 1)  # P = 1 belongs to the last bin
    table, ece = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        row = {"low": b / bins, "high": (b + 1) / bins, "count": count, "mean_predicted": None, "observed": None}
        if count:
            row["mean_predicted"], row["observed"] = float(p[members].mean()), float(outcome[members].mean())
            ece += count / len(p) * abs(row["observed"] - row["mean_predicted"])
        table.append(row)
    if not len(p):
        return {"ece": math.nan, "brier": math.nan}, table
    return {"ece": float(ece), "brier": float(((p - outcome) ** 2).mean())}, table


def reliability_figure(table: list[dict], title: str = "reward model calibration against gold"):
    """The reliability diagram of `calibration`'s table: observed share against mean predicted P per bin (the
    diagonal is perfect calibration), each point labelled with its pair count, the counts as bars below."""
    from matplotlib.figure import Figure  # not pyplot: no display, no global figure to close

    filled = [row for row in table if row["count"]]
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.plot([r["mean_predicted"] for r in filled], [r["observed"] for r in filled], marker="o", label="reward model")
    for row in filled:
        top.annotate(str(row["count"]), (row["mean_predicted"], row["observed"]), textcoords="offset points",
                     xytext=(4, 4), fontsize=7)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="share where chosen is gold-better", title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([(r["low"] + r["high"]) / 2 for r in table], [r["count"] for r in table],
               width=[r["high"] - r["low"] for r in table], edgecolor="white")
    bottom.set(xlabel="P(chosen) = sigmoid(margin)", ylabel="pairs")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Correlations (average-tie ranks, scipy's rankdata) and ensembles


def pearson(x, y) -> float:
    """Pearson correlation; nan when either side is constant or there are fewer than two points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson correlation of the average-tie ranks."""
    return pearson(rankdata(x), rankdata(y))


def auroc(scores, positive) -> float:
    """Probability that a random positive scores above a random negative, ties counting half (Mann-Whitney U
    over n_pos * n_neg); nan without both kinds."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _standardise(values: np.ndarray) -> np.ndarray:
    """Each row to mean 0 and standard deviation 1 (reward models' scales are arbitrary; a constant row stays 0)."""
    std = values.std(axis=-1, keepdims=True)
    return (values - values.mean(axis=-1, keepdims=True)) / np.where(std > 0, std, 1.0)


def ensemble_diagnostics(member_margins, gold_gaps, member_rewards=None, golds=None) -> dict[str, float]:
    """Does an ensemble of k reward models (the same data, different seeds) know where it is wrong?

    On held-out pairs with a gold gap (`member_margins` [k, pairs]: each member's reward(chosen) - reward(rejected)):
        ensemble_members                        k
        ensemble_gold_accuracy                  the ensemble (the members' mean margin) puts the gold-better side
                                                above (a zero margin counts as wrong, as gold_accuracy does)
        ensemble_member_gold_accuracy           the members' own gold accuracies, averaged
        ensemble_disagreement                   mean over pairs of the members' standard deviation of
                                                sigmoid(margin), their P(chosen) (population std, over k)
        ensemble_disagreement_error_spearman    Spearman correlation of that disagreement with the ensemble's
                                                error on gold (1 where it picks the gold-worse side, else 0)
        ensemble_disagreement_error_auroc       probability that a pair the ensemble gets wrong disagrees more than
                                                one it gets right (0.5: disagreement says nothing of error)
        ensemble_gold_accuracy_high_disagreement, ensemble_gold_accuracy_low_disagreement
                                                its gold accuracy on the most and the least disagreeing half of the
                                                pairs (the middle pair left out when their number is odd)
    On sampled answers (`member_rewards` [k, samples] and their `golds`), each member's rewards standardised:
        ensemble_sample_disagreement            mean over answers of the members' std of standardised reward
        ensemble_sample_disagreement_error_spearman
                                                Spearman correlation of that std with |standardised ensemble mean -
                                                standardised gold|: do the members disagree where the ensemble
                                                strays from gold?
    """
    margins = np.atleast_2d(np.asarray(member_margins, dtype=float))
    gaps = np.asarray(gold_gaps, dtype=float)
    decided = gaps != 0
    margins, sign = margins[:, decided], np.sign(gaps[decided])
    metrics = {"ensemble_members": float(len(margins))}
    if sign.size:
        right = margins.mean(axis=0) * sign > 0
        disagreement = sigmoid(margins).std(axis=0)
        half = len(sign) // 2
        order = np.argsort(disagreement, kind="stable")
        metrics.update({
            "ensemble_gold_accuracy": float(right.mean()),
            "ensemble_member_gold_accuracy": float((margins * sign > 0).mean(axis=1).mean()),
            "ensemble_disagreement": float(disagreement.mean()),
            "ensemble_disagreement_error_spearman": spearman(disagreement, ~right),
            "ensemble_disagreement_error_auroc": auroc(disagreement, ~right),
            "ensemble_gold_accuracy_high_disagreement": float(right[order[-half:]].mean()) if half else math.nan,
            "ensemble_gold_accuracy_low_disagreement": float(right[order[:half]].mean()) if half else math.nan,
        })
    if member_rewards is not None and golds is not None and len(golds):
        rewards = _standardise(np.atleast_2d(np.asarray(member_rewards, dtype=float)))
        spread = rewards.std(axis=0)
        error = np.abs(_standardise(rewards.mean(axis=0)) - _standardise(np.asarray(golds, dtype=float)))
        metrics["ensemble_sample_disagreement"] = float(spread.mean())
        metrics["ensemble_sample_disagreement_error_spearman"] = spearman(spread, error)
    return metrics
