"""Preference pairs in TRL's conversational shape: prompt (ending with a user turn), chosen and
rejected (one assistant message each), from three common shapes:

- prompt_chosen_rejected: "prompt" (string or message list), "chosen"/"rejected" (string, or a
  list with one assistant message);
- hh_rlhf: "chosen"/"rejected" full transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..." sharing all
  turns but the last assistant reply (Anthropic/hh-rlhf);
- ultrafeedback: "chosen"/"rejected" message lists holding the whole conversation, sharing all
  messages but the last (HuggingFaceH4/ultrafeedback_binarized); a "prompt" column is ignored.
"""

import re

from ..errors import UserError
from .conversations import check_messages
from .rows import Rows, describe

FORMATS = ("prompt_chosen_rejected", "hh_rlhf", "ultrafeedback")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def detect(rows: Rows) -> str:
    if not rows.records:
        return "prompt_chosen_rejected"
    number, first = rows.numbers[0], rows.records[0]
    missing = [c for c in ("chosen", "rejected") if c not in first]
    if missing:
        rows.fail(number, f'expected "chosen" and "rejected" columns (with "prompt", or hh-rlhf transcripts, '
                          f"or ultrafeedback message lists), missing {', '.join(missing)}; "
                          f"found columns {rows.columns()}")
    chosen = first["chosen"]
    if isinstance(chosen, list) and any(isinstance(m, dict) and m.get("role") != "assistant" for m in chosen):
        return "ultrafeedback"
    if "prompt" in first:
        return "prompt_chosen_rejected"
    if isinstance(chosen, str) and "\n\nAssistant:" in chosen:
        return "hh_rlhf"
    rows.fail(number, 'expected a "prompt" column, hh-rlhf transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") '
                      f"or ultrafeedback message lists in chosen/rejected, got chosen as {describe(chosen)}")


def _answer(rows: Rows, number: int, record: dict, column: str) -> list[dict]:
    if column not in record:
        rows.fail(number, f'expected a "{column}" column, found columns {sorted(record)}')
    value = record[column]
    if isinstance(value, str) and value:
        return [{"role": "assistant", "content": value}]
    messages = check_messages(rows, number, value, column) if isinstance(value, list) else None
    if not messages or len(messages) != 1 or messages[0]["role"] != "assistant":
        rows.fail(number, f'expected "{column}" to be a string or a list with one assistant message, '
                          f"got {describe(value) if messages is None else f'{len(messages)} message(s)'}")
    return messages


def _prompt(rows: Rows, number: int, record: dict) -> list[dict]:
    value = record.get("prompt")
    if isinstance(value, str) and value:
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        rows.fail(number, f'expected "prompt" to be a string or a message list, got '
                          f"{describe(value) if 'prompt' in record else 'no such column'}")
    messages = check_messages(rows, number, value, "prompt")
    if messages[-1]["role"] != "user":
        rows.fail(number, f'expected "prompt" to end with a user message, got {messages[-1]["role"]!r}')
    return messages


def _transcript(rows: Rows, number: int, record: dict, column: str) -> list[dict]:
    text = record.get(column)
    shape = f'expected "{column}" to be an hh-rlhf transcript "\\n\\nHuman: ... \\n\\nAssistant: ..."'
    if not isinstance(text, str) or not text.startswith("\n\nHuman:"):
        got = "text that does not start with it" if isinstance(text, str) else describe(text)
        rows.fail(number, f"{shape}, got {got}")
    parts = _HH_TURN.split(text)[1:]  # [role, content, role, content, ...]
    messages = [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
                for role, content in zip(parts[::2], parts[1::2])]
    if messages[-1]["role"] != "assistant":
        rows.fail(number, f"{shape}, ending with an Assistant turn; it ends with a Human turn")
    return messages


def _split_shared_prompt(rows: Rows, number: int, chosen: list[dict], rejected: list[dict], fmt: str):
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        rows.fail(number, f"expected chosen and rejected to end with an assistant message ({fmt} format)")
    if chosen[:-1] != rejected[:-1] or not chosen[:-1]:
        rows.fail(number, f"expected chosen and rejected to share every turn before their last reply ({fmt} format)")
    prompt = chosen[:-1]
    if prompt[-1]["role"] != "user":
        rows.fail(number, f"expected the last turn before the reply to be a user turn ({fmt} format)")
    return prompt, [chosen[-1]], [rejected[-1]]


def from_row(rows: Rows, number: int, record: dict, fmt: str):
    if fmt == "prompt_chosen_rejected":
        return _prompt(rows, number, record), _answer(rows, number, record, "chosen"), _answer(rows, number, record, "rejected")
    if fmt == "hh_rlhf":
        chosen, rejected = (_transcript(rows, number, record, c) for c in ("chosen", "rejected"))
        return _split_shared_prompt(rows, number, chosen, rejected, "hh-rlhf")
    if fmt == "ultrafeedback":
        for column in ("chosen", "rejected"):
            if not isinstance(record.get(column), list):
                rows.fail(number, f'expected "{column}" to be a message list (ultrafeedback format), '
                                  f"got {describe(record.get(column)) if column in record else 'no such column'}")
        chosen, rejected = (check_messages(rows, number, record[c], c) for c in ("chosen", "rejected"))
        return _split_shared_prompt(rows, number, chosen, rejected, "ultrafeedback")
    raise ValueError(fmt)


def to_preferences(rows: Rows, fmt: str = "auto") -> dict[str, list]:
    fmt = fmt.replace("-", "_") if fmt else "auto"
    if fmt == "auto":
        fmt = detect(rows)
    if fmt not in FORMATS:
        raise UserError(f"{rows.name}: unknown preference format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    columns = {"prompt": [], "chosen": [], "rejected": []}
    for number, record in rows:
        prompt, chosen, rejected = from_row(rows, number, record, fmt)
        columns["prompt"].append(prompt)
        columns["chosen"].append(chosen)
        columns["rejected"].append(rejected)
    return columns
