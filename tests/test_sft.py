"""The SFT stage on the smoke recipe, through the CLI a user runs."""

import json
from pathlib import Path

import pytest
import yaml

import base_model  # noqa: F401
from recipes.core.cli import main as rlhf_lab
from recipes.core.config import parse_config
from recipes.core.generation import generate_answers
from recipes.core.kill_switch import ENV as KILL_ENV
from recipes.core.rundir import weights_hash
from recipes.sft import SFTStageConfig, build_trainer, drop_too_long, load_data, load_model

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes/smoke/sft.yaml")
FAMILIES = ("chat", "math", "safety", "stories", "words")


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_loss_is_on_exactly_the_assistant_tokens(smoke_pretrain, tmp_path):
    """Tokenize through the stage's own data path and trainer: the unmasked labels are the answers and <|end|>."""
    config = parse_config(SFTStageConfig, ["--config", SMOKE, "--report_to", "none"], "sft")
    assert config.assistant_only_loss and not config.packing and not config.padding_free
    train, test = load_data(config)
    model, tokenizer = load_model(smoke_pretrain / "model")
    fitting, dropped = drop_too_long(train, tokenizer, config.max_length)
    assert 0 < dropped < len(train) // 4  # a few too long for the smoke context: dropped, never cut mid-answer
    train = fitting
    trainer = build_trainer(config, model, tokenizer, train.select(range(8)), test.select(range(2)),
                            output_dir=tmp_path)
    for i in range(8):
        row, messages = trainer.train_dataset[i], train[i]["messages"]
        kept = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
        expected = "".join(m["content"] + "<|end|>" for m in messages if m["role"] == "assistant")
        assert tokenizer.decode(kept) == expected
        masked = [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
        assert messages[0]["content"] in tokenizer.decode(masked)  # the user turn is there, but not trained on


def test_run_directory_and_manifest(smoke_sft, smoke_pretrain):
    assert {"config.yaml", "manifest.json", "model", "checkpoints", "tb"} <= {p.name for p in smoke_sft.iterdir()}
    m = manifest(smoke_sft)
    assert m["stage"] == "sft" and m["recipe"] == "smoke" and m["status"] == "finished"
    (parent,) = m["parents"]
    assert (parent["role"], parent["stage"]) == ("pretrain", "pretrain")
    assert parent["weights_sha256"] == weights_hash(smoke_pretrain / "model")
    assert len(m["data"]["fingerprint"]) == 16 and m["data"]["eval_num_prompts"] == 10
    metrics = m["metrics"]
    for key in ("pretrained_gold_reward", "gold_reward", "end_of_turn_rate", "pretrained_end_of_turn_rate",
                "math_accuracy", "eval_loss", "initial_eval_loss", "train_loss", "wall_time_s"):
        assert isinstance(metrics[key], float), key
    assert all(f"gold/{f}" in metrics and f"pretrained_gold/{f}" in metrics for f in FAMILIES)
    config = yaml.safe_load((smoke_sft / "config.yaml").read_text())
    assert config["output_dir"] == "<run>/checkpoints" and config["assistant_only_loss"] is True
    assert config["bf16"] is False and config["activation_checkpointing"] is False
    assert "runs_root" not in config


def test_loss_falls(smoke_sft):
    metrics = manifest(smoke_sft)["metrics"]
    assert metrics["eval_loss"] < 0.8 * metrics["initial_eval_loss"], metrics
    losses = [e.value for e in events(smoke_sft).Scalars("train/loss")]
    assert len(losses) >= 5 and losses[-1] < 0.8 * losses[0], losses


def test_tensorboard_holds_losses_gold_scalars_and_text(smoke_sft):
    tb = events(smoke_sft)
    scalars = tb.Tags()["scalars"]
    steps = manifest(smoke_sft)["metrics"]["steps"]
    for tag in ("train/loss", "train/learning_rate", "eval/loss", "gold/reward", "gold/end_of_turn_rate",
                "gold/length", "gold/math_accuracy", *(f"gold/family/{f}" for f in FAMILIES)):
        assert tag in scalars, tag
    # before training (the pretrained model), at every evaluation, and at the end
    assert [e.step for e in tb.Scalars("gold/reward")] == [0, 20, steps]
    assert [e.step for e in tb.Scalars("eval/loss")] == [0, 20, steps]
    final = tb.Scalars("gold/reward")[-1].value
    assert final == pytest.approx(manifest(smoke_sft)["metrics"]["gold_reward"], abs=1e-5)
    text_tag = next(t for t in tb.Tags()["tensors"] if t.startswith("gold/samples"))
    texts = tb.Tensors(text_tag)
    assert [t.step for t in texts] == [0, 20, steps]
    table = texts[-1].tensor_proto.string_val[0].decode()
    assert "| family | prompt | answer | gold |" in table and "math" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + 10


def test_model_loads_and_answers_chat_prompts(smoke_sft):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smoke_sft / "model")
    tokenizer = AutoTokenizer.from_pretrained(smoke_sft / "model")
    [answer] = generate_answers(model, tokenizer, ["What is 2 + 3?"], max_new_tokens=8)
    assert answer.num_tokens > 0


