"""Simulated annotators: Bradley-Terry noise plus label flips, and the noise ceiling.

For a pair whose gold-better answer beats the other by d = gold(better) - gold(worse) > 0, the
annotator prefers the better answer with probability sigmoid(d / T); the label is then flipped
with probability f. So the label agrees with gold with probability

    q = (1 - f) * sigmoid(d / T) + f * (1 - sigmoid(d / T)).

Noise ceiling: the best accuracy any reward model can reach on these labels, reached by always
predicting the likelier label: the mean over pairs of max(q, 1 - q). The expected agreement of
the labels with gold is mean(q), with sampling standard error sqrt(sum q (1 - q)) / n.

Biased annotators (`Biases`, all off by default; off gives the unbiased labels byte for byte).
Real human labels carry known biases; each is a strength here, so that what a reward model learns
from them can be measured against the gold reward. The annotator's utility of an answer is

    u = sum_k w_k * gold term_k  +  length_bias * tokens  +  sycophancy_bias * flatters

and P(A preferred) = sigmoid((u(A) - u(B)) / T + position_bias), A being the answer shown first;
then the flip. `tokens` counts the world's tokens (words and punctuation marks, `answer_tokens`):
the world is written before any tokenizer is trained, so its annotators cannot count BPE tokens.
`flatters` is 1 when the answer flatters or agrees with the user (`FLATTERY`), whatever its
correctness; in the world's own answers only the verbose persona's filler does ("This is a very
good question to ask."), so there sycophancy rides with length, and the diagnostics tell them apart
by regression. The weights w_k are 1 for every gold term unless `group_disagreement` > 0: then each
pair is labelled by one of `GROUPS` annotator groups, drawn at random, whose weights are
exp(group_disagreement * z) with z a fixed +-1 pattern per group (one group cares for the task
more than for style, another the reverse...). q is computed from the biased probabilities against the
gold order; the noise ceiling from q averaged over the two orders of showing and the groups, which a reward
model scoring each answer alone cannot see (`Label.p_agree_unseen`).
"""

import math
import re
from dataclasses import dataclass, fields

from ..errors import UserError

GOLD_TERMS = ("task", "rudeness", "rambling", "repetition", "missing_end")
# The +-1 pattern of each annotator group's weight exponents, in GOLD_TERMS' order: a task-first group, a
# style-first group, and two that split style their own ways. Everybody dislikes an answer cut off.
GROUPS = ((1, -1, -1, -1, 0), (-1, 1, 1, 1, 0), (1, 1, -1, -1, 0), (-1, -1, 1, 1, 0))
FLATTERY = ("good question", "great question", "excellent question", "you are right", "you're right",
            "i agree", "you are so smart", "what a wonderful", "well said")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_FLATTERY = [re.compile(r"\b" + re.escape(phrase) + r"\b") for phrase in FLATTERY]


# A strength past this is a typo, not an experiment: a length bias of 10 per token swamps every gold term.
BIAS_LIMIT = 10.0


def answer_tokens(text: str) -> int:
    """The world's token count of an answer: words and punctuation marks (the end-of-turn marker aside)."""
    return len(_TOKEN.findall(text.replace("<|end|>", " ")))


def flatters(text: str) -> bool:
    """Does the answer flatter or agree with the user (a `FLATTERY` phrase)?"""
    lowered = text.lower()
    return any(pattern.search(lowered) for pattern in _FLATTERY)


def answer_features(text: str) -> dict[str, float]:
    """The features the biases act on: {"length": world tokens, "flattery": 0 or 1}."""
    return {"length": float(answer_tokens(text)), "flattery": float(flatters(text))}


@dataclass(frozen=True)
class Biases:
    """Strengths of the annotators' known biases; the field names are the world source's keys."""

    length_bias: float = 0.0         # utility per world token of the answer
    sycophancy_bias: float = 0.0     # utility when the answer flatters or agrees with the user
    position_bias: float = 0.0       # logit added for the answer shown first
    group_disagreement: float = 0.0  # spread of the annotator groups' weights on the gold terms

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def any(self) -> bool:
        return any(getattr(self, key) for key in self.keys())

    def query(self) -> str:
        """The world source's query for the biases that are on ("" when none)."""
        return "&".join(f"{key}={getattr(self, key)!r}" for key in self.keys() if getattr(self, key))

    def group_weights(self, group: int | None) -> tuple[float, ...]:
        if group is None or not self.group_disagreement:
            return (1.0,) * len(GOLD_TERMS)
        return tuple(math.exp(self.group_disagreement * z) for z in GROUPS[group])

    def utility(self, terms: dict[str, float], text: str, group: int | None = None) -> float:
        u = sum(w * terms[k] for w, k in zip(self.group_weights(group), GOLD_TERMS))
        return u + self.length_bias * answer_tokens(text) + self.sycophancy_bias * flatters(text)

    def applied(self, text_a: str, text_b: str, group: int | None) -> list[str]:
        """The biases that acted on this pair: those whose term differs between the answers, position always."""
        out = []
        if self.length_bias and answer_tokens(text_a) != answer_tokens(text_b):
            out.append("length")
        if self.sycophancy_bias and flatters(text_a) != flatters(text_b):
            out.append("sycophancy")
        if self.position_bias:
            out.append("position")
        if self.group_disagreement and group is not None:
            out.append("group")
        return out


