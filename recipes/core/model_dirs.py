"""Checking a model directory given by path before a stage loads it: that it is one, and of the right kind.

A stage that starts from the wrong kind of model (a reward model where a policy belongs, or the reverse)
would otherwise load with a freshly initialised head, warn in a log line nobody reads, and train on
nonsense. The kind is in config.json's `architectures`, which `save_pretrained` always writes.
"""

from __future__ import annotations

import json
import os
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


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or Path(value).suffix != "" and "/" not in value


def resolve_model(value: str, key: str, kind: str) -> Path:
    """A model named by a key, as a local folder checked as `check_model_dir` does: a saved model folder, or a
    Hugging Face hub id, whose snapshot comes from the local cache when the hub is offline (else from the hub,
    weights, config and tokenizer files only). A hub id that is not there stops with one line naming it."""
    path = Path(value).expanduser()
    if path.exists() or looks_like_path(value):
        if not path.exists():
            raise UserError(f"key '{key}': {path} does not exist")
        return check_model_dir(path, key, kind)
    return check_model_dir(hub_snapshot(value, key), key, kind)


HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]  # config, weights, tokenizer
HUB_SKIPPED = ["consolidated*", "original/*"]  # other engines' copies of the same weights


def hub_snapshot(repo_id: str, key: str) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download

    offline = hub_offline()
    try:
        patterns = list(HUB_FILES)
        if not offline and not any(f.endswith(".safetensors") for f in list_repo_files(repo_id)):
            patterns.append("*.bin")  # an older repository: its weights only as pytorch_model*.bin
        elif offline:
            patterns.append("*.bin")  # whatever the cache holds
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=HUB_SKIPPED,
                                      local_files_only=offline))
    except Exception as err:  # not cached, network, auth, no such repo: all the user's to fix
        if offline:
            raise UserError(f"key '{key}': '{repo_id}' is no folder here, and as a hub model it is not in the local "
                            "Hugging Face cache with the hub offline (HF_HUB_OFFLINE=1); download it once online, "
                            "or give a saved model folder") from None
        raise UserError(f"key '{key}': '{repo_id}' is no folder here and cannot be fetched as a hub model "
                        f"({str(err).splitlines()[0]})") from None
