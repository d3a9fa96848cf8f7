"""The real-data GPU recipe: every stage's YAML parses, and its hub datasets flow through the adapters.

Nothing is downloaded: `datasets.load_dataset` is replaced by rows shaped like the named datasets
(TinyStories text, UltraChat messages, UltraFeedback-binarized message pairs), so the test checks
the recipe's dataset names, splits, columns and formats against the code that will read them.
"""

from pathlib import Path

import datasets
import pytest

from base_model.pretrain import PretrainConfig
from recipes.core.config import parse_config
from recipes.core.data import load_conversations, load_preferences, load_prompts, load_text
from recipes.core.errors import UserError
from recipes.sft import SFTStageConfig
from reward.train import RewardStageConfig

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "realdata-gpu"

CHAT = [{"role": "user", "content": "Write a haiku about rain."}, {"role": "assistant", "content": "Soft rain on the roof."}]
HUB = {  # (name, split) -> rows shaped like the real dataset
    ("roneneldan/TinyStories", "train"): [{"text": "Once upon a time, there was a cat."}] * 3,
    ("roneneldan/TinyStories", "validation"): [{"text": "Lily went to the park."}],
    ("HuggingFaceH4/ultrachat_200k", "train_sft"): [{"prompt": CHAT[0]["content"], "prompt_id": "a", "messages": CHAT}],
    ("HuggingFaceH4/ultrachat_200k", "test_sft"): [{"prompt": CHAT[0]["content"], "prompt_id": "b", "messages": CHAT}],
    **{("HuggingFaceH4/ultrafeedback_binarized", split): [{
        "prompt": "Name a fruit.", "prompt_id": "c", "score_chosen": 8.0, "score_rejected": 3.0,
        "chosen": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}],
        "rejected": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A chair."}],
        "messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}],
    }] for split in ("train_prefs", "test_prefs", "test_gen")},
}


