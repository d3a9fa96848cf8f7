"""KTO: `rlhf-lab align --method kto --config recipes/<name>/align-kto.yaml`.

Kahneman-Tversky Optimization (Ethayarajh et al. 2024) through `trl.KTOTrainer`, on unpaired
good/bad labels: every preference pair gives two rows, (prompt, chosen, desirable) and (prompt,
rejected, undesirable). The labels are the annotators' (noisy, in the gold world: a "chosen" answer
is only more likely the better one), which is what unpaired feedback is like; with `sft_sample_pairs`
they are the reward model's best and worst of the SFT model's own answers. The rows are shuffled
once with the seed: KTO estimates its KL term from mismatched prompt/answer neighbours within a
batch, which must not be the two answers to the same prompt. LoRA with `use_peft: true` (merged on
save). Evaluated by the one evaluation (alignment/evaluate.py); see alignment/offline.py.
"""

from __future__ import annotations

import dataclasses

import trl

from alignment.common import AlignArguments
from alignment.offline import OfflineArguments, run
from recipes.core.config import RunArguments

METHOD = "kto"
STAGE = f"align-{METHOD}"


@dataclasses.dataclass
class KTOStageConfig(RunArguments, AlignArguments, OfflineArguments, trl.KTOConfig):
    """trl.KTOConfig (every key of it) plus the alignment keys (parents, data, LoRA, evaluation)."""

    learning_rate: float = 5e-6
    beta: float = 0.1

    def __post_init__(self):
        self.check_offline_keys(STAGE)
        if self.beta <= 0:
            raise ValueError(f"key 'beta' must be positive, got {self.beta}")
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise ValueError("key 'per_device_train_batch_size' must be at least 2 for loss_type 'kto' "
                             "(its KL term pairs each prompt with a neighbour's answer)")
        super().__post_init__()


def unpair(pairs, seed: int = 0):
    """TRL's unpaired format: (prompt, completion, label) rows, chosen -> True, rejected -> False, shuffled."""
    import datasets

    prompts, completions, labels = [], [], []
    for row in pairs:
        for side, label in (("chosen", True), ("rejected", False)):
            prompts.append(row["prompt"])
            completions.append(row[side])
            labels.append(label)
    rows = datasets.Dataset.from_dict({"prompt": prompts, "completion": completions, "label": labels})
    return rows.shuffle(seed=seed).flatten_indices()


def main(config: KTOStageConfig) -> dict:
    return run(config, METHOD, trl.KTOTrainer, to_rows=lambda pairs, config: unpair(pairs, config.seed))


CONFIG = KTOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
