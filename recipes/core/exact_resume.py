"""Checkpoints that let a transformers/TRL trainer resume exactly where it was killed.

A transformers checkpoint holds the weights, optimizer, scheduler, RNG states and `trainer_state.json`,
but not two things a resumed run needs to repeat an uninterrupted one:
- the loss accumulated since the last log (`_tr_loss` and the step it started at): without it the first
  log after a resume averages fewer steps, and so differs;
- for TRL's GRPO and RLOO, the rollouts generated once every `steps_per_generation` steps and trained on
  slice by slice in between (`_buffered_inputs`, indexed by the micro-step counter `_step`, and the
  metrics gathered since the last log): without them a run resumed between two generations starts a
  fresh batch from the policy as it is now, and trains on other rollouts from then on.
A stage's own running counts (the answers its reward functions scored, the tokens it generated) are a third:
`trainer.resume_counters = {name: (object, attribute)}` names them, and they are saved and put back with the rest.
`with_exact_resume(trainer_class)` writes these into every checkpoint (one file per process, before
`trainer_state.json`, which is written last and marks the checkpoint complete) and puts them back when
a resumed run begins.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from recipes.core.rundir import load_checkpoint_state


def state_file(checkpoint: str, process_index: int) -> str:
    return os.path.join(checkpoint, f"exact_resume_{process_index}.pt")


class ExactResume:
    """Mix in before the trainer class (see `with_exact_resume`)."""

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        state = {"tr_loss": float(self._tr_loss), "total_loss_scalar": self._total_loss_scalar,
                 "globalstep_last_logged": self._globalstep_last_logged}
        if hasattr(self, "_buffered_inputs"):  # GRPO, RLOO
            metrics = getattr(self, "_metrics", None)  # {"train": defaultdict(list), "eval": ...}: saved as dicts
            state["rollout"] = {"step": self._step, "buffered_inputs": self._buffered_inputs,
                                "metrics": None if metrics is None else {k: dict(v) for k, v in metrics.items()}}
        state["counters"] = {name: getattr(owner, attribute)
                             for name, (owner, attribute) in getattr(self, "resume_counters", {}).items()}
        torch.save(state, state_file(folder, self.args.process_index))
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if isinstance(resume_from_checkpoint, str):
            path = state_file(resume_from_checkpoint, self.args.process_index)
            if os.path.isfile(path):
                self.add_callback(_Restore(self, load_checkpoint_state(path, self.args.device)))
            else:
                print(f"{resume_from_checkpoint} holds no {os.path.basename(path)}: the first log after the resume "
                      "averages only the steps since, and rollouts are generated afresh")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


class _Restore(TrainerCallback):
    """Puts the saved state back at train begin: after transformers has reset its logging counters."""

    def __init__(self, trainer, state: dict):
        self.trainer, self.state = trainer, state

    def on_train_begin(self, args, state, control, **kwargs):
        t, saved = self.trainer, self.state
        t._tr_loss = torch.tensor(saved["tr_loss"], device=args.device)
        t._total_loss_scalar, t._globalstep_last_logged = saved["total_loss_scalar"], saved["globalstep_last_logged"]
        if "rollout" in saved:
            t._step, t._buffered_inputs = saved["rollout"]["step"], saved["rollout"]["buffered_inputs"]
            if saved["rollout"]["metrics"] is not None:
                t._metrics = {k: defaultdict(list, v) for k, v in saved["rollout"]["metrics"].items()}
        for name, value in saved.get("counters", {}).items():
            if name in getattr(t, "resume_counters", {}):
                owner, attribute = t.resume_counters[name]
                setattr(owner, attribute, value)


def with_exact_resume(trainer_class: type) -> type:
    """`trainer_class` whose checkpoints resume exactly."""
    return type(trainer_class.__name__, (ExactResume, trainer_class), {})
