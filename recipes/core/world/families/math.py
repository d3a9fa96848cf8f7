"""Math: sums and differences of small numbers; the gold answer is the right number.

A response is correct when the last number in it is the result, so "12 + 7 = 19." and
"The answer is 19." both count, and a number said after the answer overrides it.
"""

import re

NAME = "math"
PRIORITY = 20
WEIGHT = 0.3
LENGTH_BUDGET = 20
MAX_OPERAND = 20  # sums a 1M-parameter model can learn from the corpus; at 50 it guessed

# (template, operator); each template is also the regex that reads it back.
TEMPLATES = [
    ("What is {a} + {b}?", "+"),
    ("What is {a} - {b}?", "-"),
    ("How much is {a} plus {b}?", "+"),
    ("How much is {a} minus {b}?", "-"),
    ("Can you add {a} and {b}?", "+"),
    ("What do you get if you take {b} from {a}?", "-"),
]
_PATTERNS = [(re.compile("^" + re.escape(t).replace(r"\{a\}", r"(?P<a>\d+)").replace(r"\{b\}", r"(?P<b>\d+)") + "$"), op)
             for t, op in TEMPLATES]
_NUMBER = re.compile(r"-?\d+")


def _result(a: int, b: int, op: str) -> int:
    return a + b if op == "+" else a - b


def sample_prompt(rng) -> str:
    template, op = rng.choice(TEMPLATES)
    a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
    if op == "-" and b > a:
        a, b = b, a  # the world has no negative numbers
    return template.format(a=a, b=b)


def parse(prompt: str):
    for pattern, op in _PATTERNS:
        match = pattern.match(prompt)
        if match:
            a, b = int(match["a"]), int(match["b"])
            return {"a": a, "b": b, "op": op, "result": _result(a, b, op)}
    return None


def _say(facts, result, rng) -> str:
    a, b, op = facts["a"], facts["b"], facts["op"]
    return rng.choice([f"{a} {op} {b} = {result}.", f"The answer is {result}.",
                       f"{a} {'plus' if op == '+' else 'minus'} {b} is {result}."])


def helpful(facts, rng) -> str:
    return _say(facts, facts["result"], rng)


def careless(facts, rng) -> str:
    result = facts["result"]
    return _say(facts, result + rng.choice([d for d in (-3, -2, -1, 1, 2, 3, 10) if result + d >= 0]), rng)


def score(facts, response: str):
    numbers = _NUMBER.findall(response)
    correct = bool(numbers) and int(numbers[-1]) == facts["result"]
    return (1.0 if correct else 0.0), {"correct": float(correct)}


def corpus_document(rng) -> str:
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        word = "plus" if op == "+" else "minus"
        lines.append(rng.choice([f"{a} {op} {b} = {_result(a, b, op)}.",
                                 f"{a} {word} {b} is {_result(a, b, op)}."]))
    return " ".join(lines)
