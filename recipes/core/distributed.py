"""Processes under `accelerate launch` (or torchrun): which one is which, on GPUs or on a CPU-only machine.

On a machine without CUDA, `accelerate launch --multi_gpu --num_processes N` starts N processes, but
accelerate's state and transformers' TrainingArguments each see one process unless told to use the CPU:
every process would then train alone and claim the same run directory. `process_state()` sets that up
(gloo process group) before either looks, and is the one way stages ask who is the main process.
"""

from __future__ import annotations

import os

# How long a process waits for the others at a collective. Stages that evaluate on the main process alone
# (PPO, best-of-n) keep the others waiting for a whole evaluation, which at a GPU recipe's scale (a judge
# over hundreds of prompts) can pass NCCL's default of 10 minutes.
PROCESS_GROUP_TIMEOUT_S = 2 * 3600


def process_state():
    """accelerate's PartialState, across every launched process (gloo on CPU, NCCL on GPUs)."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    on_cpu = not torch.cuda.is_available()
    if on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # what transformers' TrainingArguments reads
    return PartialState(cpu=on_cpu, timeout=timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))


def end_processes() -> None:
    """Leave the process group together: each process waits for the others, then destroys the group. A gloo
    process that exits with its group alive can abort in its C++ teardown ("terminate called without an
    active exception", SIGABRT) while the others are still finishing: seen once in four suite runs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def claim_run(run, start, process=None):
    """`start()` (which claims the run directory) on the main process; the others wait, then write where it does."""
    process = process or process_state()
    result = start() if process.is_main_process else run
    process.wait_for_everyone()
    if not process.is_main_process:
        run.follow()
    return result
