"""GRPO and RLOO through the CLI on the smoke recipe: a few steps each, on top of the session's smoke
SFT and reward runs. GRPO trains on the proxy (full fine-tuning); RLOO on the gold reward with LoRA."""

import json

import pytest
import torch

import base_model  # noqa: F401
from alignment.common import load_reward_model
from alignment.grpo import GRPOStageConfig
from alignment.rewards import proxy_reward_func
from alignment.rloo import RLOOStageConfig
from recipes.core.cli import main as rlhf_lab
from recipes.core.config import config_dict, parse_config, to_yaml
from reward import score
from tests.conftest import REPO

GRPO = str(REPO / "recipes/smoke/align-grpo.yaml")
RLOO = str(REPO / "recipes/smoke/align-rloo.yaml")
EVAL_KEYS = ("gold_reward", "gold_reward_low", "gold_reward_high", "win_rate", "tie_rate", "proxy_reward", "kl", "kl_k3",
             "length", "end_of_turn_rate")


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


def events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def state_dict(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).state_dict()


@pytest.fixture(scope="module")
def grpo_run(smoke_runs, smoke_reward):
    assert rlhf_lab(["align", "--method", "grpo", "--config", GRPO, "--runs_root", str(smoke_runs)]) == 0
    return smoke_runs / "smoke" / "align-grpo"


@pytest.fixture(scope="module")
def rloo_run(smoke_runs, smoke_reward):
    assert rlhf_lab(["align", "--method", "rloo", "--config", RLOO, "--runs_root", str(smoke_runs),
                     "--reward_funcs", "gold", "--use_peft", "true", "--lora_r", "4"]) == 0
    return smoke_runs / "smoke" / "align-rloo"


def test_grpo_changes_the_sft_parameters(grpo_run, smoke_sft):
    before, after = state_dict(smoke_sft / "model"), state_dict(grpo_run / "model")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_manifest_records_parents_and_the_evaluation(method, grpo_run, rloo_run, smoke_sft, smoke_reward):
    run = {"grpo": grpo_run, "rloo": rloo_run}[method]
    m = manifest(run)
    assert m["status"] == "finished" and m["stage"] == f"align-{method}"
    assert [p["role"] for p in m["parents"]] == ["sft", "reward"] and m["parents"][0]["stage"] == "sft"
    assert m["parents"][0]["weights_sha256"] == manifest(smoke_reward)["parents"][0]["weights_sha256"]  # same SFT
    assert m["data"]["reward_funcs"] == (["proxy"] if method == "grpo" else ["gold"])
    assert len(m["parents"][1]["weights_sha256"]) == 64
    metrics = m["metrics"]
    for key in EVAL_KEYS:
        assert isinstance(metrics[key], float), key
        assert isinstance(metrics[f"sft_{key}"], float), key
    assert metrics["gold_reward_low"] <= metrics["gold_reward"] <= metrics["gold_reward_high"]
    assert any(k.startswith("gold/") for k in metrics)  # per family
    assert metrics["sft_win_rate"] == 0.5 and metrics["sft_kl"] == 0.0
    assert metrics["steps"] == 2 and metrics["evaluations"] == 3
    assert isinstance(metrics["train_reward"], float)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_tensorboard_holds_the_evaluation_and_trl_rewards(method, grpo_run, rloo_run):
    run = {"grpo": grpo_run, "rloo": rloo_run}[method]
    tb = events(run)
    scalars = tb.Tags()["scalars"]
    assert [e.step for e in tb.Scalars("gold_eval/gold_reward")] == [0, 1, 2]
    for key in ("win_rate", "kl", "proxy_reward"):
        assert len(tb.Scalars(f"gold_eval/{key}")) == 3
    assert tb.Scalars("gold_eval/gold_reward")[-1].value == pytest.approx(manifest(run)["metrics"]["gold_reward"])
    assert "train/reward" in scalars
    trained_on = "proxy_reward" if method == "grpo" else "gold_reward"
    assert f"train/rewards/{trained_on}/mean" in scalars
    assert not any(t.startswith("train/rewards/") and trained_on not in t for t in scalars)
    text = next(t for t in tb.Tags()["tensors"] if t.startswith("gold_eval/samples"))
    table = tb.Tensors(text)[-1].tensor_proto.string_val[0].decode()
    assert "| family | prompt | answer | gold | proxy |" in table


