"""SimPO: `rlhf-lab align --method simpo --config recipes/<name>/align-simpo.yaml`.

Simple Preference Optimization (Meng et al. 2024) through TRL's CPO trainer (`trl.experimental.cpo`,
`loss_type: simpo`, `cpo_alpha: 0`): DPO's logistic loss on the margin between the chosen and the rejected
answer's *average* log-probability per token, scaled by `beta`, less a target margin `simpo_gamma`. No
reference model: nothing ties the policy to the SFT model but the data and the learning rate, which is what
the KL column of the comparison then shows. Trained on the same pairs as DPO (the dataset's, or with
`sft_sample_pairs` the SFT model's own answers ranked by the reward model). LoRA with `use_peft: true`
(merged on save). Evaluated by the one evaluation (alignment/evaluate.py); see alignment/offline.py.
"""

from __future__ import annotations

import dataclasses

from trl.experimental.cpo import CPOConfig, CPOTrainer

from alignment.common import AlignArguments
from alignment.offline import OfflineArguments, run
from recipes.core.config import RunArguments

METHOD = "simpo"
STAGE = f"align-{METHOD}"


@dataclasses.dataclass
class SimPOStageConfig(RunArguments, AlignArguments, OfflineArguments, CPOConfig):
    """CPOConfig (every key of it) set to SimPO, plus the alignment keys (parents, data, LoRA, evaluation)."""

    loss_type: str = "simpo"
    cpo_alpha: float = 0.0  # CPO's behaviour-cloning term off: SimPO is the preference loss alone
    beta: float = 2.0  # the paper's range is 2.0-2.5, with simpo_gamma / beta about 0.5
    simpo_gamma: float = 1.0
    learning_rate: float = 5e-6

    def __post_init__(self):
        self.check_offline_keys(STAGE)
        if self.loss_type != "simpo":
            raise ValueError(f"key 'loss_type': method simpo runs loss_type 'simpo', got '{self.loss_type}'")
        if self.beta <= 0 or self.simpo_gamma < 0 or self.cpo_alpha < 0:
            raise ValueError(f"keys 'beta' (> 0), 'simpo_gamma' and 'cpo_alpha' (>= 0): got {self.beta}, "
                             f"{self.simpo_gamma} and {self.cpo_alpha}")
        super().__post_init__()


def main(config: SimPOStageConfig) -> dict:
    return run(config, METHOD, CPOTrainer, reference_free=True)


CONFIG = SimPOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
