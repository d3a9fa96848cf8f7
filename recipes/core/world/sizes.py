"""World sizes: how much of each kind `generate` writes, and the annotators' noise."""

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class WorldSize:
    corpus_bytes: int          # train corpus; validation is `validation_share` of it on top
    sft_rows: int              # train conversations; validation likewise
    preference_pairs: int      # train pairs; validation likewise
    eval_prompts: int
    validation_share: float = 0.05
    bt_temperature: float = 0.5  # annotators: P(A preferred) = sigmoid((gold(A) - gold(B)) / T)
    flip_rate: float = 0.05      # then the label is flipped with this probability


SIZES = {
    "smoke": WorldSize(corpus_bytes=6_000, sft_rows=100, preference_pairs=100, eval_prompts=40,
                       validation_share=0.2),
    "default": WorldSize(corpus_bytes=3_000_000, sft_rows=4_000, preference_pairs=4_000, eval_prompts=400),
}


# The size fields each kind's files depend on. Evaluation prompts are drawn unseen in SFT and
# preference training, so they depend on those sizes too.
_KIND_FIELDS = {
    "corpus": ("corpus_bytes", "validation_share"),
    "sft": ("sft_rows", "validation_share"),
    "preferences": ("preference_pairs", "validation_share", "bt_temperature", "flip_rate"),
    "eval": ("eval_prompts", "sft_rows", "preference_pairs", "validation_share"),
}


def size_key(spec: WorldSize, kind: str) -> str:
    """A short hash of what `kind`'s files depend on: a cache made under other sizes is never reused."""
    fields = ",".join(f"{name}={getattr(spec, name)!r}" for name in _KIND_FIELDS[kind])
    return hashlib.sha256(fields.encode()).hexdigest()[:8]
