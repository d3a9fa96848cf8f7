"""`rlhf-lab align --method M --config recipes/<name>/align-M.yaml`: one entry for every method.

Each method is a stage of the registry (recipes/core/stages.py); this only picks it.
"""

from __future__ import annotations

import difflib

from recipes.core.errors import UserError
from recipes.core.stages import METHODS


def split_method(argv: list[str]) -> tuple[str | None, list[str]]:
    for i, arg in enumerate(argv):
        if arg == "--method":
            if i + 1 == len(argv):
                raise UserError("command line: --method needs a value: " + ", ".join(METHODS))
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def cli(argv: list[str]) -> int:
    method, rest = split_method(argv)
    if method is None:
        if "-h" in argv or "--help" in argv:
            print("usage: rlhf-lab align --method {" + ",".join(METHODS) + "} --config FILE [--key value ...]\n\n"
                  "`rlhf-lab align --method M --help` lists method M's keys.")
            return 0
        raise UserError("command line: --method is required, one of " + ", ".join(METHODS))
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "expected one of " + ", ".join(METHODS)
        raise UserError(f"command line: unknown method '{method}' ({hint})")
    return METHODS[method].run(rest)
