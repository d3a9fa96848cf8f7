"""Training whose loss (or sampling) turns NaN or infinite stops at once, naming the step and the last good checkpoint.

A learning rate of 1e30 (after a warm-up step at 0, so that a checkpoint is saved first) blows every stage's
weights up, and within a step or two the loss, or the policy's next-token probabilities, are no longer
finite. Each stage must stop there with one line (exit 2), leave its run unfinished (no model/, so nothing
downstream takes it for a good run) and name the newest checkpoint saved before that step, with finite weights.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from recipes.core.cli import main as rlhf_lab

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes/smoke"
ALIGN = ["--sft_model_name_or_path", "{sft}", "--reward_model_name_or_path", "{reward}", "--eval_num_prompts", "2"]
CASES = {
    "pretrain": ["pretrain", "--config", str(SMOKE / "pretrain.yaml"), "--save_steps", "1", "--warmup_steps", "2"],
    "sft": ["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", "{pretrain}", "--save_steps", "1",
            "--warmup_steps", "2", "--eval_num_prompts", "2"],
    "reward": ["reward", "--config", str(SMOKE / "reward.yaml"), "--model_name_or_path", "{sft}", "--save_steps", "1",
               "--warmup_steps", "2", "--eval_num_prompts", "2"],
    "dpo": ["align", "--method", "dpo", "--config", str(SMOKE / "align-dpo.yaml"), *ALIGN, "--save_steps", "1", "--warmup_steps", "2"],
    "kto": ["align", "--method", "kto", "--config", str(SMOKE / "align-kto.yaml"), *ALIGN, "--save_steps", "1", "--warmup_steps", "2"],
    "grpo": ["align", "--method", "grpo", "--config", str(SMOKE / "align-grpo.yaml"), *ALIGN, "--save_steps", "1", "--warmup_steps", "2",
             "--max_steps", "4", "--eval_every", "100"],
    "rloo": ["align", "--method", "rloo", "--config", str(SMOKE / "align-rloo.yaml"), *ALIGN, "--save_steps", "1", "--warmup_steps", "2",
             "--max_steps", "4", "--eval_every", "100"],
    "ppo": ["align", "--method", "ppo", "--config", str(SMOKE / "align-ppo.yaml"), *ALIGN, "--save_steps", "1", "--warmup_steps", "2",
            "--num_mini_batches", "1", "--num_ppo_epochs", "1", "--eval_every", "100",
            "--save_total_limit", "3"],
}


def checkpoint_weights(checkpoint: Path) -> list:
    """Every floating-point tensor of the model in a checkpoint (safetensors files, or PPO's state.pt)."""
    from safetensors.torch import load_file

    if (checkpoint / "state.pt").is_file():
        tensors = torch.load(checkpoint / "state.pt", weights_only=False)["model"].values()
    else:
        tensors = [t for f in checkpoint.glob("*.safetensors") for t in load_file(f).values()]
    return [t for t in tensors if t.is_floating_point()]


@pytest.mark.parametrize("stage", list(CASES))
def test_a_non_finite_loss_stops_the_stage_naming_the_step_and_the_last_good_checkpoint(stage, smoke_reward,
                                                                                        smoke_runs, capsys):
    parents = {"pretrain": smoke_runs / "smoke/pretrain/model", "sft": smoke_runs / "smoke/sft/model",
               "reward": smoke_runs / "smoke/reward/model"}
    command = [part.format(**parents) for part in CASES[stage]]
    capsys.readouterr()
    assert rlhf_lab(command + ["--learning_rate", "1e30", "--runs_root", str(smoke_runs), "--recipe", f"nan-{stage}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # after the loading bars of transformers and datasets, the one error line
    print(f"{stage}: {line}")
    found = re.search(r"became (nan|inf|-inf|NaN or infinite) (?:at|after) step (\d+); last good checkpoint: (\S+)", line)
    assert found, line
    step, checkpoint = int(found.group(2)), Path(found.group(3))
    assert step >= 2 and checkpoint.is_dir() and int(re.sub(r"\D", "", checkpoint.name)) < step, line
    weights = checkpoint_weights(checkpoint)
    assert weights and all(torch.isfinite(w).all() for w in weights), line
    run = checkpoint.parent.parent
    assert json.loads((run / "manifest.json").read_text())["status"] == "running" and not (run / "model").exists()
