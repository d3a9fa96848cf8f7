"""PPO through the CLI on the smoke recipe (`rlhf-lab align --method ppo`), on top of the session's
smoke SFT and reward runs: the policy trains, the manifest holds the evaluation and the PPO numbers,
TensorBoard holds the ppo/ scalars and the gold evaluation at several steps, and the value model
starts as the reward model."""

import json
from pathlib import Path

import pytest
import torch

from alignment.common import load_policy, load_reward_model
from alignment.ppo_trainer import token_values
from recipes.core.cli import main as rlhf_lab
from reward.evaluate import render

REPO = Path(__file__).resolve().parents[1]
PPO_YAML = str(REPO / "recipes/smoke/align-ppo.yaml")
PPO_SCALARS = ("reward", "kl", "kl_coef", "entropy", "clip_fraction", "approx_kl", "policy_loss", "value_loss",
               "explained_variance", "missing_eos_rate", "length")
EVALUATION = ("gold_reward", "gold_reward_low", "gold_reward_high", "win_rate", "tie_rate", "proxy_reward", "kl", "kl_k3",
              "length")


@pytest.fixture(scope="module")
def ppo_run(smoke_reward, smoke_runs) -> Path:
    assert rlhf_lab(["align", "--method", "ppo", "--config", PPO_YAML, "--runs_root", str(smoke_runs)]) == 0
    return smoke_runs / "smoke" / "align-ppo"


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next(model_dir.glob("*.safetensors"))))


def test_policy_parameters_change(ppo_run, smoke_sft):
    before, after = weights(smoke_sft / "model"), weights(ppo_run / "model")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_manifest_holds_the_evaluation_and_the_ppo_numbers(ppo_run):
    manifest = json.loads((ppo_run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["stage"] == "align-ppo"
    assert [(p["role"], p["stage"]) for p in manifest["parents"]] == [("sft", "sft"), ("reward", "reward")]
    metrics = manifest["metrics"]
    for key in EVALUATION + tuple(f"sft_{k}" for k in ("gold_reward", "proxy_reward")):
        assert key in metrics, key
    assert metrics["gold_reward_low"] <= metrics["gold_reward"] <= metrics["gold_reward_high"]
    for key in PPO_SCALARS:
        assert f"train_{key}" in metrics, key
    assert metrics["train_rollouts"] == 3 and metrics["evaluations"] == 4  # before, after each of 3 rollouts
    # Rollout and update compute the same log-probabilities: at the first minibatch the ratio is 1.
    assert metrics["train_first_minibatch_ratio_deviation"] <= 1e-6
    assert (ppo_run / "checkpoints" / "checkpoint-2" / "state.pt").is_file()  # save_steps: 2


def test_tensorboard_holds_ppo_scalars_and_the_gold_evaluation(ppo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(ppo_run / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for key in PPO_SCALARS:
        assert [e.step for e in events.Scalars(f"ppo/{key}")] == [1, 2, 3], key
    for key in ("gold_reward", "win_rate", "kl", "proxy_reward"):
        assert [e.step for e in events.Scalars(f"gold_eval/{key}")] == [0, 1, 2, 3], key
    text = [t for t in tags["tensors"] if t.startswith("gold_eval/samples")]
    assert text and len(events.Tensors(text[0])) >= 2
    first = events.Tensors(text[0])[0].tensor_proto.string_val[0].decode()
    assert "| family | prompt | answer | gold | proxy |" in first


@pytest.mark.parametrize("bf16, temperature", [("false", 0.7), ("true", 1.0), ("true", 0.7)],
                         ids=["fp32-t0.7", "bf16-t1.0", "bf16-t0.7"])
def test_first_minibatch_ratio_is_one_under_bf16_and_any_temperature(smoke_reward, smoke_runs, bf16, temperature):
    """The rollout's old log-probabilities and values and the update's new ones come from the same
    forward pass in the same precision (bf16 autocast included, on the CPU here) at the sampling
    temperature, so before the first optimizer step the ratio is exactly 1. (fp32 at temperature 1 is
    ppo_run's.) The old code computed the rollout outside autocast: 0.02 under bf16, against a clip
    range of 0.2."""
    run_name = f"align-ppo-ratio-{'bf16' if bf16 == 'true' else 'fp32'}-t{temperature}"
    assert rlhf_lab(["align", "--method", "ppo", "--config", PPO_YAML, "--runs_root", str(smoke_runs),
                     "--run_name", run_name, "--bf16", bf16, "--temperature", str(temperature), "--max_steps", "1",
                     "--num_ppo_epochs", "1", "--response_length", "8", "--eval_num_prompts", "2",
                     "--eval_max_new_tokens", "4", "--save_steps", "0"]) == 0
    metrics = json.loads((smoke_runs / "smoke" / run_name / "manifest.json").read_text())["metrics"]
    assert metrics["train_rollouts"] == 1
    assert metrics["train_first_minibatch_ratio_deviation"] <= 1e-6


def test_value_model_starts_as_the_reward_model(smoke_reward):
    reward_model = load_reward_model(smoke_reward / "model")
    value_model = load_reward_model(smoke_reward / "model")
    _, tokenizer = load_policy(smoke_reward.parent / "sft" / "model")
    rows = [render(tokenizer, "What is 2 + 3?", "5"), render(tokenizer, "Say hello.", "Hello there, friend!", False)]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # left-padded, as in a rollout
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        values = token_values(value_model, input_ids, attention_mask)
        scores = reward_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    assert values.shape == input_ids.shape
    assert torch.allclose(values[:, -1], scores, atol=1e-5)


def test_bad_keys_are_refused_by_name(smoke_runs, capsys):
    for flags, name in ((["--output_dir", "x"], "output_dir"), (["--kl_estimator", "k2"], "kl_estimator"),
                        (["--num_mini_batches", "0"], "num_mini_batches")):
        assert rlhf_lab(["align", "--method", "ppo", "--config", PPO_YAML, "--runs_root", str(smoke_runs),
                         "--recipe", "ppo-bad", *flags]) == 2
        assert name in capsys.readouterr().err


def test_resume_from_the_last_checkpoint_repeats_the_uninterrupted_run(ppo_run, smoke_runs):
    """Last in this file: it rewinds ppo_run to its rollout-2 checkpoint and resumes it."""
    manifest = json.loads((ppo_run / "manifest.json").read_text())
    finished_weights = weights(ppo_run / "model")
    manifest["status"] = "running"  # as if killed during rollout 3
    (ppo_run / "manifest.json").write_text(json.dumps(manifest))
    import shutil

    shutil.rmtree(ppo_run / "model")
    assert rlhf_lab(["align", "--method", "ppo", "--config", PPO_YAML, "--runs_root", str(smoke_runs),
                     "--resume"]) == 0
    resumed = json.loads((ppo_run / "manifest.json").read_text())
    assert resumed["status"] == "finished" and len(resumed["resumed"]) == 1
    for key in ("train_reward", "train_kl", "train_clip_fraction", "gold_reward"):
        assert resumed["metrics"][key] == pytest.approx(manifest["metrics"][key], abs=1e-6), key
    resumed_weights = weights(ppo_run / "model")
    assert all(torch.allclose(finished_weights[k], resumed_weights[k], atol=1e-6) for k in finished_weights)
