"""The world's data in the shapes of the Hugging Face datasets real recipes name, with every gold column removed.

`rlhf-lab world --out DIR --shapes hub` writes, from a generated world (and a second one, seed + 1, for a
judge's pairs), one folder per dataset with one file per split, named as on the hub:

    stories/{train,validation}.jsonl          roneneldan/TinyStories: {"text"}
    ultrachat/{train_sft,test_sft}.jsonl      HuggingFaceH4/ultrachat_200k: {"prompt", "prompt_id", "messages"}
    ultrafeedback/{train_prefs,test_prefs}.jsonl  HuggingFaceH4/ultrafeedback_binarized: {"prompt", "prompt_id",
                                              "chosen", "rejected", "messages"}, each side the whole conversation
    hh/{train,test}.jsonl                     Anthropic/hh-rlhf: {"chosen", "rejected"} "\\n\\nHuman: ...\\n\\nAssistant:
                                              ..." transcripts (the second world's pairs: a judge trained on them
                                              learns apart from the proxy)
    prompts/test.jsonl                        held-out prompts, {"prompt"} only

So the real-data code paths (file loading, the dataset adapters, evaluation without gold columns) run offline
on data of known quality: `recipes/realshape-cpu/` ships these files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .generate import generate, write_jsonl

SPLITS = {  # folder -> (the world's split files -> the hub's split names)
    "stories": {"train": "train", "validation": "validation"},
    "ultrachat": {"train": "train_sft", "validation": "test_sft"},
    "ultrafeedback": {"train": "train_prefs", "validation": "test_prefs"},
    "hh": {"train": "train", "validation": "test"},
}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _transcript(messages: list[dict]) -> str:
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)


def write_hub_shaped(out: Path, *, size: str, seed: int, tmp: Path) -> dict[str, int]:
    """Write the files above into `out` from worlds generated under `tmp`; rows written per file."""
    first, second = tmp / "world", tmp / "judge-world"
    generate(first, size=size, seed=seed)
    generate(second, size=size, seed=seed + 1)
    counts = {}

    def put(folder: str, split: str, rows: list[dict]) -> None:
        write_jsonl(out / folder / f"{split}.jsonl", rows)
        counts[f"{folder}/{split}"] = len(rows)

    for world_split, hub_split in SPLITS["stories"].items():
        text = (first / "corpus" / f"{world_split}.txt").read_text(encoding="utf-8")
        put("stories", hub_split, [{"text": t.strip()} for t in text.split("\n\n") if t.strip()])
    for world_split, hub_split in SPLITS["ultrachat"].items():
        rows = _read(first / "sft" / f"{world_split}.jsonl")
        put("ultrachat", hub_split, [{"prompt": r["messages"][0]["content"], "prompt_id": _prompt_id(
            r["messages"][0]["content"]), "messages": r["messages"]} for r in rows])
    for world_split, hub_split in SPLITS["ultrafeedback"].items():
        rows = _read(first / "preferences" / f"{world_split}.jsonl")
        put("ultrafeedback", hub_split, [{
            "prompt": r["prompt"][-1]["content"], "prompt_id": _prompt_id(r["prompt"][-1]["content"]),
            "chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"],
            "messages": r["prompt"] + r["chosen"]} for r in rows])
    for world_split, hub_split in SPLITS["hh"].items():
        rows = _read(second / "preferences" / f"{world_split}.jsonl")
        put("hh", hub_split, [{"chosen": _transcript(r["prompt"] + r["chosen"]),
                               "rejected": _transcript(r["prompt"] + r["rejected"])} for r in rows])
    prompts = _read(first / "eval" / "prompts.jsonl")
    put("prompts", "test", [{"prompt": r["prompt"][-1]["content"]} for r in prompts])
    return counts
