"""`rlhf-lab <command> --help` in milliseconds after its first call.

A stage's help lists every key of its config, and its config class lives in TRL or transformers, whose
import (torch, transformers, peft) takes seconds. The text only changes when the lab's code or those
packages change, so it is kept under `$RLHF_LAB_CACHE/help/`, keyed by a digest of both, and printed from
there without importing anything heavy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from importlib import metadata
from pathlib import Path

from recipes.core.data.world_cache import cache_root

PACKAGES = ("rlhf-lab", "torch", "transformers", "trl", "peft", "accelerate", "datasets")
LAB = Path(__file__).resolve().parents[2]


def _key(command: str) -> str:
    digest = hashlib.sha256(command.encode())
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            digest.update(f"{name}={metadata.version(name)};".encode())
    for package in ("base_model", "recipes", "reward", "alignment"):  # an edited checkout changes the key
        for path in sorted((LAB / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _path(command: str) -> Path:
    return cache_root() / "help" / f"{command}-{_key(command)}.txt"


def cached_help(command: str) -> str | None:
    path = _path(command)
    return path.read_text(encoding="utf-8") if path.is_file() else None


def help_text(run_help) -> str:
    """What `run_help()` prints before argparse's `--help` exits."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        run_help()
    return out.getvalue()


def remember_help(command: str, text: str) -> None:
    path = _path(command)
    with contextlib.suppress(OSError):  # a read-only home still gets its help, just not cached
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
