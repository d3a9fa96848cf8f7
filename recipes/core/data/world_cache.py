"""World sources: `world:<kind>?size=<size>&seed=<seed>`, generated on first use and cached.

Preferences take the annotators' biases as keys too (`world:preferences?size=default&seed=0&length_bias=0.05`;
the keys are `annotators.Biases`' fields, all off by default).

The cache lives in `$RLHF_LAB_CACHE` (default `~/.cache/rlhf-lab`) under
`world/v<generator version>/<size>-<size key>-seed<seed>[-<biases>]/<kind>/`; the size key hashes the sizes
the kind depends on, so changing a size never reuses a stale cache. A kind is generated into a
temporary directory beside its final place and renamed into it, so a second process either sees no
directory or a complete one; if two processes race, the loser discards its copy.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import UserError
from ..world import GENERATOR_VERSION, SIZES, generate, size_key
from ..world.annotators import Biases, parse_biases

PREFIX = "world:"
KINDS = ("corpus", "sft", "preferences", "eval")
# The file a kind's split lives in, relative to the kind's directory.
SPLIT_FILES = {
    "corpus": {"train": "corpus/train.txt", "validation": "corpus/validation.txt"},
    "sft": {"train": "sft/train.jsonl", "validation": "sft/validation.jsonl"},
    "preferences": {"train": "preferences/train.jsonl", "validation": "preferences/validation.jsonl"},
    "eval": {"test": "eval/prompts.jsonl"},
}


@dataclass(frozen=True)
class WorldSource:
    kind: str
    size: str = "default"
    seed: int = 0
    biases: Biases = Biases()

    def __str__(self) -> str:
        biases = self.biases.query()
        return f"{PREFIX}{self.kind}?size={self.size}&seed={self.seed}" + (f"&{biases}" if biases else "")


def parse_world_source(source: str) -> WorldSource:
    body = source[len(PREFIX):]
    kind, _, query = body.partition("?")
    if kind not in KINDS:
        raise UserError(f"data source {source!r}: expected world:<kind> with kind one of {', '.join(KINDS)}")
    options = dict(parse_qsl(query, keep_blank_values=True))
    bias_keys = Biases.keys()
    unknown = sorted(set(options) - {"size", "seed", *bias_keys})
    if unknown:
        raise UserError(f"data source {source!r}: unknown option {', '.join(unknown)}; expected size, seed"
                        + (f" or an annotator bias ({', '.join(bias_keys)})" if kind == "preferences" else ""))
    size = options.get("size", "default")
    if size not in SIZES:
        raise UserError(f"data source {source!r}: expected size one of {', '.join(SIZES)}, got {size!r}")
    try:
        seed = int(options.get("seed", "0"))
    except ValueError:
        raise UserError(f"data source {source!r}: expected an integer seed, got {options['seed']!r}") from None
    given = {key: options[key] for key in Biases.keys() if key in options}
    if given and kind != "preferences":
        raise UserError(f"data source {source!r}: {', '.join(given)} is a bias of the annotators, who label "
                        f"world:preferences only; expected no bias keys for world:{kind}")
    return WorldSource(kind, size, seed, parse_biases(given, f"data source {source!r}"))


def cache_root() -> Path:
    return Path(os.environ.get("RLHF_LAB_CACHE") or Path.home() / ".cache" / "rlhf-lab")


def cached_dir(world: WorldSource) -> Path:
    """Where `world`'s kind is cached (it may not be there yet)."""
    key = size_key(SIZES[world.size], world.kind)
    biases = world.biases.query().replace("&", "-").replace("=", "")  # length_bias0.05-position_bias0.5
    name = f"{world.size}-{key}-seed{world.seed}" + (f"-{biases}" if biases else "")
    return cache_root() / "world" / f"v{GENERATOR_VERSION}" / name / world.kind


def world_dir(world: WorldSource) -> Path:
    """The directory holding `world`'s kind, generating it first if it is not cached yet."""
    final = cached_dir(world)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{world.kind}-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        generate(staging, size=world.size, seed=world.seed, kinds=(world.kind,), biases=world.biases)
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():  # not a lost race: a real failure
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def split_path(world: WorldSource, split: str) -> Path:
    files = SPLIT_FILES[world.kind]
    if split not in files:
        raise UserError(f"data source {world}: no split {split!r}; found splits: {', '.join(files)}")
    return world_dir(world) / files[split]
