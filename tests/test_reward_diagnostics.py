"""Reward-model diagnostics (reward/diagnostics.py) against hand-computed cases, and the reward stage's ensemble."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr, zscore

from alignment.compare import Run, reward_model_notes
from base_model import load_tokenizer
from recipes.core.cli import main as rlhf_lab
from reward.diagnostics import auroc, bias_attribution, calibration, ensemble_diagnostics, reliability_figure

REPO = Path(__file__).resolve().parents[1]
REWARD_YAML = str(REPO / "recipes/smoke/reward.yaml")
L3 = math.log(3)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4


# ----------------------------------------------------------------------------------------------
# Bias attribution


def test_an_exact_linear_reward_is_attributed_exactly():
    gold = np.array([0.1, -0.4, 0.9, 0.3, -1.2, 0.5, 0.0, 0.7])
    length = np.array([12, 30, 8, 21, 45, 17, 26, 9], dtype=float)
    reward = 1.0 + 0.5 * gold + 0.03 * length
    metrics = bias_attribution(reward, gold, {"length": length, "flattery": [0.0] * 8})
    assert metrics["length_coefficient"] == pytest.approx(0.03)
    assert metrics["gold_coefficient"] == pytest.approx(0.5)
    assert metrics["length_partial_r2"] == pytest.approx(1.0) and metrics["gold_partial_r2"] == pytest.approx(1.0)
    assert metrics["bias_r2"] == pytest.approx(1.0)
    assert metrics["length_coefficient_se"] == pytest.approx(0.0, abs=1e-9)
    # No answer flatters: flattery cannot be told apart from the intercept.
    assert all(math.isnan(metrics[f"flattery_{k}"]) for k in ("coefficient", "coefficient_se", "partial_r2"))
    # Gold on length alone: cov(gold, length) / var(length).
    slope = np.cov(gold, length)[0, 1] / np.var(length, ddof=1)
    assert metrics["gold_length_slope"] == pytest.approx(slope)


def test_a_noisy_reward_matches_least_squares_and_the_t_statistic_identity():
    rng = np.random.default_rng(0)
    n = 200
    gold, length, flattery = rng.normal(size=n), rng.integers(5, 60, size=n).astype(float), rng.random(n) < 0.3
    reward = 0.8 * gold + 0.02 * length + 0.3 * flattery + rng.normal(scale=0.5, size=n)
    metrics = bias_attribution(reward, gold, {"length": length, "flattery": flattery.astype(float)})
    x = np.column_stack([np.ones(n), gold, length, flattery])
    coefficients, rss, *_ = np.linalg.lstsq(x, reward, rcond=None)
    se = np.sqrt(np.diag(rss[0] / (n - 4) * np.linalg.inv(x.T @ x)))
    for i, name in enumerate(("gold", "length", "flattery"), start=1):
        assert metrics[f"{name}_coefficient"] == pytest.approx(coefficients[i])
        assert metrics[f"{name}_coefficient_se"] == pytest.approx(se[i])
        t = coefficients[i] / se[i]  # partial R^2 = t^2 / (t^2 + residual degrees of freedom)
        assert metrics[f"{name}_partial_r2"] == pytest.approx(t * t / (t * t + n - 4))
    assert metrics["bias_r2"] == pytest.approx(1 - rss[0] / ((reward - reward.mean()) ** 2).sum())
    assert abs(metrics["length_coefficient"] - 0.02) < 3 * metrics["length_coefficient_se"]


# ----------------------------------------------------------------------------------------------
# Calibration


def test_calibration_by_hand():
    # P(chosen) = sigmoid(margin): 3/4, 3/4, 19/20, 1/2, 1/4; the pair with gold gap 0 is left out.
    # Outcomes (chosen gold-better): 1, 0, 1, -, 0. Bins of width 0.1:
    #   [0.7, 0.8): 2 pairs, mean P 0.75, observed 0.5 -> |0.5 - 0.75| = 0.25
    #   [0.9, 1.0]: 1 pair,  mean P 0.95, observed 1   -> 0.05
    #   [0.2, 0.3): 1 pair,  mean P 0.25, observed 0   -> 0.25
    # ECE = (2 * 0.25 + 0.05 + 0.25) / 4 = 0.2
    # Brier = ((0.75 - 1)^2 + 0.75^2 + (0.95 - 1)^2 + 0.25^2) / 4 = (0.0625 + 0.5625 + 0.0025 + 0.0625) / 4 = 0.1725
    metrics, table = calibration([L3, L3, math.log(19), 0.0, -L3], [1.0, -1.0, 0.5, 0.0, -2.0])
    assert metrics["ece"] == pytest.approx(0.2) and metrics["brier"] == pytest.approx(0.1725)
    assert [row["count"] for row in table] == [0, 0, 1, 0, 0, 0, 0, 2, 0, 1]
    assert table[7]["mean_predicted"] == pytest.approx(0.75) and table[7]["observed"] == 0.5
    assert table[0]["observed"] is None and (table[9]["low"], table[9]["high"]) == (0.9, 1.0)
    assert reliability_figure(table).axes  # draws without a display
    empty, _ = calibration([1.0], [0.0])  # no gold gap at all: nothing to be calibrated against
    assert math.isnan(empty["ece"]) and math.isnan(empty["brier"])


# ----------------------------------------------------------------------------------------------
# Ensembles


def test_auroc_by_hand():
    # Positives 0.35, 0.8 against negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both: 3 of 4.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts half
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_ensemble_diagnostics_by_hand():
    # Two members, six pairs, the last with no gold gap (left out). P(chosen) = sigmoid(margin).
    #   pair  gold  member A  member B   mean margin  ensemble  P_A, P_B     std (population)
    #   1     +     ln3       ln3        ln3          right     3/4, 3/4     0
    #   2     +     ln3       -ln3       0            wrong     3/4, 1/4     1/4
    #   3     +     ln3       ln3        ln3          right     3/4, 3/4     0
    #   4     +     -ln3      0          -ln3/2       wrong     1/4, 1/2     1/8
    #   5     -     ln3       ln3        ln3          wrong     3/4, 3/4     0
    margins = [[L3, L3, L3, -L3, L3, 5.0], [L3, -L3, L3, 0.0, L3, -5.0]]
    metrics = ensemble_diagnostics(margins, [1, 1, 1, 1, -1, 0])
    assert metrics["ensemble_members"] == 2
    assert metrics["ensemble_gold_accuracy"] == pytest.approx(2 / 5)
    assert metrics["ensemble_member_gold_accuracy"] == pytest.approx((3 / 5 + 2 / 5) / 2)  # A: 1,2,3; B: 1,3
    assert metrics["ensemble_disagreement"] == pytest.approx((0.25 + 0.125) / 5)
    # Errors disagree by 1/4, 1/8, 0; right answers by 0, 0: of the 6 (error, right) pairs 4 are above, 2 tie.
    assert metrics["ensemble_disagreement_error_auroc"] == pytest.approx(5 / 6)
    # Ranks of the disagreement 2, 5, 2, 4, 2 and of the error 1.5, 4, 1.5, 4, 4: covariance sum 5, sums of
    # squares 8 and 7.5 -> 5 / sqrt(60).
    assert metrics["ensemble_disagreement_error_spearman"] == pytest.approx(5 / math.sqrt(60))
    # Halves of two (the middle pair left out): least disagreeing pairs 1 and 3, most 4 and 2.
    assert metrics["ensemble_gold_accuracy_low_disagreement"] == 1.0
    assert metrics["ensemble_gold_accuracy_high_disagreement"] == 0.0


def test_ensemble_sample_disagreement():
    rng = np.random.default_rng(1)
    golds = rng.normal(size=50)
    same = ensemble_diagnostics([[1.0]], [1.0], [golds, 3 * golds + 2], golds)  # equal up to scale and shift
    assert same["ensemble_sample_disagreement"] == pytest.approx(0.0, abs=1e-12)
    rewards = np.stack([golds + rng.normal(scale=s, size=50) for s in (0.3, 0.6, 0.9)])
    metrics = ensemble_diagnostics([[1.0]] * 3, [1.0], rewards, golds)
    z = zscore(rewards, axis=1)
    spread, error = z.std(axis=0), np.abs(zscore(z.mean(axis=0)) - zscore(golds))
    assert metrics["ensemble_sample_disagreement"] == pytest.approx(spread.mean())
    assert metrics["ensemble_sample_disagreement_error_spearman"] == pytest.approx(spearmanr(spread, error).statistic)


# ----------------------------------------------------------------------------------------------
# The reward stage with an ensemble


def test_ensemble_seeds_must_differ_from_the_seed(tmp_path, capsys):
    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path),
                     "--ensemble_seeds", "1", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ensemble_seeds" in err[0], err


def test_reward_stage_trains_an_ensemble_and_writes_its_diagnostics(smoke_sft, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForSequenceClassification

    assert rlhf_lab(["reward", "--config", REWARD_YAML, "--runs_root", str(tmp_path), "--recipe", "ensemble",
                     "--model_name_or_path", str(smoke_sft / "model"), "--max_steps", "4", "--eval_strategy", "no",
                     "--save_strategy", "no", "--eval_num_prompts", "4", "--ensemble_seeds", "1"]) == 0
    run = tmp_path / "ensemble" / "reward"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    metrics = manifest["metrics"]
    for name in ("ece", "brier", "gold_coefficient", "length_coefficient", "length_coefficient_se",
                 "length_partial_r2", "bias_r2", "gold_length_slope", "ensemble_gold_accuracy",
                 "ensemble_member_gold_accuracy", "ensemble_disagreement", "ensemble_disagreement_error_auroc",
                 "ensemble_disagreement_error_spearman", "ensemble_sample_disagreement_error_spearman"):
        assert math.isfinite(metrics[name]), (name, metrics.get(name))
    assert metrics["ensemble_members"] == 2

    member_dir = run / "ensemble" / "seed-1"
    member = AutoModelForSequenceClassification.from_pretrained(member_dir)
    main = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert member.config.num_labels == 1 and load_tokenizer(str(member_dir)).pad_token_id is not None
    assert not np.allclose(member.score.weight.detach(), main.score.weight.detach())  # its own seed

    bins = json.loads((run / "calibration.json").read_text())["bins"]
    assert len(bins) == 10 and sum(b["count"] for b in bins) > 0
    assert (run / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accumulator = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"reward_eval/ece", "reward_eval/length_coefficient", "reward_eval/ensemble_gold_accuracy"} <= set(
        tags["scalars"])
    assert "reward_eval/reliability" in tags["images"]


def test_compare_shows_the_reward_models_diagnostics_and_dashes_for_what_it_lacks(tmp_path):
    (tmp_path / "reward").mkdir()
    manifest = tmp_path / "reward" / "manifest.json"
    run = Run("align-dpo", "dpo", 0, tmp_path, {}, "", reward={"role": "reward", "run": "/moved/runs/x/reward"})
    manifest.write_text(json.dumps({"status": "finished", "metrics": {"accuracy": 0.6}}))  # an older run
    older = reward_model_notes(tmp_path, [run])
    assert older == "Reward model (reward): accuracy 0.600, gold accuracy -, ECE against gold -.", older
    manifest.write_text(json.dumps({"status": "finished", "metrics": {
        "accuracy": 0.6, "gold_accuracy": 0.65, "ece": 0.04, "length_coefficient": 0.0031,
        "length_coefficient_se": 0.0012, "gold_length_slope": -0.001, "flattery_coefficient": math.nan, "ensemble_members": 3.0,
        "ensemble_gold_accuracy": 0.7, "ensemble_disagreement_error_auroc": 0.61}}))
    line = reward_model_notes(tmp_path, [run])
    assert "ECE against gold 0.040" in line and "length +0.0031 (SE 0.0012; gold's own -0.0010)" in line, line
    assert "for flattering - (SE -)" in line and "Ensemble of 3 seeds: gold accuracy 0.700 (members -)" in line, line
    assert "AUROC 0.61, Spearman -." in line, line
    manifest.write_text("{")  # unreadable, or a reward model given by path: nothing to say
    assert reward_model_notes(tmp_path, [run]) == ""
    assert reward_model_notes(tmp_path, [Run("align-dpo", "dpo", 0, tmp_path, {}, "", reward={"run": None})]) == ""
