"""Numbers read back from a transformers trainer's log history, the same whether or not the run was resumed.

`trainer.state.log_history` is saved in every checkpoint and restored by `--resume`, so anything computed
from it comes out as an uninterrupted run's would. transformers' own `training_loss` averages only the
steps the last process trained, so it is not used for the recorded metrics.
"""

from __future__ import annotations


def logged(trainer, key: str) -> list[float]:
    """Every logged value of `key`, in order."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def mean_train_loss(trainer) -> float | None:
    """The training loss averaged over every logged step: each logged loss is the mean over the steps since
    the log before it, so it counts as many times as it has steps."""
    total, steps, last_step = 0.0, 0, 0
    for entry in trainer.state.log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            steps += entry["step"] - last_step
            last_step = entry["step"]
    return total / steps if steps else None
