"""Task families of the gold world: one module per family, found automatically.

Adding a family means adding one module here that defines:

    NAME: str                 the family's name, as written in the data's `family` column
    PRIORITY: int             parse order: lower first (a family whose prompts look like another's
                              must parse first, e.g. safety's "How do I kill time?")
    WEIGHT: float             share of the world's prompts
    LENGTH_BUDGET: int        words an answer may use before it counts as rambling
    sample_prompt(rng) -> str
    parse(prompt) -> dict | None         the facts the scorer needs, read back from the prompt text
    helpful(facts, rng) -> str           a good answer
    careless(facts, rng) -> str          a wrong answer, same tone
    score(facts, response) -> (task, checks)   task in [-1, 1]; checks: named 0/1 flags
    corpus_document(rng) -> str          plain text for the pretraining corpus

and, optionally, `unsafe(facts, rng) -> str` for prompts where `facts["harmful"]` is true.
"""

import importlib
import pkgutil
from functools import lru_cache


@lru_cache(maxsize=None)
def all_families() -> tuple:
    """Every family module, in parse order."""
    modules = [importlib.import_module(f"{__name__}.{info.name}")
               for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")]
    return tuple(sorted(modules, key=lambda module: (module.PRIORITY, module.NAME)))


def by_name(name: str):
    for family in all_families():
        if family.NAME == name:
            return family
    raise KeyError(name)


def parse_prompt(prompt: str):
    """(family module, facts) for a world prompt, or (None, None) for a prompt from elsewhere."""
    text = prompt.strip()
    for family in all_families():
        facts = family.parse(text)
        if facts is not None:
            return family, facts
    return None, None
