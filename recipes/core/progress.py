"""Progress bars: one over a stage's steps and, under `rlhf-lab run`, one over the whole recipe; and one
clean line per logging step of a trainer.

Bars draw only on a terminal (tqdm's `disable=None`), so logs, pipes and CI output stay plain text.
While the recipe's bar is open it holds the top line and a stage's bar sits below it.
"""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

# What a logging step's line shows, in this order (TRL's and transformers' names; a "ppo/" prefix dropped);
# everything a trainer logs stays in TensorBoard.
LOG_LINE_KEYS = ("loss", "policy_loss", "value_loss", "reward", "rewards/margins", "rewards/accuracies", "accuracy",
                 "margin", "mean_token_accuracy", "kl", "entropy", "completions/mean_length", "grad_norm",
                 "learning_rate")


def _number(value) -> str:
    return f"{value:.2e}" if value != 0 and not 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"


def log_line(state, logs: dict) -> str | None:
    """'step 5/36  loss 3.991  grad_norm 1.598  learning_rate 2.97e-03' for a training log, 'step 20/36  eval
    loss 2.814 ...' for an evaluation; None for a log with none of LOG_LINE_KEYS (the trainer's closing summary)."""
    evaluation = any(key.startswith("eval_") for key in logs)
    values = {key.removeprefix("eval_").removeprefix("ppo/"): value for key, value in logs.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    shown = [f"{key} {_number(values[key])}" for key in LOG_LINE_KEYS if key in values]
    if not shown:
        return None
    return f"step {state.global_step}/{state.max_steps}  " + ("eval " if evaluation else "") + "  ".join(shown)


def attach_progress(trainer, desc: str) -> None:
    """A step bar and clean log lines for a transformers/TRL trainer, in place of the raw dicts of logs that
    transformers prints when its own bar is off."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepProgress(desc))


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

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = log_line(state, logs or {}) if state.is_world_process_zero else None
        if line is not None and getattr(args, "disable_tqdm", True):
            tqdm.write(line) if self.bar is not None else print(line, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
