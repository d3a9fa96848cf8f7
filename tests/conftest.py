"""Shared test setup: everything offline, every cache in a temporary folder."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RLHF_LAB_CACHE", tempfile.mkdtemp(prefix="rlhf-lab-cache-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from recipes.core.cli import main as rlhf_lab

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """One runs root for the whole session: later stages build on the smoke runs of earlier ones."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def smoke_pretrain(smoke_runs) -> Path:
    """The finished smoke pretraining run (runs/smoke/pretrain), made once through the CLI."""
    assert rlhf_lab(["pretrain", "--config", str(REPO / "recipes/smoke/pretrain.yaml"),
                     "--runs_root", str(smoke_runs)]) == 0
    return smoke_runs / "smoke" / "pretrain"


@pytest.fixture(scope="session")
def smoke_sft(smoke_runs, smoke_pretrain) -> Path:
    """The finished smoke SFT run (runs/smoke/sft), made once through the CLI on top of smoke_pretrain."""
    assert rlhf_lab(["sft", "--config", str(REPO / "recipes/smoke/sft.yaml"), "--runs_root", str(smoke_runs)]) == 0
    return smoke_runs / "smoke" / "sft"


@pytest.fixture(scope="session")
def smoke_reward(smoke_sft, smoke_runs) -> Path:
    """The finished smoke reward-model run (runs/smoke/reward), made once through the CLI."""
    assert rlhf_lab(["reward", "--config", str(REPO / "recipes/smoke/reward.yaml"),
                     "--runs_root", str(smoke_runs)]) == 0
    return smoke_runs / "smoke" / "reward"
