"""`rlhf-lab <command>`: one entry point for every stage and tool.

A stage command (pretrain, sft, reward, overoptimization; `align --method M`) runs the stage the registry
names (recipes/core/stages.py); a tool command runs its module's `cli(argv) -> int`. Modules are imported
only when their command runs, so `rlhf-lab --help` is instant. User mistakes (`UserError`) and failed writes
(a full disk) print one line and exit 2; nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import os
import sys
from typing import Callable

from recipes.core.distributed import end_processes, process_state
from recipes.core.errors import UserError
from recipes.core.help_cache import cached_help, help_text, remember_help
from recipes.core.stages import STAGES

# command -> (module with `cli(argv)`, or None for a stage of the registry; one-line summary), in recipe order.
COMMANDS = {
    "world": ("recipes.core.world.cli", "write or show the embedded gold world's data (corpus, SFT, preferences, eval)"),
    "pretrain": (None, STAGES["pretrain"].summary),
    "sft": (None, STAGES["sft"].summary),
    "reward": (None, STAGES["reward"].summary),
    "judge": (None, STAGES["judge"].summary),
    "align": ("alignment.cli", "align the SFT model: --method dpo, ppo, grpo, best-of-n, ... (--help lists them)"),
    "overoptimization": (None, STAGES["overoptimization"].summary),
    "annotator-bias": (None, STAGES["annotator-bias"].summary),
    "compare": ("alignment.compare", "compare a recipe's alignment runs: table, plots, TensorBoard HParams"),
    "run": ("recipes.core.runner", "run a whole recipe in order, skipping stages already done, then compare"),
    "sample": ("alignment.sample", "answer the same prompts side by side with several models, gold and proxy scored"),
    "chat": ("alignment.chat", "talk to a model; each answer shown with its gold and proxy score"),
    "export": ("base_model.export", "convert a trained model into transformers' LlamaForCausalLM"),
    "bench": ("base_model.bench", "training and generation speed against transformers' Llama, as ratios "
              "(--stages: the GRPO stage against TRL on the Llama)"),
}


def command_entry(command: str, argv: list[str] = ()) -> Callable[[list[str]], int]:
    if command == "bench" and "--stages" in argv:  # the RL stage's benchmark lives with the stages
        return importlib.import_module("alignment.stage_bench").cli
    module = COMMANDS[command][0]
    return STAGES[command].run if module is None else importlib.import_module(module).cli


USAGE = "usage: rlhf-lab <command> [--config FILE] [--key value ...]"


def print_help() -> None:
    print(USAGE + "\n\nAn RLHF alignment lab: pretrain, SFT, reward model, alignment, comparison.\n\ncommands:")
    width = max(map(len, COMMANDS))
    for name, (_, summary) in COMMANDS.items():
        print(f"  {name:<{width}}  {summary}")
    print("\n`rlhf-lab <command> --help` lists a command's keys.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"rlhf-lab {version('rlhf-lab')}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see `rlhf-lab --help`"
        print(f"rlhf-lab: unknown command '{command}' ({hint})", file=sys.stderr)
        return 2
    if "-h" in rest or "--help" in rest:
        return print_command_help(command, rest)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: before any config is parsed
        process_state()
    if not os.environ.get("RLHF_LAB_VERBOSE"):
        quiet_dependencies()
    try:
        code = int(command_entry(command, rest)(rest) or 0)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            end_processes()
        return code
    except UserError as err:
        print(f"rlhf-lab {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhf-lab {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = write_failure(err)
        if message is None:
            raise
        print(f"rlhf-lab {command}: error: {message} (free some space, then run the same command with --resume)",
              file=sys.stderr)
        return 2


def print_command_help(command: str, rest: list[str]) -> int:
    """A command's help, from the cache when this code and its dependencies printed it before."""
    key = " ".join([command, *rest])
    text = cached_help(key)
    if text is None:
        entry = command_entry(command)
        text = help_text(lambda: entry(rest))
        remember_help(key, text)
    print(text, end="")
    return 0


def quiet_dependencies() -> None:
    """Keep a stage's console to its own lines: no deprecation notices, per-file loading bars or advice meant
    for the authors of transformers, accelerate and torch (RLHF_LAB_VERBOSE=1 shows them all again)."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading/writing bars too
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # TRL's tokenizing and truncating bars
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # a CPU machine has no pinned memory to use
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Removed shared tensor ..." on every tied save


# A full disk (or quota, or file-size limit, or read-only mount) reaches us as an OSError, or as the words of a
# library that wraps it (safetensors, torch's zip writer).
WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
WRITE_WORDS = ("No space left on device", "File too large", "Disk quota exceeded", "Read-only file system",
               "file write failed")
PATH_LOCALS = ("filename", "file_path", "path", "tmp", "output_dir", "save_directory", "directory")


def write_failure(err: BaseException) -> str | None:
    """One line for an exception caused by a failed write, naming the file being written; None for any other."""
    chain, seen = err, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno in WRITE_ERRNOS:
            return f"cannot write {chain.filename or file_being_written(err)}: {chain.strerror}"
        chain = chain.__cause__ or chain.__context__
    words = next((w for w in WRITE_WORDS if w in str(err)), None)
    return None if words is None else f"cannot write {file_being_written(err)}: {words}"


def file_being_written(err: BaseException) -> str:
    """The innermost path-like local variable along the traceback: the file (or folder) a save was writing."""
    tb, found = err.__traceback__, None
    while tb is not None:
        for name in PATH_LOCALS:
            value = tb.tb_frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and os.sep in os.fspath(value):
                found = os.fspath(value)
                break
        tb = tb.tb_next
    return found or "a file"


if __name__ == "__main__":
    sys.exit(main())
