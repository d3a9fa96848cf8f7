"""Independent random streams: every draw of a run has a seed of its own, derived from the run's seed and
the draw's purpose (the SFT baseline's evaluation answers, a policy's evaluation answers, best-of-n's k-th
candidates, the k-th round of pair sampling, ...).

`numpy.random.SeedSequence` mixes the run's seed with a key made from the purpose, so two purposes, or
two seeds, give unrelated streams: nothing is shared by accident, where `seed + k` made run 1's k-th draw
run 0's (k+1)-th.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stream_seed(seed: int, purpose: str, *index: int) -> int:
    """A 31-bit seed (torch, numpy and `random` all take it) for draw `index` of `purpose` in a run with `seed`."""
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(tag, *index)).generate_state(1)[0] >> 1)
