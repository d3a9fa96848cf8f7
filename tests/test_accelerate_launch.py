"""Pretraining and SFT under `accelerate launch --num_processes 2` on the CPU (gloo) against one process.

Two processes of batch 8 are one step of batch 16, so each is compared with a single process of batch 16
for the same number of steps. Tolerances, from the measured gaps (pretraining 0.02 nats of eval loss,
SFT 0.005 of train loss): pretraining eval and train loss within 0.1 nats (the two processes draw other
random windows than the single one, so only the size of the gap is fixed); SFT train loss within 0.05
(the same conversations, split across the processes). SFT's eval loss is not compared: on the smoke
recipe's few evaluation conversations, transformers pads the two shards to equal length and averages per
process, a different average of the same losses.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.core.cli import main as rlhf_lab

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes/smoke"


def launch(argv: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` with the shipped DDP config, two processes of one thread each."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes/accelerate_configs/ddp.yaml"), "--num_processes", "2", "-m", "recipes.core.cli", *argv]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    return manifest["metrics"]


def test_pretraining_on_two_processes_reaches_the_single_process_loss(smoke_runs):
    common = ["pretrain", "--config", str(SMOKE / "pretrain.yaml"), "--runs_root", str(smoke_runs),
              "--max_steps", "60", "--eval_steps", "60", "--save_steps", "30"]
    result = launch(common + ["--recipe", "ddp-2"])
    assert result.stdout.count("wrote ") == 1  # one process saved the model
    assert rlhf_lab(common + ["--recipe", "ddp-1", "--per_device_train_batch_size", "16"]) == 0
    two, one = metrics(smoke_runs / "ddp-2/pretrain"), metrics(smoke_runs / "ddp-1/pretrain")
    assert two["tokens"] == one["tokens"]  # the same global batch: 2 x 8 = 16 rows per step
    assert two["initial_eval_loss"] == pytest.approx(one["initial_eval_loss"], abs=1e-4)  # the same start
    assert two["eval_loss"] < two["initial_eval_loss"] - 2  # it learned
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=0.1)
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=0.1)


def test_sft_on_two_processes_reaches_the_single_process_loss(smoke_pretrain, smoke_runs):
    common = ["sft", "--config", str(SMOKE / "sft.yaml"), "--runs_root", str(smoke_runs),
              "--model_name_or_path", str(smoke_pretrain / "model"), "--num_train_epochs", "2",
              "--eval_num_prompts", "2"]
    result = launch(common + ["--recipe", "ddp-2"])
    assert result.stdout.count("wrote ") == 1
    assert rlhf_lab(common + ["--recipe", "ddp-1", "--per_device_train_batch_size", "16"]) == 0
    two, one = metrics(smoke_runs / "ddp-2/sft"), metrics(smoke_runs / "ddp-1/sft")
    assert two["steps"] == one["steps"]  # each process took half of every batch, not all of it
    assert two["mean_train_loss"] < two["initial_train_loss"]
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=0.05)
    assert two["mean_train_loss"] == pytest.approx(one["mean_train_loss"], abs=0.05)


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_shipped_accelerate_configs_load(name):
    """What `accelerate launch --config_file` reads first: each file is a valid accelerate config of its kind."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "recipes/accelerate_configs" / f"{name}.yaml"))
    kind = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")
    assert config.distributed_type.value == kind
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"


def test_best_of_n_on_two_processes_chooses_exactly_what_one_process_does(smoke_reward, smoke_runs):
    # Candidate k comes from its own stream whichever process draws it: two processes share the n candidates
    # out and gather them, and everything after is the single process's computation. One thread each, so the
    # kernels (and every sampled token) are the same on both sides.
    common = ["align", "--method", "best-of-n", "--config", str(SMOKE / "align-best-of-n.yaml"),
              "--runs_root", str(smoke_runs)]
    result = launch(common + ["--run_name", "align-best-of-n-ddp2"])
    assert result.stdout.count("wrote ") == 1
    assert "process 1 of 2 samples candidates 0, 2" in result.stdout
    assert "process 2 of 2 samples candidates 1, 3" in result.stdout
    single = subprocess.run([sys.executable, "-m", "recipes.core.cli", *common, "--run_name", "align-best-of-n-ddp1"],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-4000:]
    two, one = (smoke_runs / "smoke" / f"align-best-of-n-ddp{k}" for k in (2, 1))
    m2, m1 = metrics(two), metrics(one)
    for key in ("gold_reward", "gold_gain", "best_proxy_reward", "kl", "tokens_generated", "reward_queries"):
        assert m2[key] == m1[key], key
    assert json.loads((two / "eval_per_prompt.json").read_text()) == json.loads((one / "eval_per_prompt.json").read_text())


def ppo_scalars(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload()
    return {tag[len("ppo/"):]: {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"] if tag.startswith("ppo/")}


def test_ppo_on_two_processes_samples_what_one_process_of_twice_the_batch_does(smoke_reward, smoke_runs):
    # Two processes of 4 answers per rollout against one of 8: with one sampling block of 4 answers each, the
    # first rollout's answers are the same on both sides, so its reward, length and KL are equal, and so are
    # its explained variance and mean value, which need the sums over both processes. After the first update
    # the sides part (each process shuffles its own half into minibatches), so later rollouts are only alike.
    common = ["align", "--method", "ppo", "--config", str(SMOKE / "align-ppo.yaml"), "--runs_root", str(smoke_runs),
              "--local_rollout_forward_batch_size", "4", "--save_steps", "0"]
    result = launch(common + ["--run_name", "align-ppo-ddp2", "--per_device_train_batch_size", "2"])
    assert result.stdout.count("wrote ") == 1 and result.stdout.count("rollout 3/3") == 1
    single = subprocess.run([sys.executable, "-m", "recipes.core.cli", *common, "--run_name", "align-ppo-ddp1",
                             "--per_device_train_batch_size", "4"],
                            cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-4000:]
    two, one = (smoke_runs / "smoke" / f"align-ppo-ddp{k}" for k in (2, 1))
    m2, m1 = metrics(two), metrics(one)
    assert (m2["processes"], m1["processes"]) == (2, 1)
    assert m2["rollout_batch_size"] == m1["rollout_batch_size"] == 8
    assert m2["train_rollouts"] == m1["train_rollouts"] == 3 and m2["evaluations"] == m1["evaluations"] == 4
    s2, s1 = ppo_scalars(two), ppo_scalars(one)
    for key in ("reward", "length", "kl", "missing_eos_rate", "explained_variance", "value_mean"):
        assert s2[key][1] == pytest.approx(s1[key][1], abs=1e-5), key
    assert s2["first_minibatch_ratio_deviation"][1] <= 1e-6  # each process's first ratio is 1
    assert s2["kl"][3] > 0 and s2["reward"][3] != s2["reward"][1]  # the policy moved, the same on both processes
