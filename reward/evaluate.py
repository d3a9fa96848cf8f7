"""Judge a reward model against the gold reward: usable on its own by any stage that holds one.

    score(model, tokenizer, prompts, answers, *, ended=None) -> list[float]
    evaluate_reward_model(model, tokenizer, pairs, *, samples=None, annotators=None,
                          writer=None, step=0) -> dict[str, float]

On held-out preference pairs (prompt, chosen, rejected, and where known gold_chosen/gold_rejected):

    accuracy              chosen scored above rejected (agreement with the annotators' labels)
    accuracy_low/_high    its 95% bootstrap interval over the pairs
    gold_accuracy         the gold-better answer scored above the other (pairs with a gold gap)
    label_gold_agreement  how often the annotators' labels themselves follow the gold order
    noise_ceiling         the best accuracy any model can expect on these labels (see `noise_ceiling`)
    accuracy_of_ceiling   accuracy / noise_ceiling (and _low/_high: the interval's ends / ceiling)
    mean_margin           mean of reward(chosen) - reward(rejected); the margins go to a histogram

On answers sampled from a policy (`Samples`, e.g. the SFT model at temperature 1, several per prompt):

    gold_rank_correlation     Spearman correlation of reward with gold reward
    gold_pearson_correlation  Pearson correlation of reward with gold reward
    length_correlation        Spearman correlation of reward with answer length (a reward-hacking
                              warning sign when it exceeds gold_length_correlation)
    length_pearson_correlation, gold_length_correlation

What it learnt besides gold (reward/diagnostics.py says what each number means):

    ece, brier            calibration of P(chosen) = sigmoid(margin) against the gold order, on held-out pairs
                          with a gold gap; the reliability diagram goes to TensorBoard as `<prefix>/reliability`
    <r>_coefficient, <r>_coefficient_se, <r>_partial_r2, bias_r2, gold_length_slope
                          on sampled answers with gold: the reward regressed on gold and the annotators' bias
                          features (r: gold, length in world tokens, flattery; recipes/core/world/annotators.py)

The reward of an answer is the model's score of the whole conversation rendered with the chat
template, exactly as TRL's RewardTrainer renders it in training. An answer that was cut off before
its end of turn is scored without the closing end-of-turn marker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from recipes.core.errors import UserError
from recipes.core.generation import as_messages, generate_answers
from recipes.core.gold_eval import has_gold
from recipes.core.statistics import bootstrap_interval
from recipes.core.world import gold_reward
from recipes.core.world.annotators import answer_features
from reward.diagnostics import bias_attribution, calibration, pearson, reliability_figure, spearman

# ----------------------------------------------------------------------------------------------
# Statistics


def p_gold_label(gold_gap: float, temperature: float, flip_rate: float) -> float:
    """Probability the annotator labels the gold-better answer as chosen (Bradley-Terry, then flips)."""
    p = 1.0 / (1.0 + math.exp(-abs(gold_gap) / temperature))
    return (1 - flip_rate) * p + flip_rate * (1 - p)


def noise_ceiling(gold_gaps, temperature: float, flip_rate: float) -> float:
    """Best expected accuracy on annotator labels: mean over pairs of max(p, 1 - p), p as above.

    A pair without a gold gap (a tie) is a coin flip to the annotator: it contributes 0.5.
    """
    ps = [p_gold_label(gap, temperature, flip_rate) if gap != 0 else 0.5 for gap in gold_gaps]
    return float(np.mean([max(p, 1 - p) for p in ps])) if ps else float("nan")


def pair_metrics(rewards_chosen, rewards_rejected, gold_chosen=None, gold_rejected=None,
                 annotators: tuple[float, float] | None = None, p_agree=None) -> dict[str, float]:
    """Metrics from the rewards of each pair's two sides (and their gold scores, where known).

    `p_agree`, where the data has it (the world's pairs labelled by biased annotators: its p_agree_unseen column),
    is each label's probability of following the gold order, biases included and averaged over what a reward model
    cannot see (the order of showing, the annotator group): the noise ceiling is then mean(max(q, 1 - q)) over it,
    not computed from (temperature, flip rate), which know nothing of the biases."""
    chosen, rejected = np.asarray(rewards_chosen, float), np.asarray(rewards_rejected, float)
    margins = chosen - rejected
    correct = (margins > 0).astype(float)
    metrics = {"accuracy": float(correct.mean()), "mean_margin": float(margins.mean()),
               "eval_pairs": float(len(margins))}
    # A few hundred held-out pairs leave accuracy uncertain by several points: say by how much.
    metrics["accuracy_low"], metrics["accuracy_high"] = bootstrap_interval(correct)
    if gold_chosen is None or gold_rejected is None:
        return metrics
    gold_gaps = np.asarray(gold_chosen, float) - np.asarray(gold_rejected, float)
    decided = gold_gaps != 0
    if decided.any():
        metrics["gold_accuracy"] = float(((margins * np.sign(gold_gaps))[decided] > 0).mean())
        metrics["label_gold_agreement"] = float((gold_gaps[decided] > 0).mean())
    if annotators is not None:
        ceiling = (float(np.mean([max(q, 1 - q) for q in p_agree])) if p_agree is not None
                   else noise_ceiling(gold_gaps, *annotators))
        metrics["noise_ceiling"] = ceiling
        metrics["accuracy_of_ceiling"] = metrics["accuracy"] / ceiling
        metrics["accuracy_of_ceiling_low"] = metrics["accuracy_low"] / ceiling
        metrics["accuracy_of_ceiling_high"] = metrics["accuracy_high"] / ceiling
    return metrics


def sample_metrics(rewards, golds, lengths) -> dict[str, float]:
    """Correlations of reward with gold (where the prompts have gold: `golds` not None) and with length on sampled
    answers."""
    metrics = {
        "length_correlation": spearman(rewards, lengths),
        "length_pearson_correlation": pearson(rewards, lengths),
        "mean_sample_reward": float(np.mean(rewards)),
        "eval_samples": float(len(rewards)),
    }
    if golds is not None:
        metrics.update({
            "gold_rank_correlation": spearman(rewards, golds),
            "gold_pearson_correlation": pearson(rewards, golds),
            "gold_length_correlation": spearman(golds, lengths),
            "mean_sample_gold": float(np.mean(golds)),
        })
    return metrics


# ----------------------------------------------------------------------------------------------
# Scoring


def render(tokenizer, prompt, answer, ended: bool = True) -> list[int]:
    """Token ids of prompt + answer as RewardTrainer renders them; without the end of turn if not `ended`."""
    answer_messages = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else list(answer)
    ids = tokenizer.apply_chat_template(as_messages(prompt) + answer_messages, tokenize=True, return_dict=False)
    ids = list(ids)
    if not ended and tokenizer.eos_token_id in ids:
        ids = ids[:len(ids) - ids[::-1].index(tokenizer.eos_token_id) - 1]
    return ids


@torch.no_grad()
def score(model, tokenizer, prompts, answers, *, ended=None, batch_size: int = 32,
          max_length: int | None = None, missing_eos_penalty: float | None = None) -> list[float]:
    """The reward model's score of each (prompt, answer); answers are strings or assistant message lists.

    `ended[i] = False` marks an answer cut off before its end of turn. Rows longer than
    `max_length` (default: the model's context) keep their last tokens, where the score is read.
    `missing_eos_penalty` is subtracted from a cut-off answer's score: the end-of-turn rule of the online
    methods' training reward (PPO applies the same in alignment/ppo_core.py).
    """
    ended = [True] * len(answers) if ended is None else list(ended)
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    rows = [render(tokenizer, p, a, e) for p, a, e in zip(prompts, answers, ended)]
    rows = [r[-limit:] if limit else r for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=device)
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        scores += logits.float().view(len(batch), -1)[:, 0].tolist()
    model.train(was_training)
    if missing_eos_penalty:
        scores = [s - (0.0 if e else missing_eos_penalty) for s, e in zip(scores, ended)]
    return scores


# ----------------------------------------------------------------------------------------------
# Sampled answers and the whole evaluation


@dataclass
class Samples:
    """Answers sampled from a policy, with their gold reward: scored again at every evaluation."""

    prompts: list
    answers: list[str]
    ended: list[bool]
    lengths: list[int]  # tokens generated, end of turn included
    golds: list[float] | None  # None when a prompt is not the world's (no gold to score by)


def sample_answers(policy, tokenizer, prompts, *, samples_per_prompt: int = 4, max_new_tokens: int = 64,
                   temperature: float = 1.0, batch_size: int = 32, seed: int = 0) -> Samples:
    """`samples_per_prompt` sampled answers to each prompt, scored with the gold reward."""
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    answers = generate_answers(policy, tokenizer, repeated, max_new_tokens=max_new_tokens, do_sample=True,
                               temperature=temperature, batch_size=batch_size, seed=seed)
    world = has_gold(prompts)
    golds = [gold_reward(p, a.text, ended=a.ended).total for p, a in zip(repeated, answers)] if world else None
    return Samples(repeated, [a.text for a in answers], [a.ended for a in answers],
                   [a.num_tokens for a in answers], golds)


def attach_gold(pairs) -> dict[str, list] | None:
    """Gold scores of each pair's two sides: the gold_chosen/gold_rejected columns where the data has
    them, else the world's gold reward where every prompt belongs to a world family, else None."""
    columns = _columns(pairs)
    if "gold_chosen" in columns and "gold_rejected" in columns:
        if all(v is not None for v in columns["gold_chosen"] + columns["gold_rejected"]):
            return {"gold_chosen": list(columns["gold_chosen"]), "gold_rejected": list(columns["gold_rejected"])}

    if not columns["prompt"] or not has_gold(columns["prompt"]):
        return None
    return {side: [gold_reward(p, a).total for p, a in zip(columns["prompt"], columns[side.split("_")[1]])]
            for side in ("gold_chosen", "gold_rejected")}


def _columns(pairs) -> dict[str, list]:
    if isinstance(pairs, dict):  # already columns
        return pairs
    if hasattr(pairs, "column_names"):  # a datasets.Dataset
        return {name: list(pairs[name]) for name in pairs.column_names}
    rows = list(pairs)
    names = rows[0].keys() if rows else ("prompt", "chosen", "rejected")
    return {name: [row.get(name) for row in rows] for name in names}


def evaluate_reward_model(model, tokenizer, pairs, *, samples: Samples | None = None,
                          annotators: tuple[float, float] | None = None, batch_size: int = 32,
                          max_length: int | None = None, writer=None, step: int = 0,
                          prefix: str = "reward_eval", details: dict | None = None) -> dict[str, float]:
    """Score held-out `pairs` (and `samples`); return the metrics above.

    `pairs` is a datasets.Dataset, a dict of columns or a list of dicts with prompt/chosen/rejected
    (plus gold columns where known); with `max_length`, pairs with a side longer than that many
    tokens are left out, as RewardTrainer leaves them out of training and its own evaluation; `annotators` is (Bradley-Terry temperature, flip rate) for the noise ceiling. With
    a TensorBoard `writer`, every metric goes to `<prefix>/<name>` at `step`, and the margins to a
    histogram `<prefix>/margins`. A `details` dict receives what the metrics were computed from, for the
    caller to save or combine (an ensemble): `margins` and `gold_gaps` of the pairs kept (None without gold),
    `sample_rewards` (None without samples) and `calibration`, the reliability diagram's per-bin table.
    """
    columns = _columns(pairs)
    if max_length:  # as RewardTrainer does: leave out pairs with a side longer than max_length
        keep = [i for i, (p, c, r) in enumerate(zip(columns["prompt"], columns["chosen"], columns["rejected"]))
                if max(len(render(tokenizer, p, c)), len(render(tokenizer, p, r))) <= max_length]
        columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    n = len(columns["prompt"])
    if n == 0:
        raise UserError(f"no held-out pair fits in max_length={max_length} tokens")
    both = score(model, tokenizer, columns["prompt"] * 2, list(columns["chosen"]) + list(columns["rejected"]),
                 batch_size=batch_size, max_length=max_length)
    chosen, rejected = both[:n], both[n:]
    gold = attach_gold(columns)
    p_agree = columns.get("p_agree_unseen") if gold and columns.get("p_agree_unseen") is not None else None
    metrics = pair_metrics(chosen, rejected, **(gold or {}), annotators=annotators if gold else None, p_agree=p_agree)
    margins, gold_gaps, table, rewards = np.asarray(chosen) - np.asarray(rejected), None, None, None
    if gold:
        gold_gaps = np.asarray(gold["gold_chosen"], float) - np.asarray(gold["gold_rejected"], float)
        calibrated, table = calibration(margins, gold_gaps)
        metrics.update(calibrated)
    if samples is not None and samples.answers:
        rewards = score(model, tokenizer, samples.prompts, samples.answers, ended=samples.ended,
                        batch_size=batch_size, max_length=max_length)
        metrics.update(sample_metrics(rewards, samples.golds, samples.lengths))
        if samples.golds is not None:
            features = [answer_features(answer) for answer in samples.answers]
            metrics.update(bias_attribution(rewards, samples.golds,
                                            {name: [f[name] for f in features] for name in features[0]}))
    if details is not None:
        details.update(margins=margins, gold_gaps=gold_gaps, sample_rewards=rewards, calibration=table)
    if writer is not None:
        for name, value in metrics.items():
            if not name.startswith("eval_") and math.isfinite(value):
                writer.add_scalar(f"{prefix}/{name}", value, step)
        writer.add_histogram(f"{prefix}/margins", margins, step)
        if table is not None:
            writer.add_figure(f"{prefix}/reliability", reliability_figure(table), step)  # closes the figure
        writer.flush()
    return metrics
