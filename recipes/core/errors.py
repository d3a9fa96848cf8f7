"""The one exception type for user mistakes.

The CLI catches `UserError` and prints its message as a single line (no traceback), then exits
non-zero. Raise it for anything a user can fix: a missing file, a malformed row, an unknown config
key, a stage run before its parent. The message names the file, row or key and what was expected.
"""


class UserError(Exception):
    """A mistake in the user's input, reported as one line by the CLI."""
