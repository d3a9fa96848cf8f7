"""The one evaluation every alignment method shares (alignment/evaluate.py): its statistics by hand,
the Evaluator on the smoke SFT model, TensorBoard output, and the `rlhf-lab align` dispatcher."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alignment.best_of_n import best_of_n_kl, estimated_kl, kl_bound
from alignment.common import load_policy, load_reward_model
from alignment.evaluate import (
    Evaluator,
    answer_logprobs,
    bootstrap_interval,
    kl_estimates,
    pairwise_outcomes,
    ties_and_decided_wins,
    win_rate,
    write,
)
from base_model.hf import GPTConfig, GPTForCausalLM
from recipes.core.cli import main as rlhf_lab
from recipes.core.data import load_prompts
from recipes.core.seeds import stream_seed

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# KL estimators


def test_k3_is_never_negative_and_zero_when_policy_is_reference():
    gen = torch.Generator().manual_seed(0)
    for _ in range(500):
        length = int(torch.randint(1, 20, (1,), generator=gen))
        p = torch.randn(length, generator=gen) * 3 - 2  # any log-probs, wildly different ones included
        q = torch.randn(length, generator=gen) * 3 - 2
        plain, k3 = kl_estimates([p], [q])
        assert k3 >= 0.0
        assert kl_estimates([p], [p.clone()]) == (0.0, 0.0)


def test_plain_and_k3_estimators_by_hand():
    policy = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.1])]
    reference = [torch.tensor([-1.5, -1.0]), torch.tensor([-0.3])]
    plain, k3 = kl_estimates(policy, reference)
    # plain: sum of log p - log q per answer, averaged: (0.5 - 1.0 + 0.2) / 2
    assert plain == pytest.approx((0.5 - 1.0 + 0.2) / 2)
    # k3: sum of r - 1 - log r with log r = q - p: answer 1 has log r = -0.5, 1.0; answer 2 has -0.2
    first = (math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)
    second = math.exp(-0.2) - 1 + 0.2
    assert k3 == pytest.approx((first + second) / 2)


def tiny_model():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64)
    return GPTForCausalLM(config).eval()


def test_answer_logprobs_match_a_direct_computation_under_padding():
    model = tiny_model()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11], [12]]
    answers = [[13, 14], [15, 16, 17, 18, 19], [20], [21, 22, 23]]
    for temperature in (1.0, 0.7):
        # batch_size 3: the first batch is right-padded to different widths; the pad id is a real token
        got = answer_logprobs(model, prompts, answers, temperature=temperature, batch_size=3, pad_token_id=5)
        assert [len(g) for g in got] == [len(a) for a in answers]
        for p, a, g in zip(prompts, answers, got):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p + a])).logits[0].float() / temperature
            logprobs = torch.log_softmax(logits, dim=-1)
            direct = torch.stack([logprobs[len(p) - 1 + j, token] for j, token in enumerate(a)])
            torch.testing.assert_close(g, direct, atol=1e-5, rtol=1e-5)
    assert not model.training


# ----------------------------------------------------------------------------------------------
# Bootstrap interval and win rate


def test_bootstrap_interval_brackets_the_mean_narrows_and_is_reproducible():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 20), rng.normal(2.0, 1.0, 2000)
    for values in (small, large):
        low, high = bootstrap_interval(values, seed=0)
        assert low < values.mean() < high
    assert np.ptp(bootstrap_interval(large, seed=0)) < np.ptp(bootstrap_interval(small, seed=0)) / 5
    assert bootstrap_interval(small, seed=3) == bootstrap_interval(small, seed=3)
    assert bootstrap_interval(small, seed=3) != bootstrap_interval(small, seed=4)
    assert bootstrap_interval([1.5] * 10) == (1.5, 1.5)


def test_win_rate_counts_ties_half():
    assert win_rate([1, 2, 3], [0, 2, 4]) == pytest.approx(0.5)  # win, tie, loss
    assert win_rate([1, 1], [0, 0]) == 1.0
    assert win_rate([0.3, -1, 5, 5], [0.3, -1, 5, 5]) == 0.5
    assert win_rate([2, 2, 2, 0], [1, 2, 3, 3]) == pytest.approx((1 + 0.5) / 4)


def test_win_and_tie_shares_count_every_pair_of_answers_to_a_prompt():
    # prompt 0: the policy answers 1 and 3, the SFT baseline 0, 1, 5: pairs (1,0) win, (1,1) tie, (1,5) loss,
    # (3,0) win, (3,1) win, (3,5) loss -> (3 + 0.5) / 6 won, 1/6 tied. Prompt 1: policy 2 and 2 against
    # baseline 2, 2, 2: every pair ties -> 0.5 won, all tied.
    policy = [[1, 2], [3, 2]]  # (answers, prompts)
    baseline = [[0, 2], [1, 2], [5, 2]]
    wins, ties = pairwise_outcomes(policy, baseline)
    assert wins == pytest.approx([3.5 / 6, 0.5]) and ties == pytest.approx([1 / 6, 1.0])
    assert win_rate(policy, baseline) == pytest.approx((3.5 / 6 + 0.5) / 2)
    tie_rate, decided = ties_and_decided_wins(policy, baseline)
    assert tie_rate == pytest.approx(7 / 12) and decided == pytest.approx(3 / 5)  # 3 wins, 2 losses among the 5 untied pairs
    # a set of answers against itself: half won whatever the values
    assert win_rate(baseline, baseline) == pytest.approx(0.5)


def test_ties_and_decided_wins():
    # win, tie, loss, win, tie: 2 ties of 5; 2 wins of the 3 decided prompts
    tie_rate, decided = ties_and_decided_wins([1, 2, 3, 5, 1.0], [0, 2, 4, 4, 1.0])
    assert (tie_rate, decided) == (pytest.approx(0.4), pytest.approx(2 / 3))
    # the win rate is the decided one scaled to the untied share, plus half the ties
    assert win_rate([1, 2, 3, 5, 1.0], [0, 2, 4, 4, 1.0]) == pytest.approx(decided * (1 - tie_rate) + tie_rate / 2)
    tie_rate, decided = ties_and_decided_wins([1.0, 1.0], [1.0, 1.0])
    assert tie_rate == 1.0 and math.isnan(decided)


def test_best_of_n_kl_bound():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    values = [kl_bound(n) for n in (1, 2, 4, 8, 16, 64)]
    assert values == sorted(values) and len(set(values)) == len(values)
    for n in (100, 10_000, 1_000_000):  # log n - 1 + 1/n
        assert kl_bound(n) - math.log(n) == pytest.approx(-1 + 1 / n)
    with pytest.raises(ValueError):
        kl_bound(0)


def exact_best_of_n_kl(probs, rewards, n):
    """By brute force: every ordered n-tuple of draws, best-of-n keeps the highest reward, the first drawn on a tie."""
    import itertools

    chosen = [0.0] * len(probs)
    for draws in itertools.product(range(len(probs)), repeat=n):
        weight = math.prod(probs[d] for d in draws)
        best = max(range(n), key=lambda j: (rewards[draws[j]], -j))
        chosen[draws[best]] += weight
    return sum(c * math.log(c / p) for c, p in zip(chosen, probs) if c > 0)


@pytest.mark.parametrize("probs, rewards", [
    ([0.5, 0.3, 0.2], [0.0, 1.0, 2.0]),
    ([0.6, 0.1, 0.25, 0.05], [1.0, 0.0, 1.0, 3.0]),  # two answers tie on reward
    ([0.9, 0.1], [1.0, 0.0]),  # the likeliest answer is also the best: best-of-n barely moves
])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_best_of_n_kl_is_exact_on_a_categorical_and_under_the_bound(probs, rewards, n):
    exact = exact_best_of_n_kl(probs, rewards, n)
    assert best_of_n_kl(list(zip(rewards, probs, [True] * len(probs))), n) == pytest.approx(exact, abs=1e-12)
    assert exact < kl_bound(n)


def test_the_candidates_estimate_equals_the_exact_kl_when_they_cover_a_small_categorical():
    """Eight candidates drawn from three answers, each at least twice: every answer is an atom with its exact
    probability, nothing is left to spread, and the estimate is the exact KL, under the bound."""
    probs, rewards = {(7,): 0.5, (8, 9): 0.3, (4,): 0.2}, {(7,): 0.0, (8, 9): 1.0, (4,): 2.0}
    draws = [(7,), (8, 9), (7,), (4,), (7,), (8, 9), (4,), (7,)]
    estimate = estimated_kl(draws, [math.log(probs[d]) for d in draws], [rewards[d] for d in draws])
    exact = exact_best_of_n_kl(list(probs.values()), list(rewards.values()), 8)
    assert estimate == pytest.approx(exact, abs=1e-12) and exact < kl_bound(8) - 0.1


def test_the_candidates_estimate_is_the_bound_when_no_two_coincide_and_never_above_it():
    import random

    draws = [(k,) for k in range(6)]
    assert estimated_kl(draws, [-20.0] * 6, [0.3, 0.1, 0.9, 0.5, 0.2, 0.7]) == pytest.approx(kl_bound(6), abs=1e-12)
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        vocabulary = [(k,) for k in range(rng.randint(1, 5))]
        probs = {v: rng.random() / len(vocabulary) for v in vocabulary}
        reward = {v: rng.choice([0.0, 0.5, 1.0]) for v in vocabulary}
        draws = [rng.choice(vocabulary) for _ in range(n)]
        estimate = estimated_kl(draws, [math.log(probs[d]) for d in draws], [reward[d] for d in draws])
        assert -1e-12 <= estimate <= kl_bound(n) + 1e-12


def test_two_seeds_share_no_stream():
    """Every draw's seed (evaluation answers, best-of-n candidates, pair sampling, the reward stage's samples)
    differs across purposes, indices and run seeds: nothing is shared by accident."""
    purposes = ["eval/policy", "eval/sft-baseline", "reward/eval-samples", "reward/pair-samples"]
    seeds = [stream_seed(s, p) for s in range(3) for p in purposes]
    seeds += [stream_seed(s, p, k) for s in range(3) for p in ("best-of-n/candidate", "pairs/sample") for k in range(64)]
    assert len(set(seeds)) == len(seeds) and all(0 <= x < 2**31 for x in seeds)
    assert stream_seed(0, "eval/policy") == stream_seed(0, "eval/policy")  # and reproducible


# ----------------------------------------------------------------------------------------------
# The Evaluator on the smoke SFT model


@pytest.fixture(scope="module")
def evaluator(smoke_sft, smoke_reward):
    model, tokenizer = load_policy(smoke_sft / "model")
    prompts = load_prompts("world:eval?size=smoke&seed=0", split="test")["prompt"][:8]
    return Evaluator(model, tokenizer, prompts, reward_model=load_reward_model(smoke_reward / "model"),
                     max_new_tokens=12, temperature=1.0, batch_size=8, seed=0, samples_per_prompt=2,
                     baseline_samples_per_prompt=3)


@pytest.fixture(scope="module")
def sft_evaluation(evaluator):
    return evaluator.evaluate(evaluator.sft_model)


def test_the_sft_model_against_itself(evaluator, sft_evaluation):
    """The SFT model evaluated as a policy: KL 0, and answers drawn apart from the baseline's (another stream),
    so ties are only the real ones and its gain over SFT has an interval around zero."""
    metrics, rows = sft_evaluation
    assert metrics["kl"] == 0.0 and metrics["kl_k3"] == 0.0
    assert [r["answer"] for r in rows] != [a.text for a in evaluator.sft_answers]
    assert metrics["tie_rate"] < 1.0 and metrics["gold_gain_low"] <= 0.0 <= metrics["gold_gain_high"]
    assert metrics["gold_gain"] == pytest.approx(metrics["gold_reward"] - evaluator.sft_metrics()["gold_reward"])
    baseline = evaluator.sft_metrics()
    assert (baseline["win_rate"], baseline["gold_gain"]) == (0.5, 0.0)
    sft_gold = np.array(evaluator.sft_gold).reshape(3, 8)  # three baseline answers to each of the 8 prompts
    assert baseline["tie_rate"] == pytest.approx(np.mean([[sft_gold[a, i] == sft_gold[b, i] for a in range(3)
                                                            for b in range(3)] for i in range(8)]))
    assert metrics["gold_reward_low"] <= metrics["gold_reward"] <= metrics["gold_reward_high"]
    assert math.isfinite(metrics["proxy_reward"]) and all("proxy" in r for r in rows)
    assert len(rows) == 16 and 1 <= metrics["length"] <= 12  # 8 prompts, 2 answers each
    recorded = evaluator.recorded
    assert recorded["samples_per_prompt"] == 2 and recorded["baseline_samples_per_prompt"] == 3
    assert len(recorded["gold"]) == len(recorded["sft_gold"]) == len(recorded["win"]) == 8
    assert len(evaluator.sft_answers) == 24
    by_prompt = [(rows[i]["gold"] + rows[i + 8]["gold"]) / 2 for i in range(8)]  # answer j to prompt i at j*8 + i
    assert recorded["gold"] == pytest.approx(by_prompt)
    assert recorded["sft_gold"] == pytest.approx(sft_gold.mean(axis=0))
    won = [np.mean([(rows[i + 8 * a]["gold"] > sft_gold[b, i]) + 0.5 * (rows[i + 8 * a]["gold"] == sft_gold[b, i])
                    for a in range(2) for b in range(3)]) for i in range(8)]  # all 2 x 3 pairs per prompt
    assert recorded["win"] == pytest.approx(won) and metrics["win_rate"] == pytest.approx(np.mean(won))


def test_the_pretrained_model_is_far_from_sft(evaluator, smoke_pretrain):
    pretrained, _ = load_policy(smoke_pretrain / "model")
    metrics, _ = evaluator.evaluate(pretrained)
    assert metrics["kl"] > 0 and metrics["kl_k3"] > 0
    assert 0.0 <= metrics["win_rate"] <= 1.0


# ----------------------------------------------------------------------------------------------
# TensorBoard


def read_events(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_write_puts_metrics_and_samples_into_tensorboard(tmp_path, sft_evaluation):
    from torch.utils.tensorboard import SummaryWriter

    metrics, rows = sft_evaluation
    writer = SummaryWriter(str(tmp_path))
    write(writer, {**metrics, "not_a_number": float("nan"), "missing": None}, rows, step=3)
    writer.close()
    events = read_events(tmp_path)
    scalars = events.Tags()["scalars"]
    assert set(scalars) == {f"gold_eval/{k}" for k in metrics}  # nan and None left out
    for key in ("gold_reward", "win_rate", "kl", "proxy_reward"):
        (event,) = events.Scalars(f"gold_eval/{key}")
        assert event.step == 3 and event.value == pytest.approx(metrics[key])
    (text,) = events.Tensors("gold_eval/samples/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert table.startswith("| family | prompt | answer | gold | proxy |")
    assert rows[0]["prompt"] in table and f"{rows[0]['gold']:+.2f}" in table


def test_write_marks_cut_off_answers_and_works_without_proxy(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    rows = [{"family": "math", "prompt": "What is 1 + 1?", "answer": "2", "ended": True, "gold": 1.0},
            {"family": "chat", "prompt": "Hi", "answer": "hello hello", "ended": False, "gold": -0.5}]
    writer = SummaryWriter(str(tmp_path))
    write(writer, {"gold_reward": 0.25}, rows, step=0)
    writer.close()
    events = read_events(tmp_path)
    assert events.Scalars("gold_eval/gold_reward")[0].value == 0.25
    table = events.Tensors("gold_eval/samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| math | What is 1 + 1? | 2 | +1.00 |" in table and "| chat | Hi | hello hello … | -0.50 |" in table
    assert "proxy" not in table


# ----------------------------------------------------------------------------------------------
# `rlhf-lab align` dispatcher


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_align_without_method_exits_2_with_one_line(capsys):
    assert rlhf_lab(["align", "--config", str(REPO / "recipes/smoke/align-best-of-n.yaml")]) == 2
    line = one_error_line(capsys)
    assert "--method is required" in line and "best-of-n" in line and "dpo" in line


def test_align_with_unknown_method_exits_2_with_one_line(capsys):
    assert rlhf_lab(["align", "--method", "best-of-m"]) == 2
    assert "unknown method 'best-of-m'" in one_error_line(capsys)
    assert rlhf_lab(["align", "--method"]) == 2
    assert "--method needs a value" in one_error_line(capsys)


def test_align_best_of_n_help_lists_its_keys(capsys):
    assert rlhf_lab(["align", "--method", "best-of-n", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("--n", "--seed", "--eval_prompts", "--eval_num_prompts", "--eval_max_new_tokens",
                "--eval_temperature", "--eval_top_p", "--sft_model_name_or_path", "--reward_model_name_or_path"):
        assert key in out, key
    assert "rlhf-lab align --method best-of-n" in out
