"""A crash on purpose at a named step, so that the kill-and-resume tests land their kill by the step.

`RLHF_LAB_KILL_BEFORE_STEP=N` makes a stage SIGKILL itself just before it completes step N: a trainer
(pretraining, PPO, every TRL/transformers stage) after step N's gradients and before its optimizer step, so
nothing of step N is saved and the newest checkpoint is the one before it; best-of-n before it draws its
N-th candidate. `N@K` waits for the K-th time this process reaches step N (the K-th run of an experiment that
runs several stages in one process). A kill timed by the clock lands at a different step on a faster machine,
or after the run has ended; this one lands at the same point everywhere. Unset (always, outside tests) it
costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RLHF_LAB_KILL_BEFORE_STEP"
_reached: Counter = Counter()  # step -> how many times this process has been about to complete it


def kill_if_asked(step: int) -> None:
    """SIGKILL this process if the environment names `step` (the step about to be completed)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, occurrence = spec.partition("@")
    if int(target) == step:
        _reached[step] += 1
        if _reached[step] == int(occurrence or 1):
            os.kill(os.getpid(), signal.SIGKILL)
