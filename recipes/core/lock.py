"""One writer per recipe: `<runs_root>/<recipe>/.lock`, held while a stage or `rlhf-lab run` writes there.

Two runs of the same recipe on one runs root would overwrite each other's stages, so the second one
stops at once and says who holds the recipe. The lock is the operating system's (`flock`), so a
killed process releases it with no stale file to clean up; the file itself only says who held it
last, and goes again with the folder when the command wrote nothing else there. Taking it again in
the same process is a no-op, and `rlhf-lab run` passes it on to the stage processes it starts
(RLHF_LAB_HELD_LOCKS).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path

from recipes.core.errors import UserError

HELD_ENV = "RLHF_LAB_HELD_LOCKS"
_held: set[str] = set()


def held_by_this_process() -> str:
    """The value of HELD_ENV that lets child processes write where this one holds the lock."""
    return os.pathsep.join(sorted(_held | set(filter(None, os.environ.get(HELD_ENV, "").split(os.pathsep)))))


@contextlib.contextmanager
def recipe_lock(recipe_runs: Path):
    """Hold runs/<recipe>/.lock for the block, or stop with one line naming the process that holds it."""
    import fcntl

    path = Path(recipe_runs) / ".lock"
    key = str(path.resolve())
    if key in _held or key in os.environ.get(HELD_ENV, "").split(os.pathsep):
        yield
        return
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(path)
        os.close(fd)
        raise UserError(f"{recipe_runs} is in use by {holder}; wait for it to finish or stop it "
                        "(two runs of one recipe on one runs root would overwrite each other)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                 "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}).encode())
        _held.add(key)
        yield
    finally:
        _held.discard(key)
        if created and [p.name for p in path.parent.iterdir()] == [path.name]:
            # Nothing was written (bad input stops a stage before its first write): leave no trace. Unlinked
            # while still held, so a process that opened the old file cannot take it after us.
            with contextlib.suppress(OSError):
                path.unlink()
                path.parent.rmdir()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"process {holder['pid']} on {holder['host']} since {holder['since']} (`{holder['command']}`)"
    except (OSError, ValueError, KeyError):
        return "another process"


def run_locked(main, config):
    """`main(config)` holding the config's recipe lock; under `accelerate launch` only rank 0 (which writes) takes it."""
    if int(os.environ.get("RANK", "0")) != 0:
        return main(config)
    with recipe_lock(config.resolved_runs_root() / config.recipe):
        return main(config)
