"""The reward-model stage (`rlhf-lab reward`, train.py) and its evaluation against the gold reward
(evaluate.py). `score` is this package's public face for later stages: a reward model's score of
(prompt, answer) pairs, rendered exactly as in training."""

from reward.evaluate import score as _score


def score(model, tokenizer, prompts, answers, **kwargs) -> list[float]:
    return _score(model, tokenizer, prompts, answers, **kwargs)
