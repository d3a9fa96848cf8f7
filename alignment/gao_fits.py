"""Gao et al. (2022)'s functional forms of gold gain against d = sqrt(KL): d (alpha - beta d) for best-of-n and
d (alpha - beta log d) for RL, their least-squares fit and the fitted peak. The over-optimisation experiment
fits them; its figure draws them."""

from __future__ import annotations

import math

import numpy as np


def fit_gao(d, gain, method: str) -> dict:
    """Least-squares alpha, beta of gain(d) = d (alpha - beta d) (best-of-n) or d (alpha - beta log d) (RL),
    and the fitted peak (d*, gain at d*) over d >= 0; the peak is None when the fit never turns down
    (beta <= 0), and d* = 0 when gold falls from the start."""
    d, gain = np.asarray(d, float), np.asarray(gain, float)
    keep = d > 0
    d, gain = d[keep], gain[keep]
    if len(d) < 2:
        return {"alpha": None, "beta": None, "peak_d": None, "peak_gain": None}
    second = d * d if method == "best-of-n" else d * np.log(d)
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([d, -second], axis=1), gain, rcond=None)
    peak = None
    if beta > 1e-9 * max(1.0, abs(alpha)):  # a beta of rounding size means a curve that never turns down
        peak = alpha / (2 * beta) if method == "best-of-n" else math.exp(alpha / beta - 1)
        peak = max(peak, 0.0)  # best-of-n with alpha <= 0: gold only falls, its best is the SFT model
    return {"alpha": float(alpha), "beta": float(beta), "peak_d": None if peak is None else float(peak),
            "peak_gain": None if peak is None else float(gao_curve(peak, alpha, beta, method))}


def gao_curve(d, alpha: float, beta: float, method: str):
    d = np.asarray(d, float)
    return d * (alpha - beta * (d if method == "best-of-n" else np.log(np.maximum(d, 1e-12))))
