"""The command line: help, config files, overrides, and one-line errors for user mistakes."""

import dataclasses

import pytest

from base_model.pretrain import PretrainConfig
from recipes.core.cli import COMMANDS
from recipes.core.cli import main as rlhf_lab
from recipes.core.config import parse_config, to_yaml
from recipes.core.errors import UserError
from reward.train import RewardStageConfig


def test_help_lists_every_command(capsys):
    assert rlhf_lab(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"  {command} " in out


def test_stage_help_lists_its_keys(capsys):
    assert rlhf_lab(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("--learning_rate", "--hidden_size", "--dataset_name", "--resume", "--runs_root", "--config"):
        assert key in out


def test_stage_help_comes_from_the_cache_without_importing_the_stage(tmp_path, monkeypatch, capsys):
    """The second `--help` of a command prints the same text without importing the stage (and so torch, TRL)."""
    import importlib

    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path))
    assert rlhf_lab(["sft", "-h"]) == 0
    first = capsys.readouterr().out
    assert "--learning_rate" in first and list((tmp_path / "help").glob("sft -h-*.txt"))

    def no_import(name, *args, **kwargs):
        raise AssertionError(f"imported {name}")

    monkeypatch.setattr(importlib, "import_module", no_import)
    assert rlhf_lab(["sft", "-h"]) == 0
    assert capsys.readouterr().out == first


def test_flags_override_yaml_and_the_saved_config_round_trips(tmp_path):
    path = tmp_path / "myrecipe" / "pretrain.yaml"
    path.parent.mkdir()
    path.write_text("max_steps: 5\nlearning_rate: 1.0e-4\nsample_prompts: [a, b]\nnum_key_value_heads: 2\n")
    config = parse_config(PretrainConfig, ["--config", str(path), "--max_steps", "9", "--bf16", "true"], "pretrain")
    assert (config.max_steps, config.learning_rate, config.sample_prompts, config.bf16) == (9, 1e-4, ["a", "b"], True)
    assert config.recipe == "myrecipe"
    saved = tmp_path / "saved.yaml"
    saved.write_text(to_yaml(config))
    again = parse_config(PretrainConfig, ["--config", str(saved)], "pretrain")
    assert dataclasses.asdict(again) == dataclasses.asdict(config)


def test_null_on_the_command_line_means_none_where_a_key_allows_it(tmp_path):
    path = tmp_path / "r" / "reward.yaml"
    path.parent.mkdir()
    path.write_text("dataset_test_split: validation\nannotator_bt_temperature: 0.5\nlearning_rate: 1.0e-4\n")
    config = parse_config(RewardStageConfig, ["--config", str(path), "--dataset_test_split", "null",
                                              "--annotator_bt_temperature=null", "--num_train_epochs", "2"], "reward")
    assert config.dataset_test_split is None and config.annotator_bt_temperature is None  # the flags beat the YAML
    assert (config.learning_rate, config.num_train_epochs) == (1e-4, 2)  # other keys untouched
    with pytest.raises(UserError, match="invalid float value: 'null'"):  # a key that cannot be None still says so
        parse_config(RewardStageConfig, ["--config", str(path), "--learning_rate", "null"], "reward")


@pytest.mark.parametrize("yaml_text, argv, expected", [
    ("max_stepz: 3\n", [], "pretrain.yaml: unknown key 'max_stepz' (did you mean 'max_steps'?)"),
    ("", ["--max_step", "3"], "command line: unknown key 'max_step' (did you mean 'max_steps'?)"),
    ("learning_rate: fast\n", [], "invalid float value: 'fast'"),
    ("max_steps: 0\n", [], "key 'max_steps' must be a positive integer, got 0"),
    ("hidden_size: 30\nnum_attention_heads: 4\n", [], "key 'hidden_size' (30) must be divisible"),
    ("- just\n- a list\n", [], "expected a mapping of config keys to values"),
    ("max_steps: [1, 2\n", [], "not valid YAML"),
])
def test_bad_config_stops_with_one_line_and_writes_nothing(tmp_path, capsys, yaml_text, argv, expected):
    path = tmp_path / "r" / "pretrain.yaml"
    path.parent.mkdir()
    path.write_text(yaml_text)
    runs = tmp_path / "runs"
    assert rlhf_lab(["pretrain", "--config", str(path), "--runs_root", str(runs), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlhf-lab pretrain: error:") and expected in err[0], err
    assert not runs.exists()


def test_missing_config_file_and_unknown_command(tmp_path, capsys):
    assert rlhf_lab(["pretrain", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"{tmp_path / 'nope.yaml'}: config file not found" in capsys.readouterr().err
    assert rlhf_lab(["pretrian"]) == 2
    assert "unknown command 'pretrian' (did you mean 'pretrain'?)" in capsys.readouterr().err
