"""The reward-model stage (`rlhf-lab reward`, train.py) and its evaluation against the gold reward
(evaluate.py). `score` is this package's public face for later stages: a reward model's score of
(prompt, answer) pairs, rendered exactly as in training."""


def score(model, tokenizer, prompts, answers, **kwargs) -> list[float]:
    from reward.evaluate import score as _score

    return _score(model, tokenizer, prompts, answers, **kwargs)
