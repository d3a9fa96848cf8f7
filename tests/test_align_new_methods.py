"""The methods added beside the first six, through the CLI on the smoke recipe: GRPO's family (dr-grpo, dapo, gspo),
online DPO, SimPO and ORPO. Each moves the SFT weights, writes its metrics (the evaluation and its budget) and its
TensorBoard events, and is evaluated on the same prompts as GRPO; each member of GRPO's family runs its own loss
and refuses another member's."""

from pathlib import Path

import pytest

from recipes.core.cli import main as rlhf_lab
from recipes.core.stages import METHODS
from tests.test_align_dpo_kto import events, manifest, weights  # the run-reading helpers DPO's tests use

REPO = Path(__file__).resolve().parents[1]
NEW = ("dr-grpo", "dapo", "gspo", "online-dpo", "simpo", "orpo")
SAMPLES = "gold_eval/samples/text_summary"
# method: (loss recorded in config.yaml's keys, budget: reward queries > 0, preference labels > 0)
EXPECTED = {
    "dr-grpo": ({"loss_type": "dr_grpo", "scale_rewards": "none", "importance_sampling_level": "token"}, True, False),
    "dapo": ({"loss_type": "dapo", "epsilon_high": 0.28}, True, False),  # the smoke recipe masks no cut-off answer
    "gspo": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4}, True, False),
    "online-dpo": ({"loss_type": "sigmoid"}, True, True),
    "simpo": ({"loss_type": "simpo", "cpo_alpha": 0.0}, False, True),
    "orpo": ({}, False, True),
}


def evaluated_prompts(run: Path) -> list[str]:
    table = events(run).Tensors(SAMPLES)[-1].tensor_proto.string_val[0].decode()
    return [line.split(" | ")[1] for line in table.splitlines()[2:]]


@pytest.fixture(scope="module")
def runs(smoke_reward, smoke_sft, smoke_runs) -> dict[str, Path]:
    """Each method once, in a recipe of this module's own, on the session's smoke SFT and reward models."""
    for method in NEW + ("grpo",):
        assert rlhf_lab(["align", "--method", method, "--config", str(REPO / f"recipes/smoke/align-{method}.yaml"),
                         "--runs_root", str(smoke_runs), "--recipe", "smoke-methods",
                         "--sft_model_name_or_path", str(smoke_sft / "model"),
                         "--reward_model_name_or_path", str(smoke_reward / "model")]) == 0, method
    return {method: smoke_runs / "smoke-methods" / f"align-{method}" for method in NEW + ("grpo",)}


def test_every_new_method_is_registered_with_a_smoke_recipe():
    for method in NEW:
        assert METHODS[method].method and (REPO / f"recipes/smoke/align-{method}.yaml").is_file()
        assert (REPO / f"recipes/tinyworld-methods/align-{method}.yaml").is_file()


@pytest.mark.parametrize("method", NEW)
def test_a_new_method_trains_evaluates_and_records_its_budget(method, runs, smoke_sft):
    import yaml

    run = runs[method]
    m = manifest(run)
    assert m["status"] == "finished" and m["stage"] == f"align-{method}"
    before, after = weights(smoke_sft / "model"), weights(run / "model")
    assert before.keys() == after.keys() and any(not (before[k] == after[k]).all() for k in before)
    config = yaml.safe_load((run / "config.yaml").read_text())
    keys, queries, labels = EXPECTED[method]
    for key, value in keys.items():
        assert config[key] == pytest.approx(value) if isinstance(value, float) else config[key] == value, key
    metrics = m["metrics"]
    for key in ("gold_reward", "gold_gain", "win_rate", "proxy_reward", "kl", "length"):
        assert isinstance(metrics[key], float), key
    assert metrics["gold_gain_low"] <= metrics["gold_gain"] <= metrics["gold_gain_high"]
    assert (metrics["reward_queries"] > 0) == queries and (metrics["preference_labels"] > 0) == labels
    assert metrics["tokens_generated"] > 0 or method in ("simpo", "orpo")
    if method == "online-dpo":  # 4 prompts a step, 2 steps: one label per prompt, two answers scored for it
        assert metrics["preference_labels"] == 8 and metrics["reward_queries"] == 16
    tb = events(run)
    assert len(tb.Scalars("gold_eval/gold_reward")) >= 2  # before training (eval_at_start) and at the end
    assert tb.Scalars("gold_eval/gold_reward")[-1].value == pytest.approx(metrics["gold_reward"])
    assert any(tag.startswith("train/") for tag in tb.Tags()["scalars"])


