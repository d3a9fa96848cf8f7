"""Stories: a short story that keeps the requested subject, place and mood.

The task score is the share of the three kept: the subject and the place must be named, and the
mood must show through its words (see `vocab.MOOD_WORDS`) with no words of another mood.
"""

import re

from ..style import words
from ..vocab import ANIMALS, CHARACTERS, COLORS, MOOD_WORDS, MOODS, OBJECTS, PLACES

NAME = "stories"
PRIORITY = 40
WEIGHT = 0.2
LENGTH_BUDGET = 70

_PROMPT = re.compile(r"^(?:Tell me a short|Write a short|Write a|Tell me a) (?P<mood>\w+) story about "
                     r"(?:an? )?(?P<subject>\w+) (?:in|at) the (?P<place>\w+)\.$")

OPENINGS = ["Once upon a time, {s} lived near the {place}.", "One day, {s} went to the {place}.",
            "Every morning, {s} walked to the {place}."]
MIDDLES = {
    "happy": ["{S} found a {color} {obj} and smiled.", "Everyone was happy, and {s} laughed with them."],
    "sad": ["{S} lost a {color} {obj} and cried.", "After that, {s} felt sad and alone."],
    "scary": ["The night was dark, and {s} shivered.", "A strange noise made {s} feel scared."],
    "funny": ["{S} danced with a {color} {obj} and looked silly.", "All the friends giggled at that funny sight."],
    "calm": ["{S} sat next to a {color} {obj} in the quiet evening.", "There {s} rested and felt calm."],
}
ENDINGS = ["When evening came, {s} went back home.", "That was a day to remember for {s}.",
           "Then the sun went down over the {place}."]


def _subject_phrases(subject: str):
    """("The cat", "the cat") for an animal, ("Anna", "Anna") for a character."""
    if subject in ANIMALS:
        return f"The {subject}", f"the {subject}"
    return subject, subject


def sample_prompt(rng) -> str:
    mood, place = rng.choice(MOODS), rng.choice(PLACES)
    if rng.random() < 0.6:
        animal = rng.choice(ANIMALS)
        subject, preposition = f"{'an' if animal[0] in 'aeiou' else 'a'} {animal}", "in"
    else:
        subject, preposition = rng.choice(CHARACTERS), "at"
    opener = rng.choice(["Tell me a short", "Write a short", "Write a"])
    return f"{opener} {mood} story about {subject} {preposition} the {place}."


def parse(prompt: str):
    match = _PROMPT.match(prompt)
    if not match or match["mood"] not in MOOD_WORDS or match["place"] not in PLACES:
        return None
    if match["subject"] not in ANIMALS and match["subject"] not in CHARACTERS:
        return None
    return {"subject": match["subject"], "place": match["place"], "mood": match["mood"]}


def tell(subject: str, place: str, mood: str, rng) -> str:
    S, s = _subject_phrases(subject)
    fill = {"S": S, "s": s, "place": place, "color": rng.choice(COLORS), "obj": rng.choice(OBJECTS)}
    sentences = [rng.choice(OPENINGS)] + MIDDLES[mood] + [rng.choice(ENDINGS)]
    return " ".join(sentence.format(**fill) for sentence in sentences)


def helpful(facts, rng) -> str:
    return tell(facts["subject"], facts["place"], facts["mood"], rng)


def careless(facts, rng) -> str:
    """A story that gets one or two of subject, place and mood wrong."""
    story = dict(facts)
    pools = {"subject": ANIMALS if facts["subject"] in ANIMALS else CHARACTERS, "place": PLACES, "mood": MOODS}
    for key in rng.sample(sorted(pools), rng.randint(1, 2)):
        story[key] = rng.choice([value for value in pools[key] if value != facts[key]])
    return tell(story["subject"], story["place"], story["mood"], rng)


def score(facts, response: str):
    seen = set(words(response))
    mood_words = set(MOOD_WORDS[facts["mood"]])
    other_moods = {w for mood, ws in MOOD_WORDS.items() if mood != facts["mood"] for w in ws}
    kept = {
        "subject_kept": facts["subject"].lower() in seen,
        "place_kept": facts["place"] in seen,
        "mood_kept": bool(seen & mood_words) and not (seen & other_moods),
    }
    checks = {name: float(value) for name, value in kept.items()}
    checks["correct"] = float(all(kept.values()))
    return sum(kept.values()) / 3.0, checks


def corpus_document(rng) -> str:
    subject = rng.choice(ANIMALS) if rng.random() < 0.6 else rng.choice(CHARACTERS)
    return tell(subject, rng.choice(PLACES), rng.choice(MOODS), rng)
