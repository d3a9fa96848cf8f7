"""Stop training at the first step whose loss, or whose policy's sampling, is NaN or infinite.

transformers' default (`logging_nan_inf_filter`) quietly replaces such losses in the log with the average of
the others and trains on: the run would go on with broken weights and look healthy. The guard turns the
filter off, looks at the loss accumulated since the last log after every optimizer step (one scalar, one
device sync), and raises a `UserError` naming the step and the newest checkpoint saved before it, so the run
stops before a bad checkpoint can be written.

Weights can also blow up while the loss stays finite (a huge step that saturates every log-probability);
the first sign is then the policy's next-token probabilities, NaN or infinite when it samples for an
evaluation or a rollout. `stops_on_non_finite` turns torch's error there into the same one line.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from transformers import TrainerCallback

from recipes.core.errors import UserError
from recipes.core.kill_switch import kill_if_asked
from recipes.core.rundir import complete_checkpoints, step_of


def last_good_checkpoint(checkpoints_dir: Path | str, before: int) -> str:
    """The newest complete checkpoint of a step before `before` (checkpoint k holds the weights after k
    optimizer steps), or 'none'."""
    done = [p for p in complete_checkpoints(Path(checkpoints_dir)) if step_of(p) < before]
    return str(done[-1]) if done else "none"


ADVICE = "(lower learning_rate, or check the data)"


def non_finite_error(name: str, value: float, step: int, checkpoints_dir: Path | str) -> UserError:
    return UserError(f"{name} became {value} at step {step}; last good checkpoint: "
                     f"{last_good_checkpoint(checkpoints_dir, before=step)} {ADVICE}")


@contextlib.contextmanager
def stops_on_non_finite(step, checkpoints_dir: Path | str):
    """Inside the block, sampling from NaN/inf probabilities stops training with one line; `step()` says
    how many steps had been taken."""
    try:
        yield
    except RuntimeError as err:
        if "probability tensor contains" not in str(err):  # torch.multinomial's words for NaN/inf/negative
            raise
        # Sampled from the weights after `step()` steps: checkpoint step(), if written yet, holds them.
        raise UserError(f"the policy's next-token probabilities became NaN or infinite after step {step()}; "
                        f"last good checkpoint: {last_good_checkpoint(checkpoints_dir, before=step())} {ADVICE}") from None


class FiniteLossGuard(TrainerCallback):
    """Attach with `FiniteLossGuard().attach(trainer)`. Checks after the gradients are clipped and before the
    optimizer steps, so a bad step never reaches the weights or a checkpoint."""

    def attach(self, trainer) -> FiniteLossGuard:
        self.trainer = trainer
        trainer.args.logging_nan_inf_filter = False
        trainer.callback_handler.callbacks.insert(0, self)  # before any callback that samples from the policy
        return self

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        import torch

        step = state.global_step + 1
        accumulated = getattr(self.trainer, "_tr_loss", None)  # summed over the steps since the last log
        if accumulated is not None and not math.isfinite(float(accumulated)):
            raise non_finite_error("training loss", float(accumulated), step, args.output_dir)
        grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
        if grads:
            norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            if not math.isfinite(norm):
                raise non_finite_error("gradient norm", norm, step, args.output_dir)
        kill_if_asked(step)


def guarded_train(trainer, resume_from_checkpoint=None):
    """`trainer.train(...)` that stops with one line at the first NaN/inf loss or sampling probability."""
    FiniteLossGuard().attach(trainer)
    with stops_on_non_finite(lambda: trainer.state.global_step, trainer.args.output_dir):
        return trainer.train(resume_from_checkpoint=resume_from_checkpoint)