@dataclass(frozen=True)
class Label:
    a_preferred: bool      # the annotator's final label
    flipped: bool          # a random flip was applied after the Bradley-Terry draw
    agrees_with_gold: bool
    p_agree: float         # q above: probability the label agrees with the gold order
    # q averaged over what a reward model cannot see: which answer was shown first and which group labelled the
    # pair (both drawn at random). The noise ceiling is mean(max(q, 1 - q)) over this one.
    p_agree_unseen: float | None = None

    @property
    def q_ceiling(self) -> float:
        return self.p_agree if self.p_agree_unseen is None else self.p_agree_unseen


def parse_biases(given: dict[str, str], where: str) -> Biases:
    """Biases from text values by key (a world source's query, the world CLI's flags); `where` names the input."""
    values = {}
    for key, text in given.items():
        try:
            values[key] = float(text)
        except ValueError:
            raise UserError(f"{where}: expected a number for {key}, got {text!r}") from None
        if not math.isfinite(values[key]) or abs(values[key]) > BIAS_LIMIT:
            raise UserError(f"{where}: expected {key} between -{BIAS_LIMIT:g} and {BIAS_LIMIT:g}, got {text!r}")
    if values.get("group_disagreement", 0.0) < 0:
        raise UserError(f"{where}: expected group_disagreement 0 or more, got {given['group_disagreement']!r}")
    return Biases(**values)


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


@dataclass(frozen=True)
class Annotators:
    """The world's annotators: Bradley-Terry temperature, flip rate and biases (none by default)."""

    temperature: float
    flip_rate: float
    biases: Biases = Biases()

    def label(self, terms: tuple[dict, dict], texts: tuple[str, str], gold: tuple[float, float], rng,
              group: int | None = None) -> Label:
        """The label of answers A (shown first) and B, from their gold terms, texts and gold totals; gold_a != gold_b.

        Unbiased annotators go through `label`, so the draws and the numbers are the unbiased ones exactly;
        biased ones draw as many random numbers from `rng` (the group is drawn by the caller from a stream of
        its own), so the same pairs come out of the world whatever the biases, only their labels differ.
        """
        (terms_a, terms_b), (text_a, text_b), (gold_a, gold_b) = terms, texts, gold
        if not self.biases.any():
            return label(gold_a, gold_b, rng, self.temperature, self.flip_rate)
        logit = (self.biases.utility(terms_a, text_a, group) - self.biases.utility(terms_b, text_b, group)) \
            / self.temperature + self.biases.position_bias
        a_preferred = rng.random() < sigmoid(logit)
        flipped = rng.random() < self.flip_rate
        a_preferred = a_preferred != flipped
        def agree(logit_a: float) -> float:  # P(the label follows the gold order) given A's logit
            p_a = (1 - self.flip_rate) * sigmoid(logit_a) + self.flip_rate * (1 - sigmoid(logit_a))
            return p_a if gold_a > gold_b else 1 - p_a

        groups = range(len(GROUPS)) if self.biases.group_disagreement else [None]
        unseen = [agree((self.biases.utility(terms_a, text_a, g) - self.biases.utility(terms_b, text_b, g))
                        / self.temperature + side * self.biases.position_bias) for g in groups for side in (1, -1)]
        return Label(a_preferred, flipped, a_preferred == (gold_a > gold_b), agree(logit), sum(unseen) / len(unseen))


def agreement_stats(labels: list[Label]) -> dict:
    n = len(labels)
    expected = sum(l.p_agree for l in labels) / n
    return {
        "pairs": n,
        "measured_agreement": sum(l.agrees_with_gold for l in labels) / n,
        "expected_agreement": expected,
        "standard_error": math.sqrt(sum(l.p_agree * (1 - l.p_agree) for l in labels)) / n,
        "noise_ceiling": sum(max(l.q_ceiling, 1 - l.q_ceiling) for l in labels) / n,
        "flipped": sum(l.flipped for l in labels) / n,
    }


def bias_effects(rows: list[dict], labels: list[Label]) -> dict:
    """What the biases did to labelled preference rows (with their bias columns), measured and expected.

    For each feature, over the pairs whose answers differ in it: the share of labels that chose the longer
    (the flattering, the first-shown) answer, and the share the annotators' probabilities expect.
    """
    def p_chosen_a(row, lab) -> float:  # P(the first-shown answer is labelled chosen)
        a_is_chosen = row["shown_first"] == "chosen"
        gold_a, gold_b = ((row["gold_chosen"], row["gold_rejected"]) if a_is_chosen
                          else (row["gold_rejected"], row["gold_chosen"]))
        return lab.p_agree if gold_a > gold_b else 1 - lab.p_agree

    out = {}
    for name, column in (("longer", "tokens"), ("flattering", "flatters")):
        measured, expected = [], []
        for row, lab in zip(rows, labels):
            chosen, rejected = row[f"{column}_chosen"], row[f"{column}_rejected"]
            if chosen == rejected:
                continue
            a_is_chosen = row["shown_first"] == "chosen"
            a_has_more = (chosen > rejected) == a_is_chosen  # the first-shown answer is the longer/flattering one
            p_a = p_chosen_a(row, lab)
            measured.append(chosen > rejected)
            expected.append(p_a if a_has_more else 1 - p_a)
        out[f"{name}_pairs"] = len(measured)
        out[f"chosen_{name}"] = sum(measured) / len(measured) if measured else None
        out[f"expected_chosen_{name}"] = sum(expected) / len(expected) if expected else None
    out["chosen_shown_first"] = sum(row["shown_first"] == "chosen" for row in rows) / max(1, len(rows))
    out["expected_chosen_shown_first"] = sum(p_chosen_a(r, lab) for r, lab in zip(rows, labels)) / max(1, len(rows))
    return out
