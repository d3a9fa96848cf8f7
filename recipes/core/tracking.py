"""TensorBoard plumbing shared by the stages."""

from __future__ import annotations

import os

from recipes.core.rundir import RunDir


def route_trainer_events(run: RunDir) -> None:
    """Send a transformers/TRL trainer's TensorBoard events into the run's tb/ folder.

    transformers 5 removed `logging_dir`; its TensorBoard callback reads this variable instead
    (without it the events land in ./runs).
    """
    run.tb_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.tb_dir)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """Rows as a markdown table, for TensorBoard's text tab."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])
