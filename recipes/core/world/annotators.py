"""Simulated annotators: Bradley-Terry noise plus label flips, and the noise ceiling.

For a pair whose gold-better answer beats the other by d = gold(better) - gold(worse) > 0, the
annotator prefers the better answer with probability sigmoid(d / T); the label is then flipped
with probability f. So the label agrees with gold with probability

    q = (1 - f) * sigmoid(d / T) + f * (1 - sigmoid(d / T)).

Noise ceiling: the best accuracy any reward model can reach on these labels, reached by always
predicting the likelier label: the mean over pairs of max(q, 1 - q). The expected agreement of
the labels with gold is mean(q), with sampling standard error sqrt(sum q (1 - q)) / n.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    a_preferred: bool      # the annotator's final label
    flipped: bool          # a random flip was applied after the Bradley-Terry draw
    agrees_with_gold: bool
    p_agree: float         # q above: probability the label agrees with the gold order


def sigmoid(x: float) -> float:
    if x < 0:  # the stable form: exp of a large positive number would overflow
        e = math.exp(x)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(-x))


def p_agree(gold_gap: float, temperature: float, flip_rate: float) -> float:
    p = sigmoid(abs(gold_gap) / temperature)
    return (1 - flip_rate) * p + flip_rate * (1 - p)


def label(gold_a: float, gold_b: float, rng, temperature: float, flip_rate: float) -> Label:
    """One annotator's label for answers A and B; gold_a != gold_b."""
    a_preferred = rng.random() < sigmoid((gold_a - gold_b) / temperature)
    flipped = rng.random() < flip_rate
    a_preferred = a_preferred != flipped
    return Label(a_preferred, flipped, a_preferred == (gold_a > gold_b),
                 p_agree(gold_a - gold_b, temperature, flip_rate))


def agreement_stats(labels: list[Label]) -> dict:
    n = len(labels)
    expected = sum(l.p_agree for l in labels) / n
    return {
        "pairs": n,
        "measured_agreement": sum(l.agrees_with_gold for l in labels) / n,
        "expected_agreement": expected,
        "standard_error": math.sqrt(sum(l.p_agree * (1 - l.p_agree) for l in labels)) / n,
        "noise_ceiling": sum(max(l.p_agree, 1 - l.p_agree) for l in labels) / n,
        "flipped": sum(l.flipped for l in labels) / n,
    }
