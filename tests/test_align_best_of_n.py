"""Best-of-n through the CLI on the smoke recipe: the one evaluation, its KL (estimate and bound), TensorBoard,
what model/ holds, and the errors a user meets."""

import json
import math
from pathlib import Path

import pytest
import yaml

import base_model  # noqa: F401
from alignment.best_of_n import BestOfNConfig, best_of
from alignment.common import build_evaluator, load_policy, load_reward_model
from recipes.core.cli import main as rlhf_lab
from recipes.core.config import parse_config
from recipes.core.rundir import weights_hash

REPO = Path(__file__).resolve().parents[1]
BON_YAML = str(REPO / "recipes/smoke/align-best-of-n.yaml")
EVAL_METRICS = ("gold_reward", "gold_reward_low", "gold_reward_high", "gold_gain", "gold_gain_low", "gold_gain_high",
                "win_rate", "win_rate_low", "win_rate_high", "tie_rate", "proxy_reward", "kl", "length",
                "end_of_turn_rate")


@pytest.fixture(scope="module")
def bon_run(smoke_reward, smoke_runs) -> Path:
    assert rlhf_lab(["align", "--method", "best-of-n", "--config", BON_YAML, "--runs_root", str(smoke_runs)]) == 0
    return smoke_runs / "smoke" / "align-best-of-n"


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_best_of_picks_the_first_highest():
    assert best_of([[0.1, 0.5, 0.2], [1.0, 1.0, 0.0], [-3.0], [-1.0, -0.5, -0.5]]) == [1, 0, 0, 1]


def test_the_run_finishes_with_the_evaluation_and_its_kl_estimate_under_the_bound(bon_run):
    m = manifest(bon_run)
    assert m["status"] == "finished" and m["stage"] == "align-best-of-n" and [p["role"] for p in m["parents"]] == ["sft", "reward"]
    assert m["parents"][0]["stage"] == "sft"
    metrics = m["metrics"]
    for key in EVAL_METRICS:
        assert math.isfinite(metrics[key]), key
    assert metrics["n"] == 4 and metrics["kl_bound"] == pytest.approx(math.log(4) - 3 / 4)
    assert 0.0 < metrics["kl"] <= metrics["kl_bound"] + 1e-9 and "kl_k3" not in metrics
    assert "estimated" in m["data"]["kl"] and m["data"]["n"] == 4
    assert m["parents"][1]["weights_sha256"]
    assert metrics["gold_reward_low"] <= metrics["gold_reward"] <= metrics["gold_reward_high"]
    assert metrics["gold_gain_low"] <= metrics["gold_gain"] <= metrics["gold_gain_high"]
    assert metrics["gold_gain"] == pytest.approx(metrics["gold_reward"] - metrics["sft_gold_reward"])
    assert metrics["win_rate_low"] <= metrics["win_rate"] <= metrics["win_rate_high"]
    assert yaml.safe_load((bon_run / "config.yaml").read_text())["n"] == 4


def test_the_chosen_answers_beat_plain_sft_samples_on_the_proxy(bon_run, smoke_sft, smoke_reward):
    metrics = manifest(bon_run)["metrics"]
    # the choice maximised the proxy less missing_eos_penalty; the evaluation reports the plain proxy
    assert metrics["proxy_reward"] >= metrics["best_proxy_reward"] - 1e-4
    # The plain SFT samples, drawn again by an evaluator built independently from the same config.
    config = parse_config(BestOfNConfig, ["--config", BON_YAML], "align --method best-of-n")
    model, tokenizer = load_policy(smoke_sft / "model")
    evaluator = build_evaluator(config, model, tokenizer, load_reward_model(smoke_reward / "model"))
    sft = evaluator.sft_metrics()
    assert sft["proxy_reward"] == pytest.approx(metrics["sft_proxy_reward"], abs=1e-4)
    assert sft["gold_reward"] == pytest.approx(metrics["sft_gold_reward"])
    assert metrics["proxy_reward"] >= sft["proxy_reward"] - 1e-4


