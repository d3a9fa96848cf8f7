"""Conversations in the standard `messages` shape, from messages, alpaca or sharegpt rows.

- messages:  {"messages": [{"role": "user", "content": "..."}, ...]}, roles system/user/assistant;
- alpaca:    {"instruction": "...", "input": "..." (optional), "output": "..."}; the input, if
             any, follows the instruction after a blank line in the user turn;
- sharegpt:  {"conversations": [{"from": "human", "value": "..."}, ...]}, with from one of
             system, human/user, gpt/assistant (and a few common aliases).
"""

from ..errors import UserError
from .rows import Rows, describe

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}
FORMATS = ("messages", "alpaca", "sharegpt")
MESSAGES_SHAPE = 'a "messages" list of {"role", "content"} dicts'


def detect(rows: Rows) -> str:
    if not rows.records:
        return "messages"
    number, first = rows.numbers[0], rows.records[0]
    if "messages" in first:
        return "messages"
    if "conversations" in first:
        return "sharegpt"
    if "instruction" in first and "output" in first:
        return "alpaca"
    rows.fail(number, f'expected {MESSAGES_SHAPE}, sharegpt "conversations", or alpaca "instruction"/"output" '
                      f"columns, found columns {rows.columns()}")


def check_messages(rows: Rows, number: int, value, column: str = "messages") -> list[dict]:
    """A validated copy of a message list: only role and content, roles and contents checked."""
    shape = f'a "{column}" list of {{"role", "content"}} dicts'
    if not isinstance(value, list) or not value:
        rows.fail(number, f"expected {shape}, got {describe(value)}")
    messages = []
    for index, message in enumerate(value, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            rows.fail(number, f"expected {shape}, message {index} is {describe(message)} without role/content")
        if message["role"] not in ROLES:
            rows.fail(number, f"expected message {index} role to be one of {', '.join(ROLES)}, got {message['role']!r}")
        if not isinstance(message["content"], str):
            rows.fail(number, f"expected message {index} content to be a string, got {describe(message['content'])}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _field(rows: Rows, number: int, record: dict, key: str, fmt: str, optional: bool = False) -> str:
    value = record.get(key, "" if optional else None)
    if value is None and optional:
        value = ""
    if not isinstance(value, str) or (not value and not optional):
        rows.fail(number, f'expected a "{key}" string ({fmt} format), got {describe(value) if key in record else "no such column"}')
    return value


def from_row(rows: Rows, number: int, record: dict, fmt: str) -> list[dict]:
    if fmt == "messages":
        if "messages" not in record:
            rows.fail(number, f"expected {MESSAGES_SHAPE}, found columns {sorted(record)}")
        return check_messages(rows, number, record["messages"])
    if fmt == "alpaca":
        instruction = _field(rows, number, record, "instruction", "alpaca")
        extra = _field(rows, number, record, "input", "alpaca", optional=True)
        output = _field(rows, number, record, "output", "alpaca")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if fmt == "sharegpt":
        turns = record.get("conversations")
        shape = 'a "conversations" list of {"from", "value"} dicts (sharegpt format)'
        if not isinstance(turns, list) or not turns:
            rows.fail(number, f"expected {shape}, got {describe(turns) if 'conversations' in record else 'no such column'}")
        messages = []
        for index, turn in enumerate(turns, start=1):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                rows.fail(number, f"expected {shape}, turn {index} is {describe(turn)} without a string value")
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                rows.fail(number, f"expected turn {index} \"from\" to be one of {', '.join(SHAREGPT_ROLES)}, "
                                  f"got {turn.get('from')!r}")
            messages.append({"role": role, "content": turn["value"]})
        return messages
    raise ValueError(fmt)


def to_conversations(rows: Rows, fmt: str = "auto") -> list[list[dict]]:
    fmt = fmt.replace("-", "_") if fmt else "auto"
    if fmt == "auto":
        fmt = detect(rows)
    if fmt not in FORMATS:
        raise UserError(f"{rows.name}: unknown conversation format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    conversations = []
    for number, record in rows:
        messages = from_row(rows, number, record, fmt)
        if not any(m["role"] == "assistant" for m in messages):
            rows.fail(number, "expected at least one assistant message, got none")
        conversations.append(messages)
    return conversations
