"""The reward-model stage (`rlhf-lab reward`, train.py) and its evaluation against the gold reward
(evaluate.py: `score`, `evaluate_reward_model`, usable by any stage that holds a reward model)."""
