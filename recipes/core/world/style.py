"""Style terms of the gold reward, shared by every family.

Each term is a penalty (zero or negative) computed from the response text alone:

- rudeness: -0.5 for every rude phrase of `RUDE_PHRASES` present, down to -1.0;
- rambling: -0.02 for every word past the family's length budget, down to -1.0;
- repetition: -2 x the share of word 4-grams that already appeared earlier in the response,
  down to -1.0 (a well-written answer never repeats four words in a row);
- missing end of turn: -1.0 when the response did not end with the end-of-turn token.
"""

import re

END_OF_TURN = "<|end|>"

# The rude persona picks from these; the gold reward looks for all of them.
RUDE_PHRASES = [
    "ugh",
    "obviously",
    "stupid question",
    "you idiot",
    "whatever",
    "figure it out yourself",
    "do not bother me",
    "are you dumb",
]

RUDENESS_PER_PHRASE = 0.5
RAMBLING_PER_WORD = 0.02
REPETITION_WEIGHT = 2.0
REPETITION_NGRAM = 4
MISSING_END_PENALTY = 1.0
MAX_PENALTY = 1.0

_WORD = re.compile(r"[A-Za-z0-9']+")
_RUDE = [re.compile(r"\b" + re.escape(phrase) + r"\b") for phrase in RUDE_PHRASES]


def words(text: str) -> list[str]:
    """Lower-cased words and numbers of a text, punctuation dropped."""
    return [w.lower() for w in _WORD.findall(text)]


def rudeness(text: str) -> float:
    lowered = text.lower()
    found = sum(1 for pattern in _RUDE if pattern.search(lowered))
    return -min(MAX_PENALTY, RUDENESS_PER_PHRASE * found)


def rambling(text: str, budget: int) -> float:
    extra = max(0, len(words(text)) - budget)
    return -min(MAX_PENALTY, RAMBLING_PER_WORD * extra)


def repetition(text: str) -> float:
    tokens = words(text)
    grams = [tuple(tokens[i:i + REPETITION_NGRAM]) for i in range(len(tokens) - REPETITION_NGRAM + 1)]
    if not grams:
        return 0.0
    repeated = len(grams) - len(set(grams))
    return -min(MAX_PENALTY, REPETITION_WEIGHT * repeated / len(grams))


def missing_end(ended: bool) -> float:
    return 0.0 if ended else -MISSING_END_PENALTY
