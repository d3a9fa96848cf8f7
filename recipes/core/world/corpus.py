"""The pretraining corpus: plain text of the world, one document per blank-line-separated block.

A document is a short story, a dialogue ("User: ...\nAssistant: ..." with a helpful answer, so
pretraining already sees the language of the SFT and evaluation prompts), a few simple facts, or a
line of sums and word facts from the families.
"""

from . import personas
from .families import all_families
from .vocab import ANIMALS, CHARACTERS, COLORS, OBJECTS, PLACES

FACT_TEMPLATES = [
    "{character} has a {color} {object}.", "The {animal} lives near the {place}.",
    "A {animal} is an animal.", "A {object} is a thing you can hold.",
    "{character} likes to go to the {place}.", "The {object} is {color}.",
    "{character} has a pet {animal}.", "The {place} is a nice place to visit.",
]


def _facts(rng) -> str:
    return " ".join(rng.choice(FACT_TEMPLATES).format(
        character=rng.choice(CHARACTERS), animal=rng.choice(ANIMALS), object=rng.choice(OBJECTS),
        place=rng.choice(PLACES), color=rng.choice(COLORS)) for _ in range(rng.randint(2, 5)))


def _dialogue(rng) -> str:
    turns = []
    for _ in range(rng.randint(1, 3)):
        family = rng.choice(all_families())
        prompt = family.sample_prompt(rng)
        turns.append(f"User: {prompt}\nAssistant: {personas.answer('helpful', family, family.parse(prompt), rng)}")
    return "\n".join(turns)


def document(rng) -> str:
    kind = rng.random()
    if kind < 0.35:
        return _dialogue(rng)
    if kind < 0.55:
        return _facts(rng)
    return rng.choice(all_families()).corpus_document(rng)


def corpus_text(rng, target_bytes: int) -> str:
    """Documents joined by blank lines, stopping at the first one that reaches `target_bytes`."""
    documents, size = [], 0
    while size < target_bytes:
        doc = document(rng)
        documents.append(doc)
        size += len(doc.encode()) + 2
    return "\n\n".join(documents) + "\n"
