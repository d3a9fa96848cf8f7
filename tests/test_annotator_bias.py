"""The annotator-bias experiment (alignment/annotator_bias.py) through the CLI at smoke size, the biased world
source it builds, and the length-balanced pairs of its mitigation."""

import json
from pathlib import Path

import yaml

from alignment.annotator_bias import biased_source
from recipes.core.cli import main as rlhf_lab
from recipes.core.world.annotators import answer_tokens
from reward.train import balance_lengths

REPO = Path(__file__).resolve().parents[1]


def test_biased_source_sets_or_replaces_the_length_bias():
    assert biased_source("world:preferences?size=smoke&seed=0", 0.05) == "world:preferences?size=smoke&seed=0&length_bias=0.05"
    assert biased_source("world:preferences?length_bias=0.1&seed=2", 0.02) == "world:preferences?seed=2&length_bias=0.02"
    assert biased_source("world:preferences?size=smoke&length_bias=0.1", 0.0) == "world:preferences?size=smoke"


def test_length_balanced_pairs_leave_length_no_label_to_predict():
    long, short = "one two three four five six", "one two"
    # 30 pairs chose the longer answer, 10 the shorter, 5 tie on length: 20 of the 30 must go, at random.
    pairs = {"prompt": [f"p{i}" for i in range(45)],
             "chosen": [long] * 30 + [short] * 10 + [short] * 5, "rejected": [short] * 30 + [long] * 10 + [short] * 5}
    kept, counts = balance_lengths(pairs, seed=0, name="pairs")
    assert counts == {"pairs_chosen_longer": 30, "pairs_chosen_shorter": 10, "pairs_dropped_to_balance": 20}
    lengths = [(answer_tokens(c), answer_tokens(r)) for c, r in zip(kept["chosen"], kept["rejected"])]
    assert sum(c > r for c, r in lengths) == sum(c < r for c, r in lengths) == 10
    assert sum(c == r for c, r in lengths) == 5 and len(kept["prompt"]) == 25
    assert set(kept["prompt"]) >= {f"p{i}" for i in range(30, 45)}  # the rarer side and the ties all stay
    assert kept == balance_lengths(pairs, seed=0, name="pairs")[0] and kept != balance_lengths(pairs, 1, "pairs")[0]


def quick(source: str, tmp_path: Path, **keys) -> str:
    """A copy of a smoke YAML with some keys changed: the experiment's plumbing, not its training, is tested."""
    config = {**yaml.safe_load((REPO / source).read_text()), **keys}
    path = tmp_path / Path(source).name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_annotator_bias_recipe_runs_in_smoke_size(smoke_sft, smoke_runs, tmp_path, capsys):
    reward = quick("recipes/smoke/reward.yaml", tmp_path, num_train_epochs=1, eval_strategy="no", save_strategy="no")
    ppo = quick("recipes/smoke/align-ppo.yaml", tmp_path, max_steps=1, eval_every=0, eval_num_prompts=6)
    argv = ["annotator-bias", "--config", str(REPO / "recipes/annotator-bias/annotator-bias.yaml"),
            "--sft_model_name_or_path", str(smoke_sft / "model"), "--runs_root", str(smoke_runs),
            "--recipe", "bias-smoke", "--reward_config", reward, "--ppo_config", ppo,
            "--best_of_n_config", str(REPO / "recipes/smoke/align-best-of-n.yaml"), "--length_biases", "0.5",
            "--mitigated_length_biases", "0.5"]
    assert rlhf_lab(argv) == 0
    out = capsys.readouterr().out
    assert "| reward model | length bias |" in out
    root = smoke_runs / "bias-smoke"
    results = json.loads((root / "annotator-bias" / "results.json").read_text())
    assert list(results["variants"]) == ["length0.5", "length0.5-balanced"]
    for name, entry in results["variants"].items():
        config = yaml.safe_load((root / f"reward-{name}" / "config.yaml").read_text())
        assert config["dataset_name"] == "world:preferences?size=smoke&seed=0&length_bias=0.5"
        assert config["length_balanced_pairs"] == name.endswith("balanced")
        assert entry["reward"]["length_coefficient"] is not None
        for method in ("best-of-n", "ppo"):
            values = entry["methods"][method]
            assert all(values[k] is not None for k in ("gold_reward", "gold_gain", "length", "kl", "proxy_reward"))
            manifest = json.loads((root / f"align-{method}-{name}" / "manifest.json").read_text())
            assert manifest["parents"][-1]["model"].endswith(f"reward-{name}/model")
    data = json.loads((root / "reward-length0.5-balanced" / "manifest.json").read_text())["data"]
    assert data["pairs_dropped_to_balance"] > 0 and data["pairs_chosen_longer"] != data["pairs_chosen_shorter"]
    plain = json.loads((root / "reward-length0.5" / "manifest.json").read_text())["data"]
    assert data["train_pairs"] == plain["train_pairs"] - data["pairs_dropped_to_balance"]
    png = (root / "annotator-bias" / "annotator-bias.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert json.loads((root / "annotator-bias" / "manifest.json").read_text())["status"] == "finished"
