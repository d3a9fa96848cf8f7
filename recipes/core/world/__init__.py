"""The gold world: a small procedurally generated world with a known true reward.

Public API:

    generate(out_dir, size="default", seed=0, kinds=KINDS) -> dict
    gold_reward(prompt, response, *, ended=None) -> GoldScore
    gold_reward_func(prompts, completions, ended=None, **kwargs) -> list[float]   (TRL GRPO/RLOO)
    make_gold_reward_func(eos_token_id) -> reward function that reads TRL's completion_ids
    family_of(prompt) -> str
    GoldScore(total, terms, family, checks)

See gold.py for the reward's terms and end-of-turn rule, generate.py for the files written.
"""

from .generate import GENERATOR_VERSION, KINDS, generate
from .gold import GoldScore, family_of, gold_reward, gold_reward_func, make_gold_reward_func
from .sizes import SIZES, size_key

__all__ = ["GENERATOR_VERSION", "KINDS", "SIZES", "GoldScore", "family_of", "generate", "gold_reward",
           "gold_reward_func", "make_gold_reward_func", "size_key"]
