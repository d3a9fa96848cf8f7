"""DPO and KTO through the CLI on the smoke recipe: training moves the weights, the run directory,
the one evaluation in the manifest and in TensorBoard, the same prompts for every method, IPO, LoRA,
and a missing parent stage."""

import json
from pathlib import Path

import pytest

import base_model  # noqa: F401
from alignment.common import load_policy, load_reward_model
from alignment.dpo import DPOStageConfig
from alignment.kto import KTOStageConfig, unpair
from alignment.proxy_pairs import proxy_ranked_pairs
from recipes.core.cli import main as rlhf_lab
from recipes.core.config import config_dict, parse_config
from recipes.core.data import load_preferences, load_prompts
from recipes.core.rundir import weights_hash
from reward import score

REPO = Path(__file__).resolve().parents[1]
YAML = {method: str(REPO / f"recipes/smoke/align-{method}.yaml") for method in ("dpo", "kto")}
EVAL_METRICS = ("gold_reward", "gold_reward_low", "gold_reward_high", "win_rate", "tie_rate", "proxy_reward", "kl", "kl_k3",
                "length", "end_of_turn_rate", "math_accuracy", "harmful_compliance")  # over_refusal needs look-alikes
SAMPLES = "gold_eval/samples/text_summary"  # the text plugin's tag for add_text("gold_eval/samples")


def align(method: str, runs_root: Path, *flags: str) -> int:
    return rlhf_lab(["align", "--method", method, "--config", YAML[method], "--runs_root", str(runs_root), *flags])


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def evaluated_prompts(run: Path) -> list[list[str]]:
    """The prompt column of every `gold_eval/samples` table in the run's TensorBoard events."""
    tables = [t.tensor_proto.string_val[0].decode() for t in events(run).Tensors(SAMPLES)]
    return [[line.split(" | ")[1] for line in table.splitlines()[2:]] for table in tables]


@pytest.fixture(scope="module")
def dpo_run(smoke_reward, smoke_runs) -> Path:
    assert align("dpo", smoke_runs) == 0
    return smoke_runs / "smoke" / "align-dpo"


@pytest.fixture(scope="module")
def kto_run(smoke_reward, smoke_runs) -> Path:
    assert align("kto", smoke_runs) == 0
    return smoke_runs / "smoke" / "align-kto"


@pytest.fixture(params=["dpo", "kto"])
def aligned(request) -> Path:
    return request.getfixturevalue(f"{request.param}_run")


def test_training_changes_the_sft_weights(aligned, smoke_sft):
    before, after = weights(smoke_sft / "model"), weights(aligned / "model")
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before)


def test_manifest_records_parents_evaluation_and_baseline(aligned, smoke_sft, smoke_reward):
    m = manifest(aligned)
    assert m["status"] == "finished" and m["stage"] == aligned.name
    sft, reward = m["parents"]
    assert (sft["role"], sft["stage"], sft["weights_sha256"]) == ("sft", "sft", weights_hash(smoke_sft / "model"))
    assert (reward["role"], reward["weights_sha256"]) == ("reward", weights_hash(smoke_reward / "model"))
    assert m["data"]["eval_num_prompts"] == 10 and m["data"]["pairs"] > 0
    metrics = m["metrics"]
    for key in EVAL_METRICS:
        assert isinstance(metrics[key], float), key
        assert isinstance(metrics[f"sft_{key}"], float), key  # what this run is compared with
    assert any(k.startswith("gold/") for k in metrics)  # per family
    assert metrics["gold_reward_low"] <= metrics["gold_reward"] <= metrics["gold_reward_high"]
    assert metrics["sft_kl"] == 0.0 and metrics["sft_win_rate"] == 0.5 and metrics["kl_k3"] >= 0
    assert metrics["steps"] == 6 and metrics["evaluations"] == 3  # before training, at step 3 and at step 6
    assert metrics["train_loss"] is not None and "train_reward_margin" in metrics


