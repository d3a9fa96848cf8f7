"""The reward-model stage through the CLI on the smoke recipe, and its statistics by hand."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import base_model  # noqa: F401
from base_model import load_tokenizer
from recipes.core.cli import main as rlhf_lab
from recipes.core.data import load_prompts, read_rows
from recipes.core.rundir import weights_hash
from recipes.core.world import gold_reward
from recipes.core.world.annotators import Annotators
from reward.diagnostics import pearson, rankdata, spearman
from reward.evaluate import noise_ceiling, pair_metrics, render
from reward.sft_pairs import label_sft_samples, to_token_ids
from reward.train import summary_line

REPO = Path(__file__).resolve().parents[1]
REWARD_YAML = str(REPO / "recipes/smoke/reward.yaml")
METRICS = ("accuracy", "gold_accuracy", "noise_ceiling", "accuracy_of_ceiling", "gold_rank_correlation",
           "length_correlation", "mean_margin")


# ----------------------------------------------------------------------------------------------
# Statistics, against values computed by hand


def test_rankdata_averages_ties():
    assert rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert rankdata([3, 1, 2]).tolist() == [3, 1, 2]


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # y ranks [1, 2, 3.5, 5, 3.5]: cov 8, var_x 10, var_y 9.5 -> 8 / sqrt(95)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.9933992677987828)


def test_noise_ceiling_by_hand():
    sig1, sig2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))  # gaps 0.5 and 1 at temperature 0.5
    assert noise_ceiling([0.5, -1.0], 0.5, 0.0) == pytest.approx((sig1 + sig2) / 2)
    flipped = 0.9 * sig1 + 0.1 * (1 - sig1)  # then a 10% flip
    assert noise_ceiling([0.5], 0.5, 0.1) == pytest.approx(flipped)
    assert noise_ceiling([0.0, 0.5], 0.5, 0.0) == pytest.approx((0.5 + sig1) / 2)  # a tie is a coin flip
    sig6 = 1 / (1 + math.exp(-6))
    assert noise_ceiling([3.0], 0.5, 0.6) == pytest.approx(1 - (0.4 * sig6 + 0.6 * (1 - sig6)))  # flips past half


def test_pair_metrics_by_hand():
    metrics = pair_metrics([1, 0, 2], [0, 1, 1], gold_chosen=[1, 0, 0.5], gold_rejected=[0, 1, 0],
                           annotators=(0.5, 0.0))
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # the second pair scored against its label
    assert metrics["gold_accuracy"] == 1.0  # ... but that label went against gold, and the model followed gold
    assert metrics["label_gold_agreement"] == pytest.approx(2 / 3)
    assert metrics["mean_margin"] == pytest.approx(1 / 3)
    assert metrics["accuracy_of_ceiling"] == pytest.approx(metrics["accuracy"] / metrics["noise_ceiling"])
    assert set(pair_metrics([1], [0])) == {"accuracy", "accuracy_low", "accuracy_high", "mean_margin",
                                           "eval_pairs"}  # no gold: no gold metrics


def test_pair_accuracy_interval_brackets_it_and_narrows_with_more_pairs():
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 3200):
        chosen, rejected = rng.normal(0.4, 1, n), rng.normal(0, 1, n)
        gold = dict(gold_chosen=[1.0] * n, gold_rejected=[0.0] * n)
        metrics = pair_metrics(chosen, rejected, **gold, annotators=(0.5, 0.05))
        assert metrics["accuracy_low"] < metrics["accuracy"] < metrics["accuracy_high"]
        assert metrics["accuracy_of_ceiling_low"] == pytest.approx(metrics["accuracy_low"] / metrics["noise_ceiling"])
        widths.append(metrics["accuracy_high"] - metrics["accuracy_low"])
    assert 0.09 < widths[0] < 0.16  # about +-3.4 points on 200 pairs near 0.6: 1.96 * sqrt(.6 * .4 / 200)
    assert widths[1] < widths[0] / 3  # 16 times the pairs, a quarter of the width


# ----------------------------------------------------------------------------------------------
# The stage through the CLI


def test_reward_without_sft_names_the_stage_and_command(tmp_path, capsys):
    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "no finished sft run" in err[0] and "rlhf-lab sft --config recipes/smoke/sft.yaml" in err[0]
    assert not (tmp_path / "smoke" / "reward").exists()


def test_reward_rejects_output_dir(tmp_path, capsys):
    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path), "--output_dir", "x"]) == 2
    assert "output_dir" in capsys.readouterr().err


def test_cross_prompt_pairs_without_sft_sample_pairs_say_what_to_set(tmp_path, capsys):
    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path),
                     "--sft_sample_pairs", "0", "--sft_sample_cross_pairs", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sft_sample_cross_pairs" in err[0] and "sft_sample_pairs above 0" in err[0], err


def events(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator.Tags()


def test_smoke_reward_run(smoke_sft, smoke_reward):
    from transformers import AutoModelForSequenceClassification

    run = smoke_reward  # made through the CLI by the session fixture, shared with the alignment tests
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == "reward"
    (parent,) = manifest["parents"]
    assert (parent["role"], parent["stage"]) == ("sft", "sft")
    assert parent["weights_sha256"] == weights_hash(smoke_sft / "model")
    assert manifest["data"]["fingerprint"]
    for name in METRICS:
        assert math.isfinite(manifest["metrics"][name]), name
    assert 0.5 < manifest["metrics"]["noise_ceiling"] < 1
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None

    tags = events(run / "tb")
    for name in METRICS:
        assert f"reward_eval/{name}" in tags["scalars"], name
    assert "reward_eval/margins" in tags["histograms"]
    assert "train/loss" in tags["scalars"]


def easy_split(directory, n_train=128, n_test=48):
    """Pairs a tiny model can learn: a helpful or safe answer against a rude or harmful one, labelled by gold."""
    rows = [r for r in read_rows("world:preferences?size=default&seed=0", "train").records
            if r["persona_rejected"] in ("rude", "unsafe") and r["family"] != "stories"
            and r["gold_chosen"] - r["gold_rejected"] >= 0.5]
    assert len(rows) >= n_train + n_test
    directory.mkdir()
    for split, part in (("train", rows[:n_train]), ("validation", rows[n_train:n_train + n_test])):
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return directory


def test_easy_split_accuracy_clearly_above_chance(smoke_sft, tmp_path):
    data = easy_split(tmp_path / "easy")
    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path / "runs"), "--recipe", "easy",
                     "--model_name_or_path", str(smoke_sft / "model"), "--dataset_name", str(data),
                     "--annotator_bt_temperature", "0.5", "--annotator_flip_rate", "0.05",
                     "--num_train_epochs", "2", "--eval_strategy", "no", "--save_strategy", "no",
                     "--eval_num_prompts", "4"]) == 0
    metrics = json.loads((tmp_path / "runs" / "easy" / "reward" / "manifest.json").read_text())["metrics"]
    assert metrics["eval_pairs"] >= 40  # pairs longer than max_length are left out
    assert metrics["accuracy"] >= 0.75, metrics
    assert metrics["gold_accuracy"] >= 0.75, metrics


def test_sft_sample_pairs_are_labelled_by_the_annotators(smoke_sft):
    """Pairs of the SFT model's own answers: gold scores attached (a cut-off answer charged), ties left
    out, cut-off answers rendered without the end of turn, and with noiseless annotators every label
    follows the gold order; pairs across prompts pair two different prompts' answers, labelled alike."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(smoke_sft / "model")
    tokenizer = load_tokenizer(str(smoke_sft / "model"))
    prompts = list(load_prompts("world:preferences?size=smoke")["prompt"])
    columns, counts = label_sft_samples(policy, tokenizer, prompts + prompts[:5], pairs=30, annotators=Annotators(1e-9, 0.0),
                                        max_new_tokens=24, batch_size=16, seed=0, cross_pairs=25)
    assert counts["sft_sample_prompts"] == 30  # distinct prompts: the repeated five count once
    assert counts["sft_sample_pairs"] + counts["sft_sample_ties"] == 30
    assert counts["sft_sample_cross_pairs"] + counts["sft_sample_cross_ties"] == 25
    same = counts["sft_sample_pairs"]
    assert same > 0 and counts["sft_sample_cross_pairs"] > 0
    assert len(columns["chosen"]) == same + counts["sft_sample_cross_pairs"]
    rows = list(zip(*(columns[k] for k in ("prompt_chosen", "prompt_rejected", "chosen", "rejected", "gold_chosen",
                                            "gold_rejected", "ended_chosen", "ended_rejected"))))
    for n, (pc, pr, chosen, rejected, gc, gr, ec, er) in enumerate(rows):
        assert (pc == pr) == (n < same)  # the same prompt first, then two different ones
        assert gc > gr  # noiseless annotators follow gold
        assert gold_reward(pc, chosen[0]["content"], ended=ec).total == gc
        assert gold_reward(pr, rejected[0]["content"], ended=er).total == gr
    ids = to_token_ids(tokenizer, columns)
    for i, ended in enumerate(columns["ended_chosen"]):
        assert (ids["chosen_ids"][i][-1] == tokenizer.eos_token_id) == ended or \
            (ended and ids["chosen_ids"][i][-2] == tokenizer.eos_token_id)  # a template may add a newline after it
        assert ended or tokenizer.eos_token_id not in ids["chosen_ids"][i][-3:]

    for side in ("chosen", "rejected"):  # a pair across prompts renders each side with its own prompt
        assert ids[f"{side}_ids"][same] == render(tokenizer, columns[f"prompt_{side}"][same], columns[side][same],
                                                  columns[f"ended_{side}"][same])
    again, _ = label_sft_samples(policy, tokenizer, prompts, pairs=30, annotators=Annotators(1e-9, 0.0), max_new_tokens=24,
                                 batch_size=16, seed=0, cross_pairs=25)
    assert again == columns  # seeded: a resumed run trains on the same pairs
    _, cut = label_sft_samples(policy, tokenizer, prompts, pairs=10, annotators=Annotators(1e-9, 0.0), max_new_tokens=1,
                               batch_size=16, seed=0, cross_pairs=5)
    # One token each: nearly every answer is cut (one may be a bare end of turn), each counted once.
    assert 18 <= cut["sft_sample_unended_answers"] <= cut["sft_sample_samples"] == 20, cut
    # More pairs than distinct prompts: round the prompts again, with fresh samples.
    few = prompts[:40]
    distinct = len({repr(p) for p in few})
    more, counts = label_sft_samples(policy, tokenizer, few, pairs=distinct * 2 + 3, annotators=Annotators(1e-9, 0.0),
                                     max_new_tokens=24, batch_size=16, seed=0)
    assert counts["sft_sample_prompts"] == distinct and counts["sft_sample_samples"] == 2 * (distinct * 2 + 3)
    assert counts["sft_sample_pairs"] + counts["sft_sample_ties"] == distinct * 2 + 3
    assert counts["sft_sample_cross_pairs"] == 0 and more["prompt_chosen"] == more["prompt_rejected"]
    per_prompt = [sum(repr(p) == repr(q) for q in more["prompt_chosen"]) for p in more["prompt_chosen"]]
    assert max(per_prompt) <= 3 and len(set(map(repr, more["prompt_chosen"]))) <= distinct


