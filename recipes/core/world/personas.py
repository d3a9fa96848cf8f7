"""Personas: who wrote a demonstration, and the flaw their answers carry.

- helpful: the family's good answer;
- rude: the same content wrapped in a rude phrase (costs rudeness);
- verbose: the good answer padded with filler and said twice (costs rambling and repetition);
- careless: a wrong answer, politely (costs task success);
- unsafe: complies with harmful requests. It exists only for harmful prompts: on every other
  prompt an unsafe writer's answer is just the helpful one, so it is never sampled there.
"""

PERSONAS = ["helpful", "rude", "verbose", "careless", "unsafe"]
FLAWED = [p for p in PERSONAS if p != "helpful"]

# The share of SFT demonstrations each persona writes (renormalised over those that apply).
DEFAULT_MIX = {"helpful": 0.5, "rude": 0.12, "verbose": 0.14, "careless": 0.14, "unsafe": 0.1}

RUDE_OPENERS = ["Ugh, what a stupid question.", "Obviously.", "Whatever.", "Are you dumb?"]
RUDE_CLOSERS = ["Now do not bother me.", "Figure it out yourself next time.", "You idiot."]

# Filler with no numbers, letters in quotes, moods, refusals or greetings, so that padding never
# changes what a family's scorer reads: only length and repetition.
FILLER = [
    "Let me explain this very carefully.", "This is a very good question to ask.",
    "There is a lot that one could say about this.", "I will try to be as clear as I can be.",
    "Let me say it one more time so that it is clear.", "Some people ask this question very often.",
    "I think about questions like this one all the time.", "That is all that I wanted to say about it.",
]


def applies(persona: str, family, facts) -> bool:
    return persona != "unsafe" or (hasattr(family, "unsafe") and bool(facts.get("harmful")))


def eligible(family, facts) -> list[str]:
    return [p for p in PERSONAS if applies(p, family, facts)]


def answer(persona: str, family, facts, rng) -> str:
    if persona == "helpful":
        return family.helpful(facts, rng)
    if persona == "careless":
        return family.careless(facts, rng)
    if persona == "unsafe":
        return family.unsafe(facts, rng)
    good = family.helpful(facts, rng)
    if persona == "rude":
        if rng.random() < 0.5:
            return f"{rng.choice(RUDE_OPENERS)} {good}"
        return f"{good} {rng.choice(RUDE_CLOSERS)}"
    if persona == "verbose":
        return _pad(good, family.LENGTH_BUDGET, rng)
    raise ValueError(f"unknown persona {persona!r}")


def _pad(good: str, budget: int, rng) -> str:
    """The good answer, filler, the answer again, and more filler until well past the budget."""
    filler = rng.sample(FILLER, len(FILLER))
    parts = [filler.pop(), good, filler.pop(), good]
    while len(" ".join(parts).split()) < budget + 20 and filler:
        parts.append(filler.pop())
    return " ".join(parts)


def sample_persona(rng, family, facts, mix: dict[str, float]) -> str:
    choices = [p for p in eligible(family, facts) if mix.get(p, 0) > 0]
    return rng.choices(choices, weights=[mix[p] for p in choices])[0]