def test_tensorboard_holds_evaluations_samples_and_trl_scalars(aligned):
    tb = events(aligned)
    scalars = tb.Tags()["scalars"]
    for key in ("gold_reward", "win_rate", "kl", "proxy_reward", "harmful_compliance"):
        assert [e.step for e in tb.Scalars(f"gold_eval/{key}")] == [0, 3, 6], key
    assert "train/loss" in scalars and "train/rewards/margins" in scalars  # TRL's own
    assert SAMPLES in tb.Tags()["tensors"] and [t.step for t in tb.Tensors(SAMPLES)] == [0, 3, 6]
    table = tb.Tensors(SAMPLES)[-1].tensor_proto.string_val[0].decode()
    assert "| family | prompt | answer | gold | proxy |" in table


def test_every_method_is_evaluated_on_the_same_prompts(dpo_run, kto_run):
    dpo, kto = evaluated_prompts(dpo_run), evaluated_prompts(kto_run)
    assert len(dpo[0]) == 10 and all(p == dpo[0] for p in dpo + kto)
    fingerprints = {manifest(run)["data"]["eval_prompts_fingerprint"] for run in (dpo_run, kto_run)}
    assert len(fingerprints) == 1


def test_saved_config_reparses_to_the_same_config(dpo_run, kto_run):
    import yaml

    for run, cls in ((dpo_run, DPOStageConfig), (kto_run, KTOStageConfig)):
        saved = run / "config.yaml"
        config = parse_config(cls, ["--config", str(saved)], "align")
        assert config_dict(config) == yaml.safe_load(saved.read_text())


def test_ipo_is_a_loss_type_choice(smoke_reward, smoke_runs):
    assert align("dpo", smoke_runs, "--loss_type", "ipo", "--recipe", "smoke-ipo", "--max_steps", "2",
                 "--eval_every", "0", "--sft_model_name_or_path", str(smoke_runs / "smoke/sft/model"),
                 "--reward_model_name_or_path", str(smoke_runs / "smoke/reward/model")) == 0
    run = smoke_runs / "smoke-ipo" / "align-dpo"
    m = manifest(run)
    assert m["status"] == "finished" and m["metrics"]["steps"] == 2
    # At the start both losses see a zero margin: sigmoid gives log 2, IPO (margin - 1/(2 beta))^2 = 25.
    assert m["metrics"]["train_loss"] > 10
    assert m["parents"][0]["weights_sha256"] and m["parents"][0]["run"] is None  # a model given by path is hashed too


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_lora_saves_a_merged_model(method, smoke_reward, smoke_runs, smoke_sft):
    from transformers import AutoModelForCausalLM

    assert align(method, smoke_runs, "--use_peft", "true", "--lora_r", "4", "--recipe", f"smoke-lora-{method}",
                 "--max_steps", "2", "--eval_every", "0", "--sft_model_name_or_path", str(smoke_sft / "model"),
                 "--reward_model_name_or_path", str(smoke_runs / "smoke/reward/model")) == 0
    run = smoke_runs / f"smoke-lora-{method}" / f"align-{method}"
    after, before = weights(run / "model"), weights(smoke_sft / "model")
    assert not any("lora" in k for k in after) and after.keys() == before.keys()
    assert any(not (before[k] == after[k]).all() for k in before)
    m = manifest(run)["metrics"]
    assert m["trainable_parameters"] < sum(v.numel() for v in before.values()) / 4
    AutoModelForCausalLM.from_pretrained(str(run / "model"))


def test_missing_parent_stage_names_it_and_its_command(tmp_path, capsys, smoke_sft):
    assert align("dpo", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished sft run" in err[0]
    assert "rlhf-lab sft --config recipes/smoke/sft.yaml" in err[0]
    # With the SFT model given but no reward run: the reward stage is named.
    assert align("kto", tmp_path, "--sft_model_name_or_path", str(smoke_sft / "model")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished reward run" in err[0] and "rlhf-lab reward --config" in err[0]
    assert not (tmp_path / "smoke").exists() or not any((tmp_path / "smoke").glob("align-*"))


def test_kto_rows_are_the_pairs_unpaired_and_shuffled():
    import datasets

    pairs = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(6)],
        "chosen": [[{"role": "assistant", "content": f"good{i}"}] for i in range(6)],
        "rejected": [[{"role": "assistant", "content": f"bad{i}"}] for i in range(6)]})
    rows = unpair(pairs, seed=0)
    assert len(rows) == 12 and sum(rows["label"]) == 6
    for row in rows:
        i = row["prompt"][0]["content"][1:]
        assert row["completion"][0]["content"] == ("good" if row["label"] else "bad") + i
    assert rows["label"] != [True, False] * 6  # shuffled, not pair by pair


