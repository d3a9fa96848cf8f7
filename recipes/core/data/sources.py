"""Where data comes from: a local path, a Hugging Face dataset name, or the gold world.

Resolution order for a source string:
1. `world:<kind>?size=...&seed=...`  the gold world (see world_cache.py);
2. `hf:<name>`                        always a Hugging Face dataset (also a local dataset folder);
3. an existing local file or directory;
4. anything else that looks like a path (has a data-file extension, or starts with `.`, `/`, `~`)
   is a missing file; the rest is a Hugging Face dataset name.
"""

import hashlib
from pathlib import Path

from ..errors import UserError
from ..world import GENERATOR_VERSION, SIZES, size_key
from .files import EXTENSIONS, read_file, split_file
from .rows import Rows
from .world_cache import PREFIX as WORLD_PREFIX
from .world_cache import parse_world_source, split_path

HUB_PREFIX = "hf:"


def read_rows(source, split: str, config=None, text_field: str = "text") -> Rows:
    source = str(source)
    if source.startswith(WORLD_PREFIX):
        path = split_path(parse_world_source(source), split)
        return read_file(path, f"{source} ({path})", text_field)
    if source.startswith(HUB_PREFIX):
        return _read_hub(source[len(HUB_PREFIX):], split, config)
    path = Path(source).expanduser()
    if path.is_dir():
        file = split_file(path, split, source)
        return read_file(file, str(file), text_field)
    if path.is_file():
        if split != "train":
            raise UserError(f"{source}: a single file holds only the 'train' split, not {split!r}; "
                            f"for more splits use a directory holding <split>.jsonl files")
        return read_file(path, source, text_field)
    if _looks_like_path(source):
        raise UserError(f"{source}: no such file or directory")
    return _read_hub(source, split, config)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.lower().endswith(EXTENSIONS)


def _read_hub(name: str, split: str, config) -> Rows:
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # datasets raises many types; the user needs the first line
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if "offline" in f"{first_line} {type(error).__name__}".lower():
            raise UserError(f"{name}: Hugging Face dataset (split {split!r}) is not in the local cache and the hub is "
                            "offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1); load it once online, or give local "
                            "files") from None
        raise UserError(f"{name}: could not load Hugging Face dataset split {split!r} ({first_line})") from None
    records = dataset.to_list()
    return Rows(f"{name}[{split}]", records, list(range(1, len(records) + 1)))


def fingerprint(source, *, split=None, config=None) -> str:
    """A short stable hash of the data: file contents for local data, the name, config and split
    for a hub dataset, kind/size/seed, generator version and the sizes behind that kind for the world."""
    source = str(source)
    digest = hashlib.sha256()
    if source.startswith(WORLD_PREFIX):
        world = parse_world_source(source)
        digest.update(f"world/{world}/v{GENERATOR_VERSION}/{size_key(SIZES[world.size], world.kind)}".encode())
    elif not source.startswith(HUB_PREFIX) and Path(source).expanduser().exists():
        path = Path(source).expanduser()
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS)
        for file in files:
            digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    else:
        name = source.removeprefix(HUB_PREFIX)
        digest.update(f"hub/{name}/{config}/{split}".encode())
    return digest.hexdigest()[:16]
