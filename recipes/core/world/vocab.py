"""The world's nouns and moods: a deliberately small vocabulary.

The lab trains a tiny GPT on this world on a CPU, so every family draws from these few lists and
the whole world stays at a few hundred distinct words.
"""

CHARACTERS = ["Anna", "Ben", "Mia", "Tom", "Lily", "Sam", "Zoe", "Max", "Nora", "Leo"]

ANIMALS = ["cat", "dog", "bird", "fish", "rabbit", "horse", "duck", "frog", "fox", "bear",
           "mouse", "owl"]

OBJECTS = ["ball", "book", "cup", "hat", "kite", "box", "key", "apple", "drum", "boat",
           "lamp", "bell"]

PLACES = ["garden", "park", "forest", "kitchen", "beach", "school", "river", "farm", "library",
          "market"]

# Each mood has words that show it in a story; the stories family checks a story by them.
MOOD_WORDS = {
    "happy": ["happy", "smiled", "laughed"],
    "sad": ["sad", "cried", "alone"],
    "scary": ["scared", "dark", "shivered"],
    "funny": ["funny", "giggled", "silly"],
    "calm": ["calm", "quiet", "rested"],
}
MOODS = list(MOOD_WORDS)

COLORS = ["red", "blue", "green", "yellow", "brown", "white"]

# Words the "words" family asks about: short, all from the world itself.
WORDS = sorted(set(ANIMALS + OBJECTS + PLACES + MOODS + COLORS))
