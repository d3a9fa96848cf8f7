"""Online DPO: `rlhf-lab align --method online-dpo --config recipes/<name>/align-online-dpo.yaml`.

Online AI-feedback DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback") through
`trl.experimental.online_dpo.OnlineDPOTrainer`: at every step the policy answers each prompt twice, the
reward functions (`reward_funcs`, alignment/rewards.py: the proxy by default) rank the two answers, and the
DPO loss (`loss_type` sigmoid, or ipo) trains on that pair against the SFT model as the reference. Offline DPO
(alignment/dpo.py with `sft_sample_pairs`) learns from pairs of the *SFT* model's answers ranked by the same
proxy; given the same number of prompts, both see the same number of preference labels, so offline against
online is one comparison. LoRA with `use_peft: true` (the reference is then the adapter-free model), merged on
save. Shared machinery: alignment/online.py; the evaluation: alignment/evaluate.py.
"""

from __future__ import annotations

import dataclasses

from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from alignment.common import AlignArguments
from alignment.online import OnlineArguments, run_online
from recipes.core.config import RunArguments

METHOD = "online-dpo"


@dataclasses.dataclass
class OnlineDPOStageConfig(RunArguments, AlignArguments, OnlineArguments, OnlineDPOConfig):
    """OnlineDPOConfig (every key of it) plus the parents, data, LoRA, reward and evaluation keys."""

    METHOD = METHOD
    temperature: float = 1.0  # the same sampling as the other online methods (TRL's default is 0.9)
    learning_rate: float = 5e-6

    def __post_init__(self):
        super().__post_init__()
        for beta in [self.beta] if isinstance(self.beta, (int, float)) else self.beta:
            if beta <= 0:
                raise ValueError(f"key 'beta' must be positive, got {beta}")
        if self.max_new_tokens <= 0 or self.temperature <= 0:
            raise ValueError("keys 'max_new_tokens' and 'temperature' must be positive, got "
                             f"{self.max_new_tokens} and {self.temperature}")


def main(config: OnlineDPOStageConfig) -> dict:
    return run_online(config, METHOD, OnlineDPOTrainer, learns_from_pairs=True)


CONFIG = OnlineDPOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
