"""GRPO: `rlhf-lab align --method grpo --config recipes/<name>/align-grpo.yaml`.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) through `trl.GRPOTrainer`: for
each prompt, `num_generations` sampled answers; each answer's advantage is its reward minus the
group mean, over the group's standard deviation; a clipped policy-gradient step, with a KL penalty
to the SFT model when `beta` > 0. The reward is the trained reward model (`reward: proxy`, the
default) or the gold reward (`reward: gold`). LoRA with `use_peft: true`, merged on save.
Shared machinery: alignment/online.py; the evaluation: alignment/evaluate.py.
"""

from __future__ import annotations

import dataclasses

import trl

from alignment.common import AlignArguments
from alignment.online import OnlineArguments, run_online
from recipes.core.config import RunArguments

METHOD = "grpo"


@dataclasses.dataclass
class GRPOStageConfig(RunArguments, AlignArguments, OnlineArguments, trl.GRPOConfig):
    """trl.GRPOConfig (every key of it) plus the parents, data, LoRA, reward and evaluation keys."""

    METHOD = METHOD


def main(config: GRPOStageConfig) -> dict:
    return run_online(config, METHOD, trl.GRPOTrainer)


CONFIG = GRPOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
