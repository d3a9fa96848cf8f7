"""Raw rows with where they came from, so every error can name the file and the row."""

from dataclasses import dataclass

from ..errors import UserError


@dataclass
class Rows:
    name: str                 # what the user knows the data as: a path, or "hub-name[split]"
    records: list[dict]
    numbers: list[int]        # 1-based row of each record: the line in jsonl/txt, the index otherwise

    def __iter__(self):
        return iter(zip(self.numbers, self.records))

    def fail(self, number: int, expected: str):
        raise UserError(f"{self.name} row {number}: {expected}")

    def columns(self) -> list[str]:
        return sorted(self.records[0]) if self.records else []


def describe(value) -> str:
    """How a wrong value reads in an error: 'a string', 'a list', 'null'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