@pytest.fixture
def fake_hub(monkeypatch):
    asked = []

    def load_dataset(name, config=None, split=None, **kwargs):
        asked.append((name, split))
        if (name, split) not in HUB:
            raise FileNotFoundError(f"no split {split} in {name}")
        return datasets.Dataset.from_list(HUB[name, split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


def parse(config_class, stage):
    return parse_config(config_class, ["--config", str(RECIPE / f"{stage}.yaml")], stage)


def test_every_stage_parses_with_gpu_settings():
    pretrain = parse(PretrainConfig, "pretrain")
    sft = parse(SFTStageConfig, "sft")
    reward = parse(RewardStageConfig, "reward")
    for config in (pretrain, sft, reward):
        assert config.recipe == "realdata-gpu" and config.bf16 is True
        assert not config.dataset_name.startswith("world:")
    assert 80e6 < 12 * pretrain.num_hidden_layers * pretrain.hidden_size**2 < 130e6  # GPT-2-small class
    assert pretrain.max_length <= pretrain.max_position_embeddings
    assert sft.max_length <= pretrain.max_position_embeddings and reward.max_length <= pretrain.max_position_embeddings
    assert sft.eval_prompts is None  # no gold reward for real prompts


def test_hub_datasets_flow_through_the_adapters(fake_hub):
    pretrain = parse(PretrainConfig, "pretrain")
    sft = parse(SFTStageConfig, "sft")
    reward = parse(RewardStageConfig, "reward")

    for split in (pretrain.dataset_train_split, pretrain.dataset_test_split):
        texts = load_text(pretrain.dataset_name, text_field=pretrain.dataset_text_field, split=split)["text"]
        assert texts and all(isinstance(t, str) for t in texts)

    for split in (sft.dataset_train_split, sft.dataset_test_split):
        conversations = load_conversations(sft.dataset_name, format=sft.dataset_format, split=split)["messages"]
        assert [m["role"] for m in conversations[0]] == ["user", "assistant"]

    for split in (reward.dataset_train_split, reward.dataset_test_split):
        pairs = load_preferences(reward.dataset_name, format=reward.dataset_format, split=split)
        row = pairs[0]
        assert row["prompt"] == [{"role": "user", "content": "Name a fruit."}]
        assert row["chosen"] == [{"role": "assistant", "content": "An apple."}]
        assert row["rejected"] == [{"role": "assistant", "content": "A chair."}]

    prompts = load_prompts(reward.eval_prompts, split=reward.eval_prompts_split)
    assert prompts[0]["prompt"][-1]["content"] == "Name a fruit."
    assert {name for name, _ in fake_hub} == {"roneneldan/TinyStories", "HuggingFaceH4/ultrachat_200k",
                                              "HuggingFaceH4/ultrafeedback_binarized"}


def test_a_wrong_split_name_would_stop_with_one_line(fake_hub):
    sft = parse(SFTStageConfig, "sft")
    with pytest.raises(UserError, match=r"HuggingFaceH4/ultrachat_200k: could not load Hugging Face dataset split 'test'"):
        load_conversations(sft.dataset_name, format=sft.dataset_format, split="test")


# ----------------------------------------------------------------------------------------------
# recipes/ultrafeedback-gpu: the alignment-handbook path, from a hub model to every method, judged


HANDBOOK = RECIPE.parent / "ultrafeedback-gpu"


@pytest.mark.parametrize("path", sorted(HANDBOOK.glob("*.yaml")) + sorted(RECIPE.glob("*.yaml")), ids=lambda p: p.name)
def test_every_real_data_yaml_parses_and_validates_offline(path):
    from recipes.core.stages import METHODS, STAGES, method_of

    spec = STAGES.get(path.stem) or METHODS[method_of(path.stem.removeprefix("align-"))]
    config = spec.parse(["--config", str(path)])
    assert config.recipe == path.parent.name
    keys = ("eval_prompts", "model_name_or_path", "judge_model_name_or_path")
    for key in keys + (() if path.stem == "align-best-of-n" else ("dataset_name",)):  # best-of-n trains on nothing
        value = getattr(config, key, None)
        assert not (isinstance(value, str) and value.startswith(("world:", "runs/", "/"))), (key, value)


def test_the_handbook_recipe_names_hub_models_and_judges_every_method():
    from recipes.core.runner import plan

    stages = plan(HANDBOOK, seeds=None, runs_root=None, overrides={})
    names = [s.name for s in stages]
    assert names[:2] == ["sft", "reward"] and "pretrain" not in names
    assert {"align-dpo", "align-ppo", "align-grpo", "align-dr-grpo", "align-dapo", "align-gspo",
            "align-best-of-n"} <= set(names)
    sft = stages[0].spec.parse(stages[0].argv)
    assert sft.model_name_or_path == "HuggingFaceTB/SmolLM2-360M" and sft.assistant_only_loss
    for stage in stages[2:]:
        config = stage.spec.parse(stage.argv)
        assert config.judge_model_name_or_path == "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
        assert config.eval_prompts == "HuggingFaceH4/ultrafeedback_binarized" and config.eval_prompts_split == "test_gen"
        assert getattr(config, "bf16", True) is True  # best-of-n trains nothing and has no precision key


def test_the_handbook_recipe_datasets_flow_through_the_adapters(fake_hub):
    from recipes.core.stages import METHODS

    for name in ("dpo", "grpo", "ppo"):
        config = METHODS[name].parse(["--config", str(HANDBOOK / f"align-{name}.yaml")])
        prompts = load_prompts(config.dataset_name, split=config.dataset_train_split, format=config.dataset_format)
        assert prompts[0]["prompt"] == [{"role": "user", "content": "Name a fruit."}]
        evaluated = load_prompts(config.eval_prompts, split=config.eval_prompts_split)
        assert evaluated[0]["prompt"][-1]["content"] == "Name a fruit."
