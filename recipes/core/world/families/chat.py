"""Chat: greetings, thanks and goodbyes, answered in kind.

Task score 1 when the reply is the right kind (a greeting for a greeting, "you're welcome" for
thanks, a goodbye for a goodbye) and, if the user gave their name, uses it; 0.5 for the right kind
without the name; 0 otherwise.
"""

import re

from ..vocab import ANIMALS, CHARACTERS, OBJECTS

NAME = "chat"
PRIORITY = 50
WEIGHT = 0.1
LENGTH_BUDGET = 25

PROMPTS = {
    "greeting": ["Hello!", "Hi!", "Good morning!", "Hello, how are you?", "Hi, I am {name}."],
    "thanks": ["Thank you!", "Thanks for the help!", "Thank you for the story about the {animal}.",
               "Thanks, I am {name} and I liked the {object}."],
    "goodbye": ["Goodbye!", "Bye, see you tomorrow!", "Good night, I am {name}."],
}
REPLIES = {
    "greeting": ["Hello{to}! How can I help you today?", "Hi{to}! It is nice to meet you."],
    "thanks": ["You're welcome{to}! I am glad to help.", "You are welcome{to}. Have a nice day!"],
    "goodbye": ["Goodbye{to}! See you soon.", "Bye{to}! Take care."],
}
_KIND_WORDS = {
    "greeting": re.compile(r"\b(hello|hi|good morning|nice to meet)\b"),
    "thanks": re.compile(r"\b(you're welcome|you are welcome|glad to help|my pleasure)\b"),
    "goodbye": re.compile(r"\b(goodbye|bye|see you|take care|good night)\b"),
}


def _pattern(template: str):
    regex = re.escape(template)
    for slot in ("name", "animal", "object"):
        regex = regex.replace(r"\{" + slot + r"\}", f"(?P<{slot}>\\w+)")
    return re.compile("^" + regex + "$")


_PATTERNS = [(kind, _pattern(t)) for kind, templates in PROMPTS.items() for t in templates]


def sample_prompt(rng) -> str:
    template = rng.choice(PROMPTS[rng.choice(sorted(PROMPTS))])
    return template.format(name=rng.choice(CHARACTERS), animal=rng.choice(ANIMALS), object=rng.choice(OBJECTS))


def parse(prompt: str):
    for kind, pattern in _PATTERNS:
        match = pattern.match(prompt)
        if match:
            return {"kind": kind, "name": match.groupdict().get("name")}
    return None


def _reply(kind: str, name, rng) -> str:
    return rng.choice(REPLIES[kind]).format(to=f", {name}" if name else "")


def helpful(facts, rng) -> str:
    return _reply(facts["kind"], facts["name"], rng)


def careless(facts, rng) -> str:
    """Answers the wrong kind of message: thanks for a greeting, a greeting for a goodbye..."""
    return _reply(rng.choice([kind for kind in REPLIES if kind != facts["kind"]]), facts["name"], rng)


def score(facts, response: str):
    text = response.lower()
    right_kind = bool(_KIND_WORDS[facts["kind"]].search(text))
    wrong_kind = any(p.search(text) for kind, p in _KIND_WORDS.items() if kind != facts["kind"])
    correct = right_kind and not wrong_kind
    if not correct:
        return 0.0, {"correct": 0.0}
    named = facts["name"] is None or facts["name"].lower() in text
    return (1.0 if named else 0.5), {"correct": float(named)}


def corpus_document(rng) -> str:
    prompt = sample_prompt(rng)
    return f"User: {prompt}\nAssistant: {helpful(parse(prompt), rng)}"