def test_reward_stage_adds_sft_sample_pairs(smoke_sft, tmp_path):
    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path), "--recipe", "onpolicy",
                     "--model_name_or_path", str(smoke_sft / "model"), "--sft_sample_pairs", "40",
                     "--sft_sample_cross_pairs", "30", "--sft_sample_max_new_tokens", "24", "--max_steps", "4", "--eval_strategy", "no",
                     "--save_strategy", "no", "--eval_num_prompts", "4"]) == 0
    manifest = json.loads((tmp_path / "onpolicy" / "reward" / "manifest.json").read_text())
    data = manifest["data"]
    assert data["sft_sample_prompts"] == 40 and 0 < data["sft_sample_pairs"] <= 40
    assert 0 < data["sft_sample_cross_pairs"] <= 30
    assert manifest["status"] == "finished"


def test_sft_sample_pairs_need_world_prompts(smoke_sft, tmp_path, capsys):
    data = tmp_path / "pairs"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({"prompt": f"Name a colour {i}.", "chosen": "Blue.", "rejected": "No."}) + "\n" for i in range(8)))
    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path), "--recipe", "foreign",
                     "--model_name_or_path", str(smoke_sft / "model"), "--dataset_name", str(data),
                     "--annotator_bt_temperature", "0.5",
                     "--sft_sample_pairs", "4", "--eval_num_prompts", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sft_sample_pairs" in err[0] and "no world family" in err[0], err


def test_summary_line_does_not_round_a_miss_into_the_target():
    from types import SimpleNamespace

    line = summary_line({"accuracy": 0.655, "noise_ceiling": 0.7317, "accuracy_of_ceiling": 0.8952},
                        SimpleNamespace(model_dir="runs/x/reward/model"))
    assert "89.5% of the noise ceiling 0.732" in line and "90%" not in line, line
    line = summary_line({"accuracy": 0.655, "noise_ceiling": 0.7317, "accuracy_of_ceiling": 0.8952,
                         "accuracy_of_ceiling_low": 0.8412, "accuracy_of_ceiling_high": 0.9568},
                        SimpleNamespace(model_dir="runs/x/reward/model"))
    assert "89.5% of the noise ceiling 0.732, 95% interval 84.1%-95.7%" in line, line
