"""ORPO: `rlhf-lab align --method orpo --config recipes/<name>/align-orpo.yaml`.

Odds Ratio Preference Optimization (Hong et al. 2024) through TRL's ORPO trainer (`trl.experimental.orpo`): the
SFT loss on the chosen answer plus `beta` times a logistic loss on the log odds ratio of the chosen over the
rejected answer. No reference model, and in the paper no separate SFT stage either; here it starts from the
SFT model like every other method, so that the comparison differs only by the loss. Trained on the same pairs
as DPO (the dataset's, or with `sft_sample_pairs` the SFT model's own answers ranked by the reward model). LoRA
with `use_peft: true` (merged on save). Evaluated by the one evaluation (alignment/evaluate.py); see
alignment/offline.py.
"""

from __future__ import annotations

import dataclasses

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from alignment.common import AlignArguments
from alignment.offline import OfflineArguments, run
from recipes.core.config import RunArguments

METHOD = "orpo"
STAGE = f"align-{METHOD}"


@dataclasses.dataclass
class ORPOStageConfig(RunArguments, AlignArguments, OfflineArguments, ORPOConfig):
    """ORPOConfig (every key of it) plus the alignment keys (parents, data, LoRA, evaluation)."""

    learning_rate: float = 5e-6

    def __post_init__(self):
        self.check_offline_keys(STAGE)
        if self.beta <= 0:
            raise ValueError(f"key 'beta' must be positive, got {self.beta}")
        super().__post_init__()


def main(config: ORPOStageConfig) -> dict:
    return run(config, METHOD, ORPOTrainer, reference_free=True)


CONFIG = ORPOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
