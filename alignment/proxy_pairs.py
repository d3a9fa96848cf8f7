"""On-policy preference pairs for DPO and KTO: the SFT model's own answers, ranked by the reward model.

The recipe's preference pairs were written by others (the world's personas, or a dataset's models),
so DPO and KTO learn from answers the SFT model would rarely give. With `sft_sample_pairs: N` the
stage instead samples `sft_samples_per_prompt` answers from the SFT model to each of the first N
distinct prompts of the recipe's pairs, scores them with the reward model (the proxy that best-of-n,
PPO, GRPO and RLOO optimise), and keeps the best as chosen and the worst as rejected: the
rejection-sampling pairs of Llama 2 and of iterative DPO (Xiong et al. 2024, "Iterative Preference
Learning from Human Feedback"); Tajwar et al. 2024 argue why on-policy samples help.

Answers cut off before their end of turn are left out: rendered through the chat template they
would gain an end of turn nobody wrote. A prompt with fewer than two distinct finished answers
gives no pair.
"""

from __future__ import annotations

from recipes.core.data.world_cache import cache_root
from recipes.core.generation import Answer, as_messages, generate_answers
from recipes.core.rundir import atomic_write_text
from recipes.core.seeds import stream_seed
from recipes.core.world import family_of, gold_reward
from reward import score


def proxy_ranked_pairs(policy, reward_model, tokenizer, prompts, *, samples_per_prompt: int, max_new_tokens: int,
                       temperature: float = 1.0, batch_size: int = 32, seed: int = 0, policy_weights: str | None = None):
    """(pairs, counts): a datasets.Dataset of conversational prompt/chosen/rejected, best and worst of
    `samples_per_prompt` sampled answers by proxy score, and the numbers for the manifest.

    With `policy_weights` (the sha256 of the policy's weights) the sampled answers are cached, so DPO
    and KTO on the same SFT model and settings sample them once."""
    import datasets
    import numpy as np

    def sample():
        return [generate_answers(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=temperature, batch_size=batch_size,
                                 seed=stream_seed(seed, "pairs/sample", i))
                for i in range(samples_per_prompt)]

    rounds = cached_samples(sample, policy_weights, prompts, samples_per_prompt=samples_per_prompt,
                            max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size, seed=seed)
    scores = [score(reward_model, tokenizer, prompts, [a.text for a in answers], batch_size=batch_size)
              for answers in rounds]

    columns = {"prompt": [], "chosen": [], "rejected": []}
    margins, gold_order = [], []
    for p, prompt in enumerate(prompts):
        candidates, texts = [], set()
        for answers, proxy in zip(rounds, scores):
            answer = answers[p]
            if answer.ended and answer.text not in texts:
                texts.add(answer.text)
                candidates.append((proxy[p], answer.text))
        if len(candidates) < 2:
            continue
        candidates.sort(key=lambda c: c[0])
        (low, worst), (high, best) = candidates[0], candidates[-1]
        columns["prompt"].append(as_messages(prompt))
        columns["chosen"].append([{"role": "assistant", "content": best}])
        columns["rejected"].append([{"role": "assistant", "content": worst}])
        margins.append(high - low)
        if family_of(prompt) != "unknown":  # world prompts: how often the proxy's order is gold's
            gold_order.append(np.sign(gold_reward(prompt, best).total - gold_reward(prompt, worst).total))

    sampled = sum(len(answers) for answers in rounds)
    counts = {
        "sft_sample_prompts": len(prompts),
        "sft_sample_answers": sampled,
        "sft_sample_unended_answers": sum(not a.ended for answers in rounds for a in answers),
        "sft_sample_tokens": sum(a.num_tokens for answers in rounds for a in answers),
        "sft_sample_pairs_built": len(columns["prompt"]),
        "sft_sample_mean_proxy_margin": float(np.mean(margins)) if margins else 0.0,
    }
    if gold_order:
        gold_order = np.asarray(gold_order)
        counts.update({"sft_sample_pairs_gold_agrees": float((gold_order > 0).mean()),
                       "sft_sample_pairs_gold_ties": float((gold_order == 0).mean()),
                       "sft_sample_pairs_gold_disagrees": float((gold_order < 0).mean())})
    return datasets.Dataset.from_dict(columns), counts


def cached_samples(sample, policy_weights: str | None, prompts, **settings):
    """`sample()`'s rounds of answers, from the cache when this policy already sampled these prompts so.

    Sampling is seeded and batch-deterministic, so the key (weights, prompts, every setting) decides
    the answers exactly; the cache lives beside the world data ($RLHF_LAB_CACHE/samples/). Stages that run
    side by side and need the same answers (every method's SFT baseline) take turns on an OS lock beside the
    entry: the first samples, the others wait and read.
    """
    import dataclasses
    import fcntl
    import hashlib
    import json

    if policy_weights is None:
        return sample()
    # "streams": each round's seed derived from `seed` by recipes.core.seeds (earlier entries used seed + 1 + i)
    key = hashlib.sha256(json.dumps([policy_weights, prompts, settings, "streams"], sort_keys=True,
                                    default=str).encode())
    path = cache_root() / "samples" / f"{key.hexdigest()[:32]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a killed process exits
        if path.is_file():
            try:
                rounds = json.loads(path.read_text(encoding="utf-8"))
                print(f"reusing {sum(map(len, rounds))} sampled answers from {path}")
                return [[Answer(**a) for a in answers] for answers in rounds]
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
                pass  # a damaged cache entry is sampled again and replaced
        rounds = sample()
        atomic_write_text(path, json.dumps([[dataclasses.asdict(a) for a in answers] for answers in rounds]))
        return rounds


def concatenate_pairs(first, second):
    """The prompt/chosen/rejected columns of two pair datasets, one after the other (the trainer shuffles)."""
    import datasets

    columns = ["prompt", "chosen", "rejected"]
    first = first.select_columns(columns)
    return datasets.concatenate_datasets([first, second.select_columns(columns).cast(first.features)])
