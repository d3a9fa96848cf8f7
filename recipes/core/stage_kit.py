"""What every training stage does the same way: its data's fingerprint, the held-out split, the evaluation
prompts, the resolved max_length, the LoRA config, and one line for a trainer that refuses its keys.

Each is written once here and used by pretrain, SFT, the reward model and the alignment methods, so that a
fix or a change of rule reaches every stage at once.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from recipes.core.data import fingerprint, load_prompts
from recipes.core.errors import UserError

HELD_OUT_FRACTION = 20  # with no test split, the last twentieth of the training rows is held out


def held_out_size(rows: int) -> int:
    """How many of `rows` training rows are held out when the dataset names no test split (at least one)."""
    return max(1, rows // HELD_OUT_FRACTION)


def hold_out_last(rows):
    """(train, held out): the last twentieth of `rows` held out, in order. `rows` is a list, a datasets.Dataset
    or a dict of equally long columns."""
    if isinstance(rows, dict):
        n = len(next(iter(rows.values())))
        cut = n - held_out_size(n)
        return {k: v[:cut] for k, v in rows.items()}, {k: v[cut:] for k, v in rows.items()}
    cut = len(rows) - held_out_size(len(rows))
    if hasattr(rows, "select"):  # a datasets.Dataset
        return rows.select(range(cut)), rows.select(range(cut, len(rows)))
    return rows[:cut], rows[cut:]


def data_fingerprint(config, *extra: str, tail: str) -> str:
    """16 hex digits naming the stage's training data: each split's content, then `extra` fingerprints (the
    evaluation prompts), then `tail` (the format or the text field that decides how rows are read)."""
    parts = [fingerprint(config.dataset_name, split=split, config=config.dataset_config)
             for split in (config.dataset_train_split, config.dataset_test_split) if split]
    return hashlib.sha256("/".join([*parts, *extra, tail]).encode()).hexdigest()[:16]


def load_eval_prompts(config, split: str | None = None) -> list:
    """The first `eval_num_prompts` prompts of `eval_prompts` (split `eval_prompts_split`, else "test")."""
    split = split or getattr(config, "eval_prompts_split", "test")
    if Path(config.eval_prompts).expanduser().is_file():  # one file (prompts.jsonl) is the evaluation set whole
        split = "train"
    prompts = load_prompts(config.eval_prompts, split=split)["prompt"][:config.eval_num_prompts]
    if not prompts:
        raise UserError(f"key 'eval_prompts': {config.eval_prompts} split '{split}' holds no prompts")
    return list(prompts)


def resolve_max_length(config, model) -> int:
    """`max_length`, or the model's context when it is unset; longer than the context is a mistake."""
    context = model.config.max_position_embeddings
    max_length = config.max_length or context
    if max_length > context:
        raise UserError(f"key 'max_length' ({max_length}) exceeds the model's context ({context})")
    return max_length


def lora_config(config, task_type: str = "CAUSAL_LM", default_targets="all-linear", modules_to_save=None):
    """peft's LoraConfig from the stage's LoRA keys, or None when `use_peft` is off."""
    if not config.use_peft:
        return None
    from peft import LoraConfig

    targets = config.lora_target_modules or default_targets
    if targets == ["all-linear"]:  # a YAML list of one; peft wants the bare string
        targets = "all-linear"
    return LoraConfig(task_type=task_type, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets, modules_to_save=modules_to_save)


@contextlib.contextmanager
def trainer_refusals(config):
    """A ValueError while a trainer (or peft) takes the stage's keys becomes one line naming the key: LoRA target
    modules that match nothing, a loss that needs other keys."""
    try:
        yield
    except ValueError as err:
        where = "key 'lora_target_modules': " if getattr(config, "use_peft", False) and "arget module" in str(err) \
            else ""
        raise UserError(where + str(err).splitlines()[0]) from None
