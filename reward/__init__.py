"""The reward-model stage (`rlhf-lab reward`, train.py) and its evaluation against the gold reward
(evaluate.py). `score` is this package's public face for later stages: a reward model's score of
(prompt, answer) pairs, rendered exactly as in training."""

from reward.evaluate import score  # noqa: F401  (the package's public face)
