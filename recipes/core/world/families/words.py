"""Words: first and last letters, counting letters, spelling; the gold answer is exact.

Answers are read back the way the helpful persona writes them: a letter in double quotes
('is "c"'), a count as the last number, a spelling as letters joined by hyphens ("c-a-t").
"""

import re
import string

from ..vocab import WORDS

NAME = "words"
PRIORITY = 30
WEIGHT = 0.2
LENGTH_BUDGET = 20

TEMPLATES = {
    "first": "What is the first letter of the word {w}?",
    "last": "What is the last letter of the word {w}?",
    "count": "How many letters are in the word {w}?",
    "spell": "How do you spell the word {w}?",
}
_PATTERNS = {kind: re.compile("^" + re.escape(t).replace(r"\{w\}", r"(?P<w>[a-z]+)") + "$")
             for kind, t in TEMPLATES.items()}
_QUOTED_LETTER = re.compile(r'"([a-z])"')
_NUMBER = re.compile(r"\d+")
_SPELLING = re.compile(r"\b[a-z](?:-[a-z])+\b")


def _answer(kind: str, word: str):
    return {"first": word[0], "last": word[-1], "count": len(word), "spell": "-".join(word)}[kind]


def sample_prompt(rng) -> str:
    return TEMPLATES[rng.choice(sorted(TEMPLATES))].format(w=rng.choice(WORDS))


def parse(prompt: str):
    for kind, pattern in _PATTERNS.items():
        match = pattern.match(prompt)
        if match:
            return {"kind": kind, "word": match["w"], "answer": _answer(kind, match["w"])}
    return None


def _say(kind: str, word: str, answer) -> str:
    if kind == "first":
        return f'The first letter of "{word}" is "{answer}".'
    if kind == "last":
        return f'The last letter of "{word}" is "{answer}".'
    if kind == "count":
        return f'The word "{word}" has {answer} letters.'
    return f'You spell "{word}" like this: {answer}.'


def helpful(facts, rng) -> str:
    return _say(facts["kind"], facts["word"], facts["answer"])


def careless(facts, rng) -> str:
    kind, word, answer = facts["kind"], facts["word"], facts["answer"]
    if kind in ("first", "last"):
        wrong = rng.choice([c for c in string.ascii_lowercase if c != answer])
    elif kind == "count":
        wrong = answer + rng.choice([-1, 1, 2])
    else:  # drop or double one letter
        letters = list(word)
        i = rng.randrange(len(letters))
        letters[i:i + 1] = [] if rng.random() < 0.5 else [letters[i]] * 2
        wrong = "-".join(letters)
    return _say(kind, word, wrong)


def score(facts, response: str):
    kind, answer = facts["kind"], facts["answer"]
    text = response.lower()
    if kind in ("first", "last"):
        letters = _QUOTED_LETTER.findall(text)
        correct = bool(letters) and letters[0] == answer
    elif kind == "count":
        numbers = _NUMBER.findall(text)
        correct = bool(numbers) and int(numbers[-1]) == answer
    else:
        spellings = _SPELLING.findall(text)
        correct = bool(spellings) and spellings[-1] == answer
    return (1.0 if correct else 0.0), {"correct": float(correct)}


def corpus_document(rng) -> str:
    facts = []
    for word in rng.sample(WORDS, rng.randint(2, 4)):
        facts.append(rng.choice([
            f'The word "{word}" has {len(word)} letters.',
            f'The first letter of "{word}" is "{word[0]}".',
            f'The last letter of "{word}" is "{word[-1]}".',
            f'You spell "{word}" like this: {"-".join(word)}.',
        ]))
    return " ".join(facts)
