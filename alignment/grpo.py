"""GRPO's family: `rlhf-lab align --method grpo|dr-grpo|dapo|gspo --config recipes/<name>/align-<method>.yaml`.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) through `trl.GRPOTrainer`: for each prompt,
`num_generations` sampled answers; each answer's advantage is its reward minus the group mean (over the group's
standard deviation unless `scale_rewards` says otherwise); a clipped policy-gradient step, with a KL penalty to
the SFT model when `beta` > 0. The family's members are one trainer with different losses, each a method of its
own so that the comparison has a row for each:

    grpo      the original loss: each answer's token losses averaged, then the answers (loss_type grpo)
    dr-grpo   Dr. GRPO (Liu et al. 2025): token losses over a constant (max_completion_length), rewards not
              divided by the group's standard deviation (loss_type dr_grpo, scale_rewards none)
    dapo      DAPO (Yu et al. 2025): token losses over the batch's tokens, the clip range raised above
              (epsilon_high 0.28), cut-off answers left out of the loss (loss_type dapo,
              mask_truncated_completions); TRL's default loss
    gspo      GSPO (Zheng et al. 2025): one importance ratio per answer (the mean of its tokens' log-ratios),
              clipped in a narrow range (importance_sampling_level sequence, epsilon 3e-4, epsilon_high 4e-4)

A method's defining keys are its defaults; setting `loss_type` or `importance_sampling_level` to another
member's value is refused (run that member instead). `grpo` also accepts TRL's other losses (bnpo, cispo, sapo,
...), and the comparison shows the loss each row ran. The reward is `reward_funcs` (alignment/rewards.py: the
proxy by default). LoRA with `use_peft: true`, merged on save. Shared machinery: alignment/online.py; the
evaluation: alignment/evaluate.py.
"""

from __future__ import annotations

import dataclasses

import trl

from alignment.common import AlignArguments
from alignment.online import OnlineArguments, run_online
from recipes.core.config import RunArguments

DEFINING = ("loss_type", "importance_sampling_level")  # what makes a member that member: not to be changed


@dataclasses.dataclass
class GRPOStageConfig(RunArguments, AlignArguments, OnlineArguments, trl.GRPOConfig):
    """trl.GRPOConfig (every key of it) plus the parents, data, LoRA, reward and evaluation keys; the members'
    configs below change only their defaults."""

    METHOD = "grpo"
    loss_type: str = "grpo"
    importance_sampling_level: str = "token"

    def __post_init__(self):
        self.check_family_keys()
        super().__post_init__()

    def check_family_keys(self) -> None:
        for key in DEFINING:
            value, own = getattr(self, key), member_default(self.METHOD, key)
            member = next((m for m in CONFIGS if m != "grpo" and member_default(m, key) == value
                           and member_default(m, key) != member_default("grpo", key)),
                          "grpo" if member_default("grpo", key) == value else None)
            if value == own or (self.METHOD == "grpo" and key == "loss_type" and member is None):
                continue  # its own, or one of TRL's other losses (bnpo, cispo, sapo, ...) under plain grpo
            raise ValueError(f"key '{key}': method {self.METHOD} runs {key} {own!r}, got {value!r}"
                             + (f" (that is --method {member})" if member else ""))


@dataclasses.dataclass
class DrGRPOStageConfig(GRPOStageConfig):
    METHOD = "dr-grpo"
    loss_type: str = "dr_grpo"
    scale_rewards: str = "none"


@dataclasses.dataclass
class DAPOStageConfig(GRPOStageConfig):
    METHOD = "dapo"
    loss_type: str = "dapo"
    epsilon_high: float = 0.28
    mask_truncated_completions: bool = True


@dataclasses.dataclass
class GSPOStageConfig(GRPOStageConfig):
    METHOD = "gspo"
    importance_sampling_level: str = "sequence"
    epsilon: float = 3e-4
    epsilon_high: float = 4e-4


CONFIGS = {"grpo": GRPOStageConfig, "dr-grpo": DrGRPOStageConfig, "dapo": DAPOStageConfig, "gspo": GSPOStageConfig}
CONFIG = GRPOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into CONFIGS[method]


def member_default(method: str, key: str):
    return next(f.default for f in dataclasses.fields(CONFIGS[method]) if f.name == key)


def main(config: GRPOStageConfig) -> dict:
    return run_online(config, config.METHOD, trl.GRPOTrainer)
