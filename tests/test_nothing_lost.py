"""A finished stage survives its own rerun: killed, failing or finished, the rerun never leaves it half-replaced.

`--overwrite` runs the new run in runs/<recipe>/.<stage>.rerun/ and swaps it into place only when it has
finished; until then the finished run stays byte for byte as it was, for every stage that reads it.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from recipes.core.cli import main as rlhf_lab
from recipes.core.config import parse_config
from recipes.core.kill_switch import ENV as KILL_ENV
from recipes.core.rundir import RunDir, atomic_write_text
from recipes.core.runner import resumable
from recipes.sft import SFTStageConfig

REPO = Path(__file__).resolve().parents[1]
SFT = str(REPO / "recipes/smoke/sft.yaml")


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_or_failing_rerun_leaves_the_finished_run_intact_until_a_rerun_finishes(smoke_pretrain, smoke_runs,
                                                                                          capsys):
    command = ["sft", "--config", SFT, "--model_name_or_path", str(smoke_pretrain / "model"), "--max_steps", "20",
               "--save_steps", "2", "--eval_steps", "20", "--eval_num_prompts", "2", "--runs_root", str(smoke_runs),
               "--recipe", "keep"]
    assert rlhf_lab(command) == 0
    final, rerun = smoke_runs / "keep/sft", smoke_runs / "keep/.sft.rerun"
    before = digest(final)

    # A rerun that fails (its loss blows up) leaves the finished run as it was.
    capsys.readouterr()
    assert rlhf_lab(command + ["--learning_rate", "1e30", "--warmup_steps", "0", "--overwrite"]) == 2
    assert "became nan at step" in capsys.readouterr().err
    assert digest(final) == before

    # A rerun with another learning rate, killed after its second checkpoint: the same.
    changed = command + ["--learning_rate", "1e-3"]
    child = subprocess.run([sys.executable, "-m", "recipes.core.cli", *changed, "--overwrite"], cwd=REPO,
                           capture_output=True, env={**os.environ, KILL_ENV: "5"}, timeout=300)
    assert child.returncode == -signal.SIGKILL
    assert (rerun / "checkpoints/checkpoint-4/trainer_state.json").is_file()
    assert digest(final) == before  # not a byte of the finished run touched
    assert RunDir(smoke_runs, "keep", "sft").is_finished()  # so the stages after it still find it
    assert json.loads((rerun / "manifest.json").read_text())["status"] == "running"

    # Without a flag the user is told about both runs, and nothing changes.
    assert rlhf_lab(changed) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # after the model's loading bar
    assert "Traceback" not in err and "interrupted rerun" in line and "--resume" in line and str(rerun) in line, err
    assert digest(final) == before

    # Resumed, the rerun finishes and only then takes the finished run's place; nothing is left beside it.
    assert rlhf_lab(changed + ["--resume"]) == 0
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["resumed"]) == 1 and manifest["metrics"]["steps"] == 20
    assert "learning_rate: 0.001" in (final / "config.yaml").read_text() and digest(final) != before
    assert not rerun.exists() and sorted(p.name for p in (smoke_runs / "keep").iterdir()) == [".lock", "sft"]


def test_the_runner_resumes_an_interrupted_rerun_beside_a_finished_run(tmp_path):
    """`rlhf-lab run` decides to resume from what it finds: an interrupted --overwrite rerun of the same config
    counts, one of another config does not (it is started over)."""
    config = parse_config(SFTStageConfig, ["--config", SFT, "--runs_root", str(tmp_path), "--recipe", "r"], "sft")
    run = RunDir(tmp_path, "r", "sft")
    run.start(config)
    (run.model_dir).mkdir()
    run.finish({})
    assert not resumable(run, config)  # finished, nothing interrupted

    config.overwrite = True
    rerun = RunDir(tmp_path, "r", "sft")
    rerun.start(config)  # staged beside the finished run
    assert rerun.path == rerun.rerun_path and run.is_finished()
    (rerun.checkpoints_dir / "checkpoint-2").mkdir(parents=True)
    atomic_write_text(rerun.checkpoints_dir / "checkpoint-2/trainer_state.json", "{}")
    assert resumable(RunDir(tmp_path, "r", "sft"), config)
    config.learning_rate = 1e-5
    assert not resumable(RunDir(tmp_path, "r", "sft"), config)
