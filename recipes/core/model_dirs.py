"""Checking a model directory given by path before a stage loads it: that it is one, and of the right kind.

A stage that starts from the wrong kind of model (a reward model where a policy belongs, or the reverse)
would otherwise load with a freshly initialised head, warn in a log line nobody reads, and train on
nonsense. The kind is in config.json's `architectures`, which `save_pretrained` always writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from recipes.core.errors import UserError

KINDS = {
    "policy": (("ForCausalLM",), "a causal language model (a pretrained or SFT model, *ForCausalLM)"),
    "reward": (("ForSequenceClassification",), "a reward model (*ForSequenceClassification, from `rlhf-lab reward`)"),
    "backbone": (("ForCausalLM", "ForSequenceClassification"), "a causal language model or a reward model"),
}


def check_model_dir(path: Path | str, key: str, kind: str) -> Path:
    """`path` as a Path, or one line naming the key (a config key, or a command's argument such as 'RUN_DIR'),
    the folder and what it should have held."""
    path = Path(path).expanduser()
    where = f"argument {key}" if key.isupper() or key.startswith("--") else f"key '{key}'"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{where}: {path} is not a saved model directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{where}: {config_file} is not valid JSON") from None
    endings, expected = KINDS[kind]
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith(endings) for a in architectures):
        raise UserError(f"{where}: {path} holds a {', '.join(architectures)} "
                        f"(model_type '{config.get('model_type')}'), expected {expected}")
    return path
