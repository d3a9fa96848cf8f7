"""Comparisons of the SFT model's own answers, labelled by the world's simulated annotators.

InstructGPT collected its comparisons on answers sampled from the models being trained, not on
answers written by others. A reward model trained only on the world's persona answers ranks clean
text well but meets the SFT model's samples (garbled stories, wrong sums, half-rude answers) out of
its training distribution, and those are exactly what best-of-n, PPO, GRPO and RLOO ask it to
score. So the reward stage can add `sft_sample_pairs` pairs: two answers sampled from the SFT model
for each distinct training prompt in turn (going round the prompts again, with fresh samples, when
more pairs are asked for than there are prompts), scored with the gold reward, labelled with the same
Bradley-Terry noise, flips and biases as the world's annotators. Gold ties carry no order and are skipped.

Pairs of answers to the same prompt say nothing about how good one prompt's answers are against
another's: the Bradley-Terry loss is blind to a constant added to every answer of a prompt, so each
task family's rewards settle on an offset of their own and a correct sum can score below a weak
story. `sft_sample_cross_pairs` adds pairs of the same sampled answers to two different prompts,
labelled alike (the annotator judges which conversation went better), which put every prompt's
rewards on one scale.

An answer cut off before its end of turn keeps its gold penalty and is rendered without the
end-of-turn marker, which is why the pairs go to the trainer as token ids (`to_token_ids`).
"""

from __future__ import annotations

import random

from recipes.core.errors import UserError
from recipes.core.generation import as_messages, distinct, generate_answers
from recipes.core.world import family_of, gold_reward
from recipes.core.world.annotators import GROUPS, Annotators
from reward.evaluate import render


def distinct_prompts(prompts, limit: int) -> list:
    """The first `limit` distinct prompts, each of a world family (the gold reward labels the pairs)."""
    unique = distinct(prompts, limit)
    unknown = [p for p in unique if family_of(p) == "unknown"]
    if unknown:
        raise UserError(f"key 'sft_sample_pairs': labelling SFT samples needs the world's gold reward, but "
                        f"prompt {as_messages(unknown[0])[-1]['content']!r} belongs to no world family")
    return unique


def label_sft_samples(policy, tokenizer, prompts, *, pairs: int, annotators: Annotators,
                      max_new_tokens: int, temperature: float = 1.0, batch_size: int = 32,
                      seed: int = 0, cross_pairs: int = 0) -> tuple[dict[str, list], dict[str, float]]:
    """Up to `pairs` labelled pairs of SFT answers to distinct `prompts`, in TRL's conversational shape,
    then up to `cross_pairs` pairs of those answers to two different prompts.

    Returns (columns prompt_chosen/prompt_rejected/chosen/rejected/gold_chosen/gold_rejected/ended_*,
    counts for the manifest).
    """
    unique = distinct_prompts(prompts, pairs)
    asked = [unique[i % len(unique)] for i in range(pairs)]
    doubled = [p for p in asked for _ in range(2)]
    answers = generate_answers(policy, tokenizer, doubled, max_new_tokens=max_new_tokens, do_sample=True,
                               temperature=temperature, batch_size=batch_size, seed=seed)
    rng = random.Random(f"sft-sample-labels/{seed}")
    groups = random.Random(f"sft-sample-annotator-groups/{seed}")  # its own stream: see annotators.Annotators.label
    scores = [gold_reward(p, a.text, ended=a.ended) for p, a in zip(doubled, answers)]
    golds = [s.total for s in scores]
    columns = {name: [] for name in ("prompt_chosen", "prompt_rejected", "chosen", "rejected", "gold_chosen",
                                     "gold_rejected", "ended_chosen", "ended_rejected")}

    def add(i: int, j: int) -> bool:
        """Label answers i and j (indices into `doubled`); False for a gold tie, which is left out."""
        if golds[i] == golds[j]:
            return False
        group = groups.randrange(len(GROUPS)) if annotators.biases.group_disagreement else None
        if not annotators.label((scores[i].terms, scores[j].terms), (answers[i].text, answers[j].text),
                                (golds[i], golds[j]), rng, group).a_preferred:
            i, j = j, i
        for side, k in (("chosen", i), ("rejected", j)):
            columns[f"prompt_{side}"].append(as_messages(doubled[k]))
            columns[side].append([{"role": "assistant", "content": answers[k].text}])
            columns[f"gold_{side}"].append(golds[k])
            columns[f"ended_{side}"].append(answers[k].ended)
        return True

    ties = sum(not add(2 * i, 2 * i + 1) for i in range(len(asked)))
    same_prompt = len(columns["chosen"])
    cross_ties = 0
    if cross_pairs and len(unique) > 1:
        for _ in range(cross_pairs):
            i = rng.randrange(len(doubled))
            j = rng.randrange(len(doubled))
            while repr(doubled[j]) == repr(doubled[i]):
                j = rng.randrange(len(doubled))
            cross_ties += not add(i, j)
    unended = sum(not a.ended for a in answers)  # each sampled answer once, however many pairs it is in
    counts = {"sft_sample_prompts": len(unique), "sft_sample_samples": len(doubled), "sft_sample_pairs": same_prompt,
              "sft_sample_ties": ties, "sft_sample_cross_pairs": len(columns["chosen"]) - same_prompt,
              "sft_sample_cross_ties": cross_ties, "sft_sample_unended_answers": unended}
    return columns, counts


def to_token_ids(tokenizer, columns: dict[str, list]) -> dict[str, list]:
    """chosen_ids/rejected_ids as TRL's RewardTrainer renders pairs itself, cut-off answers left open."""
    n = len(columns["chosen"])
    ids = {}
    for side in ("chosen", "rejected"):
        prompts = columns.get(f"prompt_{side}", columns.get("prompt"))  # a shared prompt, or one per side
        ended = columns.get(f"ended_{side}", [True] * n)
        ids[f"{side}_ids"] = [render(tokenizer, p, a, e) for p, a, e in zip(prompts, columns[side], ended)]
    return ids
