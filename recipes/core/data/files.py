"""Reading local data files (.jsonl, .json, .parquet, .txt) into numbered rows.

A .txt file holds one document per paragraph: blocks of lines separated by one or more blank
lines (so a document may span several lines, like a dialogue); its row is the line it starts on.
"""

import json
from pathlib import Path

from ..errors import UserError
from .rows import Rows, describe

EXTENSIONS = (".jsonl", ".json", ".parquet", ".txt")


def read_file(path: Path, name: str, text_field: str = "text") -> Rows:
    try:
        rows = _read_file(path, name, text_field)
    except UnicodeDecodeError:
        raise UserError(not_utf8(path, name)) from None
    if not rows.records:
        raise UserError(f"{name}: the file holds no rows" + (" (it is empty)" if path.stat().st_size == 0 else ""))
    return rows


def not_utf8(path: Path, name: str) -> str:
    """Where a file stops being UTF-8: the line and the byte, for the one-line error."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        return (f"{name} row {line}: expected UTF-8 text, found byte 0x{data[error.start]:02x} "
                "(re-save the file as UTF-8)")
    return f"{name}: expected UTF-8 text"


def _read_file(path: Path, name: str, text_field: str) -> Rows:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, name)
    if suffix == ".json":
        return _read_json(path, name)
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            records = pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for a broken file
            raise UserError(f"{name}: expected a Parquet file, could not read it ({error})") from None
        return Rows(name, records, list(range(1, len(records) + 1)))
    if suffix == ".txt":
        return _read_txt(path, name, text_field)
    raise UserError(f"{name}: expected a file ending in {', '.join(EXTENSIONS)}")


def _read_jsonl(path: Path, name: str) -> Rows:
    records, numbers = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{name} row {number}: expected one JSON object per line, "
                                f"got invalid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{name} row {number}: expected a JSON object, got {describe(record)}")
            records.append(record)
            numbers.append(number)
    return Rows(name, records, numbers)


def _read_json(path: Path, name: str) -> Rows:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON lines in a .json file, as `datasets` also accepts
            return _read_jsonl(path, name)
        raise UserError(f"{name}: expected a JSON list of objects, got invalid JSON "
                        f"(line {error.lineno}: {error.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise UserError(f"{name}: expected a JSON list of objects (or {{\"data\": [...]}}), got {describe(data)}")
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise UserError(f"{name} row {number}: expected a JSON object, got {describe(record)}")
    return Rows(name, data, list(range(1, len(data) + 1)))


def _read_txt(path: Path, name: str, text_field: str) -> Rows:
    records, numbers, block, start = [], [], [], 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                if not block:
                    start = number
                block.append(line.rstrip("\n"))
            elif block:
                records.append({text_field: "\n".join(block)})
                numbers.append(start)
                block = []
    if block:
        records.append({text_field: "\n".join(block)})
        numbers.append(start)
    return Rows(name, records, numbers)


def split_file(directory: Path, split: str, name: str) -> Path:
    """`<split>.<ext>` inside a directory; a UserError listing the splits it does hold."""
    for ext in EXTENSIONS:
        candidate = directory / f"{split}{ext}"
        if candidate.is_file():
            return candidate
    splits = sorted({p.stem for p in directory.iterdir() if p.suffix.lower() in EXTENSIONS})
    raise UserError(f"{name}: no split {split!r}; expected a file {split}.jsonl/.json/.parquet/.txt, "
                    f"found splits: {', '.join(splits) or 'none'}")