def test_every_method_is_evaluated_on_the_same_prompts(grpo_run, rloo_run):
    def prompts(run):
        tb = events(run)
        text = next(t for t in tb.Tags()["tensors"] if t.startswith("gold_eval/samples"))
        table = tb.Tensors(text)[0].tensor_proto.string_val[0].decode()
        return [row.split(" | ")[1] for row in table.splitlines()[2:]]

    assert prompts(grpo_run) == prompts(rloo_run) and len(prompts(grpo_run)) == 10
    assert manifest(grpo_run)["metrics"]["sft_gold_reward"] == manifest(rloo_run)["metrics"]["sft_gold_reward"]


def test_gold_reward_run_trains_on_the_gold_of_its_completions(rloo_run):
    """With --reward_funcs gold, TRL's logged reward is the gold reward: it lies in the gold range and it is
    what the per-function scalar holds (the only reward function)."""
    tb = events(rloo_run)
    rewards = [e.value for e in tb.Scalars("train/reward")]
    gold = [e.value for e in tb.Scalars("train/rewards/gold_reward/mean")]
    assert rewards == pytest.approx(gold)
    assert all(-5.0 <= r <= 1.0 for r in rewards)  # task in [-1, 1], four penalties down to -1 each


def test_lora_run_saves_a_merged_model(rloo_run, smoke_sft):
    assert not (rloo_run / "model" / "adapter_config.json").exists()
    after = state_dict(rloo_run / "model")
    assert after.keys() == state_dict(smoke_sft / "model").keys()
    assert not any("lora" in k for k in after)
    assert manifest(rloo_run)["metrics"]["trainable_parameters"] < sum(v.numel() for v in after.values()) / 2


def test_proxy_reward_function_matches_score_and_charges_a_cut_off_answer(smoke_reward):
    model = load_reward_model(smoke_reward / "model")
    tokenizer = base_model.load_tokenizer(str(smoke_reward / "model"))
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    answer = "2 + 3 is 5."
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    reward_func = proxy_reward_func(model, tokenizer, batch_size=32, missing_eos_penalty=None)
    conversational = reward_func(prompts=[prompt, prompt], completions=[[{"role": "assistant", "content": answer}]] * 2,
                                 completion_ids=[ids + [tokenizer.eos_token_id], ids], family=["math", "math"])
    plain = reward_func(prompts=["What is 2 + 3?"] * 2, completions=[answer] * 2,
                        completion_ids=[ids + [tokenizer.eos_token_id], ids])
    expected = score(model, tokenizer, [prompt, prompt], [answer, answer], ended=[True, False])
    assert conversational == pytest.approx(expected) and plain == pytest.approx(expected)
    assert expected[0] != pytest.approx(expected[1])  # the cut-off answer is scored without its end of turn


def test_config_round_trips_through_config_yaml(tmp_path):
    for cls, path in ((GRPOStageConfig, GRPO), (RLOOStageConfig, RLOO)):
        config = parse_config(cls, ["--config", path, "--reward_funcs", "gold"], "align")
        assert config.activation_checkpointing is False and config.bf16 is False
        assert config.report_to == ["tensorboard"] and config.reward_funcs == ["gold"]
        saved = tmp_path / "config.yaml"
        saved.write_text(to_yaml(config))
        assert config_dict(parse_config(cls, ["--config", str(saved)], "align")) == config_dict(config)


@pytest.mark.parametrize("flags, names", [
    (["--per_device_train_batch_size", "6", "--steps_per_generation", "1"],
     ["'per_device_train_batch_size' (6)", "'steps_per_generation' (1)", "'num_generations' (4)"]),
    (["--reward_funcs", "human"], ["'reward_funcs'", "'human'"]),
    (["--output_dir", "elsewhere"], ["'output_dir'"]),
])
def test_bad_keys_stop_with_one_line(flags, names, tmp_path, capsys):
    assert rlhf_lab(["align", "--method", "grpo", "--config", GRPO, "--runs_root", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(name in err[0] for name in names), err
    assert not (tmp_path / "smoke").exists()


def test_completions_longer_than_the_context_are_refused(smoke_runs, smoke_reward, capsys):
    assert rlhf_lab(["align", "--method", "grpo", "--config", GRPO, "--runs_root", str(smoke_runs),
                     "--recipe", "smoke-too-long", "--sft_model_name_or_path", str(smoke_runs / "smoke/sft/model"),
                     "--reward_model_name_or_path", str(smoke_reward / "model"),
                     "--max_completion_length", "4096"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'max_completion_length' (4096)" in err[0] and "context" in err[0]
    assert not (smoke_runs / "smoke-too-long").exists()
