"""Every stage survives SIGKILL at a random step: `--resume` finishes where an uninterrupted run finishes.

Each case runs a stage twice on the smoke parents, in recipes of its own: once straight through (the
reference) and once in a child process that SIGKILLs itself at a random step between two checkpoints (after
that step's gradients, before its optimizer step: `recipes/core/kill_switch.py`), then resumed through the CLI.
The kill is placed by the step, not by the clock, so it lands at the same point on a fast machine and a slow
one. `rlhf-lab run`'s resume of an interrupted recipe is tested in
test_run_compare.py, the over-optimisation experiment's in test_overoptimization.py.

The kill step is drawn afresh each run and printed; set RLHF_LAB_KILL_SEED to replay one.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes.core.cli import main as rlhf_lab
from recipes.core.kill_switch import ENV as KILL_ENV
from recipes.core.rundir import weights_hash

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes/smoke"

# stage: (command after `rlhf-lab`, checkpoint every, steps, metrics compared, tolerance)
# Tolerances: 0 means the same weights, bit for bit. The online methods get their RNG, KL controller and
# batch of rollouts back from the checkpoint and so far have come out bit-identical too on CPU (the test
# prints it); their stated tolerance, 1e-4 on every weight and metric, leaves room for sampling kernels
# that are not deterministic across a restart on other hardware.
ALIGN = ["--sft_model_name_or_path", "{sft}", "--reward_model_name_or_path", "{reward}", "--eval_num_prompts", "4"]
CASES = {
    "pretrain": (["pretrain", "--config", str(SMOKE / "pretrain.yaml"), "--max_steps", "60", "--save_steps", "10",
                  "--eval_steps", "30", "--save_total_limit", "2"],
                 10, 60, ("train_loss", "eval_loss", "initial_eval_loss"), 0.0),
    "sft": (["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", "{pretrain}",
             "--max_steps", "20", "--save_steps", "2", "--eval_steps", "20", "--eval_num_prompts", "2"],
            2, 20, ("train_loss", "mean_train_loss", "eval_loss", "gold_reward"), 0.0),
    "reward": (["reward", "--config", str(SMOKE / "reward.yaml"), "--model_name_or_path", "{sft}",
                "--max_steps", "16", "--save_steps", "2", "--eval_steps", "16", "--save_total_limit", "2",
                "--eval_num_prompts", "2"],
               2, 16, ("train_loss", "mean_train_loss", "accuracy", "gold_rank_correlation"), 0.0),
    "dpo": (["align", "--method", "dpo", "--config", str(SMOKE / "align-dpo.yaml"), *ALIGN,
             "--max_steps", "8", "--save_steps", "2", "--eval_every", "8"],
            2, 8, ("train_loss", "gold_reward", "kl"), 0.0),
    "kto": (["align", "--method", "kto", "--config", str(SMOKE / "align-kto.yaml"), *ALIGN,
             "--max_steps", "8", "--save_steps", "2", "--eval_every", "8"],
            2, 8, ("train_loss", "gold_reward", "kl"), 0.0),
    "grpo": (["align", "--method", "grpo", "--config", str(SMOKE / "align-grpo.yaml"), *ALIGN,
              "--max_steps", "6", "--save_steps", "1", "--eval_every", "6"],
             1, 6, ("train_reward", "gold_reward", "kl"), 1e-4),
    "rloo": (["align", "--method", "rloo", "--config", str(SMOKE / "align-rloo.yaml"), *ALIGN,
              "--max_steps", "6", "--save_steps", "1", "--eval_every", "6"],
             1, 6, ("train_reward", "gold_reward", "kl"), 1e-4),
    **{member: (["align", "--method", member, "--config", str(SMOKE / f"align-{member}.yaml"), *ALIGN,
                 "--max_steps", "4", "--save_steps", "1", "--eval_every", "4"],
                1, 4, ("train_reward", "gold_reward", "kl", "reward_queries", "tokens_generated"), 1e-4)
       for member in ("dr-grpo", "dapo", "gspo")},
    "online-dpo": (["align", "--method", "online-dpo", "--config", str(SMOKE / "align-online-dpo.yaml"), *ALIGN,
                    "--max_steps", "4", "--save_steps", "1", "--eval_every", "4"],
                   1, 4, ("train_reward", "gold_reward", "kl", "reward_queries", "preference_labels"), 1e-4),
    **{method: (["align", "--method", method, "--config", str(SMOKE / f"align-{method}.yaml"), *ALIGN,
                 "--max_steps", "6", "--save_steps", "2", "--eval_every", "6"],
                2, 6, ("train_loss", "gold_reward", "kl"), 0.0) for method in ("simpo", "orpo")},
    "ppo": (["align", "--method", "ppo", "--config", str(SMOKE / "align-ppo.yaml"), *ALIGN,
             "--max_steps", "5", "--save_steps", "1", "--eval_every", "5"],
            1, 5, ("train_reward", "train_kl", "train_kl_coef", "gold_reward", "kl"), 1e-4),
}


def stage_dir(stage: str) -> str:
    return stage if stage in ("pretrain", "sft", "reward") else f"align-{stage}"


def completed_checkpoints(checkpoints: Path) -> list[int]:
    """Steps of the checkpoints a resume could use (trainer_state.json or PPO's state.pt written last)."""
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name.split("-")[-1]) for p in checkpoints.glob("*-*") if p.name.split("-")[-1].isdigit()
                  and ((p / "trainer_state.json").is_file() or (p / "state.pt").is_file()))