def test_proxy_ranked_pairs_put_the_reward_models_best_answer_first(smoke_sft, smoke_reward):
    from transformers import AutoTokenizer

    policy, _ = load_policy(smoke_sft / "model")
    reward_model = load_reward_model(smoke_reward / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(smoke_sft / "model"))
    prompts = load_prompts("world:preferences?size=smoke&seed=0")["prompt"][:24]
    options = dict(samples_per_prompt=6, max_new_tokens=64, seed=3)  # the smoke model often runs on
    pairs, counts = proxy_ranked_pairs(policy, reward_model, tokenizer, prompts, **options)
    assert counts["sft_sample_prompts"] == 24 and counts["sft_sample_answers"] == 144
    assert 0 < len(pairs) == counts["sft_sample_pairs_built"] <= 24
    shares = [counts[f"sft_sample_pairs_gold_{k}"] for k in ("agrees", "ties", "disagrees")]
    assert abs(sum(shares) - 1) < 1e-9  # world prompts: every pair is put against the gold order
    chosen = score(reward_model, tokenizer, pairs["prompt"], pairs["chosen"])
    rejected = score(reward_model, tokenizer, pairs["prompt"], pairs["rejected"])
    assert all(c > r for c, r in zip(chosen, rejected))
    assert all(c != r for c, r in zip(pairs["chosen"], pairs["rejected"]))
    assert abs(counts["sft_sample_mean_proxy_margin"] - sum(c - r for c, r in zip(chosen, rejected)) / len(pairs)) < 1e-4
    again, _ = proxy_ranked_pairs(policy, reward_model, tokenizer, prompts, **options)
    assert again.to_dict() == pairs.to_dict()  # seeded


@pytest.mark.parametrize("with_dataset", [False, True])
def test_dpo_on_proxy_ranked_sft_samples_through_the_cli(with_dataset, smoke_reward, smoke_runs, smoke_sft):
    recipe = f"smoke-sampled-{with_dataset}"
    assert align("dpo", smoke_runs, "--recipe", recipe, "--sft_sample_pairs", "24",
                 "--sft_samples_per_prompt", "6", "--sft_sample_max_new_tokens", "64", "--max_steps", "2",
                 "--sft_sample_pairs_with_dataset", str(with_dataset).lower(),
                 "--eval_every", "0", "--sft_model_name_or_path", str(smoke_sft / "model"),
                 "--reward_model_name_or_path", str(smoke_reward / "model")) == 0
    m = manifest(smoke_runs / recipe / "align-dpo")
    data = m["data"]
    assert data["sft_sample_prompts"] == 24 and data["sft_sample_answers"] == 144
    dataset_pairs = len(load_preferences("world:preferences?size=smoke&seed=0")) if with_dataset else 0
    assert data["pairs"] == dataset_pairs + data["sft_sample_pairs_built"] - data["dropped_too_long"] > 0
    assert m["metrics"]["steps"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--sft_sample_pairs", "-1"], "key 'sft_sample_pairs' must be 0"),
    (["--sft_sample_pairs", "4", "--sft_samples_per_prompt", "1"], "key 'sft_samples_per_prompt' must be at least 2"),
])
def test_bad_sft_sample_keys_are_one_line(flags, message, tmp_path, capsys):
    assert align("dpo", tmp_path, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_sampled_pairs_that_never_finish_say_which_keys_to_raise(smoke_reward, smoke_runs, smoke_sft, capsys):
    assert align("dpo", smoke_runs, "--recipe", "smoke-unfinished", "--sft_sample_pairs", "4",
                 "--sft_sample_max_new_tokens", "1", "--sft_model_name_or_path", str(smoke_sft / "model"),
                 "--reward_model_name_or_path", str(smoke_reward / "model")) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the models' loading bars
    assert "no prompt got two distinct finished SFT answers" in last and "sft_sample_max_new_tokens" in last
    assert "Traceback" not in err
    assert not (smoke_runs / "smoke-unfinished" / "align-dpo" / "model").exists()