def test_every_method_is_evaluated_on_the_same_prompts(runs):
    reference = evaluated_prompts(runs["grpo"])
    assert len(reference) == 10
    for method in NEW:
        assert evaluated_prompts(runs[method]) == reference, method
        sft_gold = manifest(runs[method])["metrics"]["sft_gold_reward"]
        assert sft_gold == manifest(runs["grpo"])["metrics"]["sft_gold_reward"]


@pytest.mark.parametrize("method, flags, named", [
    ("dapo", ["--loss_type", "grpo"], ["'loss_type'", "dapo", "'grpo'", "--method grpo"]),
    ("grpo", ["--loss_type", "dr_grpo"], ["'loss_type'", "--method dr-grpo"]),
    ("grpo", ["--importance_sampling_level", "sequence"], ["'importance_sampling_level'", "--method gspo"]),
    ("gspo", ["--importance_sampling_level", "token"], ["'importance_sampling_level'", "'sequence'"]),
    ("simpo", ["--loss_type", "sigmoid"], ["'loss_type'", "simpo"]),
    ("online-dpo", ["--max_new_tokens", "4096"], ["'max_new_tokens' (4096)", "context"]),
])
def test_a_member_refuses_another_members_keys(method, flags, named, smoke_reward, smoke_runs, capsys):
    assert rlhf_lab(["align", "--method", method, "--config", str(REPO / f"recipes/smoke/align-{method}.yaml"),
                     "--runs_root", str(smoke_runs), "--recipe", "smoke-refused", *flags,
                     "--sft_model_name_or_path", str(smoke_runs / "smoke/sft/model"),
                     "--reward_model_name_or_path", str(smoke_reward / "model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(name in err[0] for name in named), err
    assert not (smoke_runs / "smoke-refused").exists()


def test_grpo_still_takes_trls_other_losses():
    from alignment.grpo import CONFIGS
    from recipes.core.config import parse_config

    config = parse_config(CONFIGS["grpo"], ["--config", str(REPO / "recipes/smoke/align-grpo.yaml"), "--loss_type",
                                            "bnpo"], "align")
    assert config.loss_type == "bnpo" and config.METHOD == "grpo" and config.importance_sampling_level == "token"


@pytest.mark.parametrize("method", ["online-dpo", "simpo"])
def test_lora_trains_adapters_and_saves_a_merged_model(method, smoke_reward, smoke_sft, smoke_runs):
    """Online DPO's reference is then the adapter-free model; SimPO has none."""
    assert rlhf_lab(["align", "--method", method, "--config", str(REPO / f"recipes/smoke/align-{method}.yaml"),
                     "--runs_root", str(smoke_runs), "--recipe", "smoke-lora", "--use_peft", "true", "--lora_r", "4",
                     "--sft_model_name_or_path", str(smoke_sft / "model"),
                     "--reward_model_name_or_path", str(smoke_reward / "model")]) == 0
    run = smoke_runs / "smoke-lora" / f"align-{method}"
    after = weights(run / "model")
    assert not (run / "model" / "adapter_config.json").exists() and not any("lora" in k for k in after)
    before = weights(smoke_sft / "model")
    assert after.keys() == before.keys() and any(not (before[k] == after[k]).all() for k in before)
    assert manifest(run)["metrics"]["trainable_parameters"] < sum(v.numel() for v in after.values()) / 2


def test_simpo_and_orpo_train_on_the_tokens_the_sampler_produces(smoke_sft):
    """TRL's CPO and ORPO trainers tokenise rows themselves, adding a BOS before the prompt and an EOS after the
    answer when missing; given the lab's text rows and BOS-free tokenizer, a pair's ids are the chat template's
    (what SFT trained on and the sampler answers in), up to and including the answer's end of turn."""
    import datasets
    from trl.experimental.cpo import CPOTrainer

    import base_model
    from alignment.offline import as_text_rows, without_bos

    tokenizer = base_model.load_tokenizer(str(smoke_sft / "model"))
    prompt = [{"role": "user", "content": "What is 12 + 7?"}]
    chosen, rejected = [{"role": "assistant", "content": "12 + 7 = 19."}], [{"role": "assistant", "content": "20"}]
    pairs = datasets.Dataset.from_dict({"prompt": [prompt], "chosen": [chosen], "rejected": [rejected]})
    trainer = object.__new__(CPOTrainer)  # only its tokenize_row, on the attributes it reads
    trainer.processing_class, trainer.is_encoder_decoder, trainer.max_length = without_bos(tokenizer), False, 128
    batch = CPOTrainer.tokenize_row(trainer, as_text_rows(pairs, tokenizer)[0])
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        template = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=False)
        end = template.index(tokenizer.eos_token_id, len(batch["prompt_input_ids"])) + 1  # the answer's end of turn
        assert batch[f"{side}_input_ids"] == template[:end], side
    assert tokenizer.bos_token_id is not None  # the lab's tokenizer has one: without_bos is what keeps it out