def test_best_of_one_is_the_sft_model(smoke_sft, smoke_reward, tmp_path):
    """n=1 is one more SFT sample, drawn apart from the evaluator's baseline: KL 0, and a gain over SFT whose
    interval holds zero. Parents given as paths."""
    assert rlhf_lab(["align", "--method", "best-of-n", "--config", BON_YAML, "--runs_root", str(tmp_path), "--n", "1",
                     "--sft_model_name_or_path", str(smoke_sft / "model"),
                     "--reward_model_name_or_path", str(smoke_reward / "model")]) == 0
    m = manifest(tmp_path / "smoke" / "align-best-of-n")
    metrics = m["metrics"]
    assert metrics["kl"] == metrics["kl_bound"] == 0.0
    assert metrics["gold_gain_low"] <= 0.0 <= metrics["gold_gain_high"]
    assert metrics["tie_rate"] < 1.0  # an independent draw, not the baseline's own answers
    sft = m["parents"][0]
    assert sft["run"] is None and sft["model"] == str(smoke_sft / "model") and len(sft["weights_sha256"]) == 64


def test_tensorboard_holds_the_gold_eval_scalars_and_samples(bon_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(bon_run / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    metrics = manifest(bon_run)["metrics"]
    for key in EVAL_METRICS + ("kl_bound",):
        (event,) = events.Scalars(f"gold_eval/{key}")
        assert event.step == 0 and event.value == pytest.approx(metrics[key], rel=1e-5, abs=1e-6)
    table = events.Tensors("gold_eval/samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| family | prompt | answer | gold | proxy |")


def test_model_holds_the_sft_model_the_reward_model_and_the_recipe(bon_run, smoke_sft, smoke_reward):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model_dir = bon_run / "model"
    spec = json.loads((model_dir / "best_of_n.json").read_text())
    assert spec["method"] == "best-of-n" and spec["n"] == 4 and spec["reward_model"] == "reward_model"
    assert spec["sampling"]["max_new_tokens"] == 16 and spec["sampling"]["temperature"] == 1.0
    assert weights_hash(model_dir) == weights_hash(smoke_sft / "model") == spec["sft_weights_sha256"]
    assert weights_hash(model_dir / "reward_model") == weights_hash(smoke_reward / "model") \
        == spec["reward_weights_sha256"]
    AutoModelForCausalLM.from_pretrained(str(model_dir))
    AutoModelForSequenceClassification.from_pretrained(str(model_dir / "reward_model"), num_labels=1)
    base_model.load_tokenizer(str(model_dir))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_finished_run_is_not_replaced_without_overwrite(bon_run, smoke_runs, capsys):
    before = (bon_run / "manifest.json").read_text()
    assert rlhf_lab(["align", "--method", "best-of-n", "--config", BON_YAML, "--runs_root", str(smoke_runs)]) == 2
    assert "already holds a finished align-best-of-n run" in one_error_line(capsys)
    assert (bon_run / "manifest.json").read_text() == before


def test_without_a_reward_run_it_names_the_reward_stage(smoke_sft, tmp_path, capsys):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "sft").symlink_to(smoke_sft)  # a finished SFT run, no reward run
    assert rlhf_lab(["align", "--method", "best-of-n", "--config", BON_YAML, "--runs_root", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "no finished reward run" in line
    assert f"rlhf-lab reward --config recipes/smoke/reward.yaml --runs_root {tmp_path}" in line
    assert not (tmp_path / "smoke" / "align-best-of-n").exists()


def test_n_must_be_positive(tmp_path, capsys):
    assert rlhf_lab(["align", "--method", "best-of-n", "--config", BON_YAML, "--runs_root", str(tmp_path),
                     "--n", "0"]) == 2
    assert "key 'n' must be a positive integer" in one_error_line(capsys)