def test_lora_saves_a_merged_model_that_loads_like_any_other(smoke_pretrain, smoke_runs):
    import torch
    from transformers import AutoModelForCausalLM

    assert rlhf_lab(["sft", "--config", SMOKE, "--runs_root", str(smoke_runs), "--recipe", "smoke-lora",
                     "--model_name_or_path", str(smoke_pretrain / "model"), "--use_peft", "true",
                     "--lora_r", "4", "--max_steps", "6", "--eval_steps", "6", "--eval_num_prompts", "2",
                     "--learning_rate", "1e-2"]) == 0
    run = smoke_runs / "smoke-lora" / "sft"
    m = manifest(run)
    assert m["status"] == "finished" and m["parents"][0]["run"] is None and m["parents"][0]["weights_sha256"]
    assert m["metrics"]["trainable_parameters"] < m["metrics"]["parameters"] / 4
    assert not (run / "model" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(run / "model")
    pretrained = AutoModelForCausalLM.from_pretrained(smoke_pretrain / "model")
    assert type(merged) is type(pretrained)
    assert not [n for n, _ in merged.named_modules() if "lora" in n.lower()]
    merged_state, pretrained_state = merged.state_dict(), pretrained.state_dict()
    assert merged_state.keys() == pretrained_state.keys()
    changed = [k for k in merged_state if not torch.equal(merged_state[k], pretrained_state[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.layers.1.mlp.down_proj.weight" in changed
    assert "model.embed_tokens.weight" not in changed  # LoRA leaves the embeddings alone


def test_sft_before_pretraining_names_the_stage_and_command(tmp_path, capsys):
    assert rlhf_lab(["sft", "--config", SMOKE, "--runs_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "no finished pretrain run" in err[0]
    assert f"rlhf-lab pretrain --config recipes/smoke/pretrain.yaml --runs_root {tmp_path}" in err[0]
    assert not (tmp_path / "smoke" / "sft").exists()


@pytest.mark.parametrize("flags, message", [
    (["--learning_rat", "1e-3"], "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
    (["--output_dir", "elsewhere"], "key 'output_dir' is fixed to the run directory's checkpoints/"),
    (["--packing", "true"], "'packing' and 'padding_free' are not supported"),
])
def test_bad_keys_stop_with_one_line(flags, message, tmp_path, capsys):
    assert rlhf_lab(["sft", "--config", SMOKE, "--runs_root", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_unknown_key_in_the_yaml_is_named(tmp_path, capsys):
    bad = tmp_path / "sft.yaml"
    bad.write_text(Path(SMOKE).read_text() + "lora_rank: 8\n")
    assert rlhf_lab(["sft", "--config", str(bad), "--runs_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: unknown key 'lora_rank'" in err[0] and "lora_r" in err[0], err


def test_killed_run_resumes_from_its_last_checkpoint(smoke_pretrain, smoke_runs):
    import os
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "recipes.core.cli", "sft", "--config", SMOKE, "--runs_root", str(smoke_runs),
               "--recipe", "smoke-killed", "--model_name_or_path", str(smoke_pretrain / "model"),
               "--max_steps", "12", "--save_steps", "4", "--eval_steps", "12", "--eval_num_prompts", "2"]
    run = smoke_runs / "smoke-killed" / "sft"
    child = subprocess.run(command, cwd=REPO, capture_output=True, env={**os.environ, KILL_ENV: "6"}, timeout=300)
    assert child.returncode == -signal.SIGKILL and manifest(run)["status"] == "running"
    assert (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (run / "model").exists()

    assert rlhf_lab(command[3:]) == 2  # protected: neither restarted nor resumed silently
    assert rlhf_lab(command[3:] + ["--resume"]) == 0
    m = manifest(run)
    assert m["status"] == "finished" and len(m["resumed"]) == 1 and m["metrics"]["steps"] == 12
    # the pretrained model was scored before the kill, and that score is carried over, not recomputed
    assert m["metrics"]["pretrained_gold_reward"] == json.loads((run / "checkpoints/gold_step0.json").read_text())[
        "gold_reward"]
    assert m["metrics"]["initial_eval_loss"] is not None
