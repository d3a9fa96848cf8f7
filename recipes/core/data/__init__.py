"""The one place stages load data from: local files, Hugging Face datasets, or the gold world.

Every loader returns a `datasets.Dataset` in TRL's standard shape:

    load_text(source, *, text_field="text", split="train", config=None)      -> column text
    load_conversations(source, *, format="auto", split="train", config=None) -> column messages
    load_preferences(source, *, format="auto", split="train", config=None)   -> prompt, chosen, rejected
    load_prompts(source, *, split="train", format="auto", config=None)       -> prompt, family
    fingerprint(source, *, split=None, config=None) -> str                   16 hex digits

A `source` is one of:

- a local file (.jsonl, .json, .parquet, .txt): it is the "train" split, the only one;
- a local directory holding `<split>.<ext>` files (train.jsonl, validation.jsonl, ...);
- a Hugging Face dataset name, loaded with `datasets.load_dataset(name, config, split=split)`;
  prefix it with `hf:` to force this even where a local folder of that name exists;
- the gold world: `world:<kind>[?size=<smoke|default>&seed=<int>]`, for example
  `world:sft?size=smoke&seed=0` (defaults: size=default, seed=0). Kinds and their splits:
  corpus (train, validation; text), sft (train, validation; conversations), preferences
  (train, validation; pairs), eval (test; prompts with their family). Generated on first use
  into `$RLHF_LAB_CACHE` (default ~/.cache/rlhf-lab) and reused afterwards.

A .txt file holds one document per paragraph (blocks separated by blank lines). Formats: see
conversations.py (messages, alpaca, sharegpt) and preferences.py (prompt_chosen_rejected, hh_rlhf,
ultrafeedback); "auto" detects them from the first row. Anything malformed raises
`recipes.core.errors.UserError` naming the file, the 1-based row (line number for jsonl and txt) and
what was expected.
"""

from .conversations import to_conversations
from .preferences import _prompt, to_preferences
from .rows import describe
from .sources import fingerprint, read_rows

__all__ = ["fingerprint", "load_conversations", "load_preferences", "load_prompts", "load_text"]


def load_text(source, *, text_field: str = "text", split: str = "train", config=None):
    import datasets

    rows = read_rows(source, split, config, text_field)
    texts = []
    for number, record in rows:
        value = record.get(text_field)
        if not isinstance(value, str):
            got = describe(value) if text_field in record else f"no such column (found {sorted(record)})"
            rows.fail(number, f'expected a "{text_field}" string (set text_field for another column), got {got}')
        texts.append(value)
    return datasets.Dataset.from_dict({"text": texts})


def load_conversations(source, *, format: str = "auto", split: str = "train", config=None):
    import datasets

    return datasets.Dataset.from_dict({"messages": to_conversations(read_rows(source, split, config), format)})


def load_preferences(source, *, format: str = "auto", split: str = "train", config=None):
    import datasets

    return datasets.Dataset.from_dict(to_preferences(read_rows(source, split, config), format))


def load_prompts(source, *, split: str = "train", format: str = "auto", config=None):
    """Prompts for generation (evaluation, GRPO, RLOO, PPO): the conversation up to its last user
    turn, from a "prompt" column (string or messages), or any conversation or preference shape.

    `family` is the row's family column (world data) or "unknown".
    """
    import datasets

    rows = read_rows(source, split, config)
    first = rows.records[0] if rows.records else {}
    if "chosen" in first and "rejected" in first:
        prompts = to_preferences(rows, format)["prompt"]
    elif "prompt" in first:
        prompts = [_prompt_of(rows, number, record) for number, record in rows]
    else:
        prompts = [_up_to_last_user(m) for m in to_conversations(rows, format)]
    families = [str(record.get("family") or "unknown") for record in rows.records]
    return datasets.Dataset.from_dict({"prompt": prompts, "family": families})


def _prompt_of(rows, number, record) -> list[dict]:
    return _prompt(rows, number, record)


def _up_to_last_user(messages: list[dict]) -> list[dict]:
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    return messages[: last_user + 1] if last_user is not None else messages
