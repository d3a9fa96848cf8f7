"""Comparisons of the SFT model's own answers, labelled by the world's simulated annotators.

InstructGPT collected its comparisons on answers sampled from the models being trained, not on
answers written by others. A reward model trained only on the world's persona answers ranks clean
text well but meets the SFT model's samples (garbled stories, wrong sums, half-rude answers) out of
its training distribution, and those are exactly what best-of-n, PPO, GRPO and RLOO ask it to
score. So the reward stage can add `sft_sample_pairs` pairs: two answers sampled from the SFT model
for each distinct training prompt in turn (going round the prompts again, with fresh samples, when
more pairs are asked for than there are prompts), scored with the gold reward, labelled with the same
Bradley-Terry noise and flips as the world's annotators. Gold ties carry no order and are skipped.
An answer cut off before its end of turn keeps its gold penalty and is rendered without the
end-of-turn marker, which is why the pairs go to the trainer as token ids (`to_token_ids`).
"""

from __future__ import annotations

import random

from recipes.errors import UserError


def distinct_prompts(prompts, limit: int) -> list:
    """The first `limit` distinct prompts, each of a world family (the gold reward labels the pairs)."""
    from recipes.generation import as_messages
    from recipes.world import family_of

    unique, seen = [], set()
    for prompt in prompts:
        key = repr(prompt)
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    unique = unique[:limit]
    unknown = [p for p in unique if family_of(p) == "unknown"]
    if unknown:
        raise UserError(f"key 'sft_sample_pairs': labelling SFT samples needs the world's gold reward, but "
                        f"prompt {as_messages(unknown[0])[-1]['content']!r} belongs to no world family")
    return unique


def label_sft_samples(policy, tokenizer, prompts, *, pairs: int, annotators: tuple[float, float],
                      max_new_tokens: int, temperature: float = 1.0, batch_size: int = 32,
                      seed: int = 0) -> tuple[dict[str, list], dict[str, float]]:
    """Up to `pairs` labelled pairs of SFT answers to distinct `prompts`, in TRL's conversational shape.

    Returns (columns prompt/chosen/rejected/gold_chosen/gold_rejected, counts for the manifest).
    """
    from recipes.generation import as_messages, generate_answers
    from recipes.world import gold_reward
    from recipes.world.annotators import label

    unique = distinct_prompts(prompts, pairs)
    asked = [unique[i % len(unique)] for i in range(pairs)]
    doubled = [p for p in asked for _ in range(2)]
    answers = generate_answers(policy, tokenizer, doubled, max_new_tokens=max_new_tokens, do_sample=True,
                               temperature=temperature, batch_size=batch_size, seed=seed)
    rng = random.Random(f"sft-sample-labels/{seed}")
    temperature_bt, flip_rate = annotators
    columns = {name: [] for name in ("prompt", "chosen", "rejected", "gold_chosen", "gold_rejected",
                                     "ended_chosen", "ended_rejected")}
    ties = unended = 0
    for i, prompt in enumerate(asked):
        a, b = answers[2 * i], answers[2 * i + 1]
        gold_a, gold_b = gold_reward(prompt, a.text, ended=a.ended).total, gold_reward(prompt, b.text, ended=b.ended).total
        if gold_a == gold_b:
            ties += 1
            continue
        if not label(gold_a, gold_b, rng, temperature_bt, flip_rate).a_preferred:
            a, b, gold_a, gold_b = b, a, gold_b, gold_a
        columns["prompt"].append(as_messages(prompt))
        columns["chosen"].append([{"role": "assistant", "content": a.text}])
        columns["rejected"].append([{"role": "assistant", "content": b.text}])
        columns["gold_chosen"].append(gold_a)
        columns["gold_rejected"].append(gold_b)
        columns["ended_chosen"].append(a.ended)
        columns["ended_rejected"].append(b.ended)
        unended += (not a.ended) + (not b.ended)
    counts = {"sft_sample_prompts": len(unique), "sft_sample_samples": len(doubled), "sft_sample_pairs": len(columns["prompt"]),
              "sft_sample_ties": ties, "sft_sample_unended_answers": unended}
    return columns, counts


def to_token_ids(tokenizer, columns: dict[str, list]) -> dict[str, list]:
    """chosen_ids/rejected_ids as TRL's RewardTrainer renders pairs itself, cut-off answers left open."""
    from reward.evaluate import render

    n = len(columns["prompt"])
    ended = {side: columns.get(f"ended_{side}", [True] * n) for side in ("chosen", "rejected")}
    return {f"{side}_ids": [render(tokenizer, p, a, e) for p, a, e in zip(columns["prompt"], columns[side], ended[side])]
            for side in ("chosen", "rejected")}
