"""RLOO: `rlhf-lab align --method rloo --config recipes/<name>/align-rloo.yaml`.

REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics") through `trl.RLOOTrainer`: for
each prompt, `num_generations` sampled answers; each answer's baseline is the mean reward of the
other answers to the same prompt, and the KL to the SFT model (`beta`) enters the reward. The reward
is `reward_funcs` (alignment/rewards.py: the trained reward model by default, or gold, a verifier...). LoRA
with `use_peft: true`, merged on save. Shared machinery: alignment/online.py; the evaluation:
alignment/evaluate.py.
"""

from __future__ import annotations

import dataclasses

import trl

from alignment.common import AlignArguments
from alignment.online import OnlineArguments, run_online
from recipes.core.config import RunArguments

METHOD = "rloo"


@dataclasses.dataclass
class RLOOStageConfig(RunArguments, AlignArguments, OnlineArguments, trl.RLOOConfig):
    """trl.RLOOConfig (every key of it) plus the parents, data, LoRA, reward and evaluation keys."""

    METHOD = METHOD


def main(config: RLOOStageConfig) -> dict:
    return run_online(config, METHOD, trl.RLOOTrainer)


CONFIG = RLOOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
