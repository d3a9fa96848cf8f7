"""The pretraining stage on the smoke recipe, through the CLI a user runs."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import base_model  # noqa: F401  (registers the architecture with the Auto classes)
from recipes.core.cli import main as rlhf_lab
from recipes.core.kill_switch import ENV as KILL_ENV

SMOKE = "recipes/smoke/pretrain.yaml"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs_root(smoke_runs):
    return smoke_runs


@pytest.fixture
def smoke_run(smoke_pretrain):
    return smoke_pretrain


def test_run_directory_follows_the_contract(smoke_run):
    assert {"config.yaml", "manifest.json", "model", "checkpoints", "tb"} <= {p.name for p in smoke_run.iterdir()}
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["recipe"] == "smoke"
    assert manifest["status"] == "finished" and manifest["finished"] >= manifest["started"]
    assert manifest["seed"] == 0 and manifest["parents"] == []
    assert manifest["versions"]["torch"] == importlib.metadata.version("torch")
    assert len(manifest["data"]["fingerprint"]) >= 8
    assert manifest["metrics"]["steps"] == 100
    config = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert config["max_steps"] == 100 and config["hidden_size"] == 64 and config["recipe"] == "smoke"
    assert "resume" not in config and "runs_root" not in config


def test_pretraining_loss_falls_well_below_its_start(smoke_run):
    metrics = json.loads((smoke_run / "manifest.json").read_text())["metrics"]
    # An untrained model over a 512-token vocabulary starts near ln(512) = 6.2.
    assert metrics["initial_eval_loss"] > 5.0
    assert metrics["eval_loss"] < 0.6 * metrics["initial_eval_loss"], metrics


def test_model_loads_with_auto_classes_and_generates(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smoke_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "model")
    ids = tokenizer(tokenizer.bos_token + "Once upon a time", add_special_tokens=False, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_tensorboard_events_hold_the_logged_scalars_and_samples(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(smoke_run / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
                "train/mfu", "eval/loss"):
        assert tag in scalars, tag
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 20 and losses[-1] < losses[0]
    lrs = [e.value for e in events.Scalars("train/learning_rate")]
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[-1] < 0.2 * max(lrs)  # warmup, then cosine decay
    assert all(0 < e.value < 1 for e in events.Scalars("train/mfu"))
    assert [e.step for e in events.Scalars("eval/loss")] == [0, 25, 50, 75, 100]
    texts = events.Tags()["tensors"]
    sample_tag = next(t for t in texts if t.startswith("samples"))
    sample = events.Tensors(sample_tag)[-1].tensor_proto.string_val[0].decode()
    assert "Once upon a time" in sample and "What is 2 + 3?" in sample


def test_a_finished_run_is_not_overwritten_without_overwrite(smoke_run, runs_root, capsys):
    before = (smoke_run / "manifest.json").read_text()
    assert rlhf_lab(["pretrain", "--config", str(REPO / SMOKE), "--runs_root", str(runs_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a finished pretrain run" in err[0] and "--overwrite" in err[0]
    assert (smoke_run / "manifest.json").read_text() == before
    assert rlhf_lab(["pretrain", "--config", str(REPO / SMOKE), "--runs_root", str(runs_root), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert (smoke_run / "manifest.json").read_text() == before


def test_killed_run_resumes_to_the_same_losses(smoke_run, runs_root):
    """A real child process killed after its first checkpoint (it SIGKILLs itself at step 30, the checkpoint is
    at 25: recipes/core/kill_switch.py), resumed, ends where an uninterrupted run ends."""
    command = [sys.executable, "-m", "recipes.core.cli", "pretrain", "--config", str(REPO / SMOKE),
               "--runs_root", str(runs_root), "--recipe", "killed"]
    child = subprocess.run(command, cwd=REPO, capture_output=True, env={**os.environ, KILL_ENV: "30"}, timeout=300)
    killed = runs_root / "killed" / "pretrain"
    assert child.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"

    # Without --resume the interrupted run is protected, not silently restarted.
    assert rlhf_lab(command[3:]) == 2
    assert rlhf_lab(command[3:] + ["--resume"]) == 0

    resumed = json.loads((killed / "manifest.json").read_text())
    reference = json.loads((smoke_run / "manifest.json").read_text())
    assert resumed["status"] == "finished" and len(resumed["resumed"]) == 1
    for key in ("initial_eval_loss", "eval_loss", "train_loss"):
        assert resumed["metrics"][key] == pytest.approx(reference["metrics"][key], abs=1e-6), key


def test_saved_config_reruns_to_the_same_result(smoke_run, runs_root):
    assert rlhf_lab(["pretrain", "--config", str(smoke_run / "config.yaml"), "--recipe", "again",
                     "--runs_root", str(runs_root)]) == 0
    again = json.loads((runs_root / "again" / "pretrain" / "manifest.json").read_text())["metrics"]
    first = json.loads((smoke_run / "manifest.json").read_text())["metrics"]
    assert again["eval_loss"] == pytest.approx(first["eval_loss"], abs=1e-6)
