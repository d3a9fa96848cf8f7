"""DPO: `rlhf-lab align --method dpo --config recipes/<name>/align-dpo.yaml`.

Direct Preference Optimization (Rafailov et al. 2023) through `trl.DPOTrainer`: the SFT model is
trained on the recipe's preference pairs to raise the log-probability ratio (policy / reference) of
the chosen answer over the rejected one, the reference being the SFT model itself. The loss is
DPOConfig's own `loss_type`: sigmoid (DPO), ipo, hinge, robust, ... (several combine with
`loss_weights`). LoRA with `use_peft: true` (merged on save). Evaluated by the one evaluation
(alignment/evaluate.py) every `eval_every` steps; see alignment/offline.py for the shared flow.
"""

from __future__ import annotations

import dataclasses

import trl

from alignment.common import AlignArguments
from alignment.offline import OfflineArguments, run
from recipes.core.config import RunArguments

METHOD = "dpo"
STAGE = f"align-{METHOD}"
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclasses.dataclass
class DPOStageConfig(RunArguments, AlignArguments, OfflineArguments, trl.DPOConfig):
    """trl.DPOConfig (every key of it) plus the alignment keys (parents, data, LoRA, evaluation)."""

    learning_rate: float = 5e-6
    beta: float = 0.1

    def __post_init__(self):
        self.check_offline_keys(STAGE)
        losses = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        unknown = [loss for loss in losses if loss not in LOSS_TYPES]
        if unknown:
            raise ValueError(f"key 'loss_type': unknown loss '{unknown[0]}' (expected one of {', '.join(LOSS_TYPES)})")
        if self.beta <= 0:
            raise ValueError(f"key 'beta' must be positive, got {self.beta}")
        super().__post_init__()


def main(config: DPOStageConfig) -> dict:
    return run(config, METHOD, trl.DPOTrainer)


CONFIG = DPOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