def kill_seed() -> int:
    return int(os.environ.get("RLHF_LAB_KILL_SEED") or random.SystemRandom().randrange(10**6))


@pytest.mark.parametrize("stage", list(CASES))
def test_a_stage_killed_at_a_random_step_resumes_to_the_uninterrupted_result(stage, smoke_reward, smoke_runs):
    template, every, steps, keys, tolerance = CASES[stage]
    parents = {"pretrain": smoke_runs / "smoke/pretrain/model", "sft": smoke_runs / "smoke/sft/model",
               "reward": smoke_runs / "smoke/reward/model"}
    command = [part.format(**parents) for part in template] + ["--runs_root", str(smoke_runs)]

    assert rlhf_lab(command + ["--recipe", f"kill-{stage}-reference"]) == 0
    reference = smoke_runs / f"kill-{stage}-reference" / stage_dir(stage)

    seed = kill_seed()
    rng = random.Random(seed)
    after = rng.randrange(every, steps - 2 * every + 1, every)  # a checkpoint well before the last step
    kill_at = rng.randint(after + 1, after + every)  # then a step after it, before the next checkpoint
    print(f"RLHF_LAB_KILL_SEED={seed}: {stage} kills itself before completing step {kill_at} "
          f"(last checkpoint: step {after})")
    killed = smoke_runs / f"kill-{stage}" / stage_dir(stage)
    child = subprocess.run([sys.executable, "-m", "recipes.core.cli", *command, "--recipe", f"kill-{stage}"], cwd=REPO,
                           env={**os.environ, KILL_ENV: str(kill_at)}, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, f"{stage} was not killed at step {kill_at} (rc {child.returncode}): {child.stderr[-2000:]}"
    assert json.loads((killed / "manifest.json").read_text())["status"] != "finished"
    assert not (killed / "model").exists()
    assert completed_checkpoints(killed / "checkpoints")[-1] == after  # nothing of the killed step was saved

    assert rlhf_lab(command + ["--recipe", f"kill-{stage}"]) == 2  # protected: neither restarted nor resumed silently
    assert rlhf_lab(command + ["--recipe", f"kill-{stage}", "--resume"]) == 0
    resumed = json.loads((killed / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    assert resumed["status"] == "finished" and len(resumed["resumed"]) == 1
    for key in keys:
        assert resumed["metrics"][key] == pytest.approx(expected["metrics"][key], abs=tolerance), key
    if tolerance == 0.0:
        assert weights_hash(killed / "model") == weights_hash(reference / "model")
    else:
        from safetensors.torch import load_file

        got, want = load_file(killed / "model/model.safetensors"), load_file(reference / "model/model.safetensors")
        assert all(torch.allclose(got[k], want[k], atol=tolerance) for k in want)
        print(f"{stage}: resumed weights bit-identical: {all(torch.equal(got[k], want[k]) for k in want)}")


def test_best_of_n_killed_while_sampling_resumes_to_the_same_choice(smoke_reward, smoke_runs):
    """Best-of-n trains nothing and keeps no checkpoint: a resumed run samples again, with the same seeds."""
    command = ["align", "--method", "best-of-n", "--config", str(SMOKE / "align-best-of-n.yaml"),
               "--sft_model_name_or_path", str(smoke_runs / "smoke/sft/model"),
               "--reward_model_name_or_path", str(smoke_runs / "smoke/reward/model"),
               "--n", "16", "--runs_root", str(smoke_runs)]
    assert rlhf_lab(command + ["--recipe", "kill-best-of-n-reference"]) == 0
    reference = smoke_runs / "kill-best-of-n-reference/align-best-of-n"

    seed = kill_seed()
    kill_at = random.Random(seed).randint(1, 15)
    print(f"RLHF_LAB_KILL_SEED={seed}: best-of-n kills itself before drawing candidate {kill_at} of 16")
    killed = smoke_runs / "kill-best-of-n/align-best-of-n"
    child = subprocess.run([sys.executable, "-m", "recipes.core.cli", *command, "--recipe", "kill-best-of-n"], cwd=REPO,
                           env={**os.environ, KILL_ENV: str(kill_at)}, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, f"best-of-n was not killed (rc {child.returncode}): {child.stderr[-2000:]}"
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"

    assert rlhf_lab(command + ["--recipe", "kill-best-of-n", "--resume"]) == 0
    resumed = json.loads((killed / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    assert resumed["status"] == "finished" and len(resumed["resumed"]) == 1
    for key in ("gold_reward", "best_proxy_reward", "kl", "tokens_generated"):
        assert resumed["metrics"][key] == expected["metrics"][key], key


class _RunsCode:
    """What a malicious state file would hold: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("stage, state_name", [("ppo", "state.pt"), ("sft", "exact_resume_0.pt")])
def test_a_crafted_checkpoint_state_is_refused_not_run(stage, state_name, smoke_reward, smoke_runs, tmp_path, capsys):
    """Checkpoint state is loaded as tensors and plain data only: a pickle that would run code stops the resume
    with one line naming the file, and the code does not run."""
    template = CASES[stage][0]
    parents = {"pretrain": smoke_runs / "smoke/pretrain/model", "sft": smoke_runs / "smoke/sft/model",
               "reward": smoke_runs / "smoke/reward/model"}
    command = [part.format(**parents) for part in template] + ["--runs_root", str(smoke_runs),
                                                               "--recipe", f"crafted-{stage}"]
    child = subprocess.run([sys.executable, "-m", "recipes.core.cli", *command], cwd=REPO, capture_output=True,
                           env={**os.environ, KILL_ENV: "4"}, timeout=300)
    assert child.returncode == -9
    checkpoints = smoke_runs / f"crafted-{stage}" / stage_dir(stage) / "checkpoints"
    state = checkpoints / f"checkpoint-{completed_checkpoints(checkpoints)[-1]}" / state_name
    assert state.is_file()
    marker = tmp_path / "code-ran"
    torch.save({"step": 3, "payload": _RunsCode(marker)}, state)
    capsys.readouterr()
    assert rlhf_lab(command + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # after the models' loading bars
    assert f"error: {state}: refused to load" in line and "posix.system" in line, line
    assert not marker.exists()


def test_ppo_refuses_to_resume_on_another_number_of_processes(smoke_reward, smoke_runs, capsys):
    """Each rollout's prompts are shared out by the number of processes: a checkpoint saved by two processes is
    not resumed by one, with one line saying so."""
    parents = {"pretrain": smoke_runs / "smoke/pretrain/model", "sft": smoke_runs / "smoke/sft/model",
               "reward": smoke_runs / "smoke/reward/model"}
    command = [part.format(**parents) for part in CASES["ppo"][0]] + ["--runs_root", str(smoke_runs),
                                                                       "--recipe", "processes-ppo"]
    child = subprocess.run([sys.executable, "-m", "recipes.core.cli", *command], cwd=REPO, capture_output=True,
                           env={**os.environ, KILL_ENV: "3"}, timeout=300)
    assert child.returncode == -9
    checkpoints = smoke_runs / "processes-ppo" / "align-ppo" / "checkpoints"
    state_file = checkpoints / f"checkpoint-{completed_checkpoints(checkpoints)[-1]}" / "state.pt"
    state = torch.load(state_file, weights_only=False)
    assert state["processes"] == 1
    torch.save({**state, "processes": 2}, state_file)
    capsys.readouterr()
    assert rlhf_lab(command + ["--resume"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: {checkpoints}" in line and "saved by a run on 2 process(es), resumed on 1" in line, line
