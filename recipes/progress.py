"""Progress bars: one over a stage's steps and, under `rlhf-lab run`, one over the whole recipe.

Bars draw only on a terminal (tqdm's `disable=None`), so logs, pipes and CI output stay plain text.
While the recipe's bar is open it holds the top line and a stage's bar sits below it.
"""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import TrainerCallback

_recipe_bar_open = False


def recipe_bar(total: int, desc: str):
    """The overall bar of `rlhf-lab run`: one tick per stage, done or skipped."""
    global _recipe_bar_open
    _recipe_bar_open = True
    bar = tqdm(total=total, desc=desc, unit="stage", position=0, leave=True, disable=None, dynamic_ncols=True)
    close = bar.close

    def close_and_release():
        global _recipe_bar_open
        _recipe_bar_open = False
        close()

    bar.close = close_and_release
    return bar


def step_bar(total: int, desc: str, initial: int = 0):
    """A stage's bar over its training steps (or rollouts, or samples)."""
    return tqdm(total=total, initial=initial, desc=desc, unit="step", position=1 if _recipe_bar_open else 0,
                leave=not _recipe_bar_open, disable=None, dynamic_ncols=True)


class StepProgress(TrainerCallback):
    """`step_bar` driven by a transformers/TRL trainer (or anything that calls these hooks with a state),
    for trainers whose own bar is off (`disable_tqdm: true`, which keeps their log lines readable)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        if not getattr(args, "disable_tqdm", True):
            return  # the trainer draws its own step bar: one is enough
        self.bar = step_bar(state.max_steps, self.desc, initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
