"""The reward over-optimisation experiment (alignment/overoptimization.py): Gao's fits by hand, the
label flips, and the recipe end to end in a smoke size through the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from alignment.gao_fits import fit_gao, gao_curve
from recipes.core.cli import main as rlhf_lab
from recipes.core.kill_switch import ENV as KILL_ENV
from reward.train import flip_labels

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method, alpha, beta, peak", [
    ("best-of-n", 0.8, 0.25, 0.8 / (2 * 0.25)),
    ("ppo", 0.5, 0.3, math.exp(0.5 / 0.3 - 1)),
])
def test_gao_fits_recover_known_curves_and_their_peak(method, alpha, beta, peak):
    d = np.linspace(0.1, 3.0, 12)
    gain = gao_curve(d, alpha, beta, method)
    fit = fit_gao(d, gain, method)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-9) and fit["beta"] == pytest.approx(beta, abs=1e-9)
    assert fit["peak_d"] == pytest.approx(peak, rel=1e-9)
    # the peak is the curve's maximum
    assert fit["peak_gain"] == pytest.approx(float(gao_curve(np.linspace(1e-3, 6, 60001), alpha, beta, method).max()), abs=1e-6)


def test_a_curve_that_never_turns_down_has_no_peak_and_one_that_only_falls_peaks_at_the_start():
    d = np.linspace(0.1, 2.0, 8)
    assert fit_gao(d, 0.3 * d, "best-of-n")["peak_d"] is None  # beta = 0: gold never falls
    falling = fit_gao(d, gao_curve(d, -0.1, 0.2, "best-of-n"), "best-of-n")
    assert falling["peak_d"] == 0.0 and falling["peak_gain"] == 0.0


def test_label_flips_swap_the_asked_share_of_pairs_and_nothing_else():
    pairs = {"prompt": [f"p{i}" for i in range(2000)], "chosen": [f"c{i}" for i in range(2000)],
             "rejected": [f"r{i}" for i in range(2000)]}
    flipped = flip_labels(pairs, 0.3, seed=0)
    swapped = [c.startswith("r") for c in flipped["chosen"]]
    assert 0.27 < np.mean(swapped) < 0.33
    for i, s in enumerate(swapped):
        assert {flipped["chosen"][i], flipped["rejected"][i]} == {f"c{i}", f"r{i}"}
        assert flipped["rejected"][i] == (f"c{i}" if s else f"r{i}")
    assert flipped == flip_labels(pairs, 0.3, seed=0) and flipped != flip_labels(pairs, 0.3, seed=1)


def smoke_argv(smoke_sft: Path, smoke_runs: Path, recipe: str) -> list[str]:
    return ["overoptimization", "--config", str(REPO / "recipes/overoptimization/overoptimization.yaml"),
            "--sft_model_name_or_path", str(smoke_sft / "model"), "--runs_root", str(smoke_runs),
            "--recipe", recipe, "--proxy_config", str(REPO / "recipes/smoke/reward.yaml"),
            "--ppo_config", str(REPO / "recipes/smoke/align-ppo.yaml"), "--proxy_pairs", "60", "30",
            "--proxy_flip_rates", "0", "0.4", "--best_of_n", "1", "2", "4", "--ppo_max_steps", "2",
            "--ppo_eval_every", "1", "--eval_prompts", "world:eval?size=smoke&seed=0", "--eval_num_prompts", "8",
            "--eval_max_new_tokens", "24"]


@pytest.fixture(scope="module")
def overopt_smoke(smoke_sft, smoke_runs) -> str:
    """The smoke-size experiment run once, uninterrupted (the reference of the kill test too); its console."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert rlhf_lab(smoke_argv(smoke_sft, smoke_runs, "overopt-smoke")) == 0
    return out.getvalue()


def test_overoptimization_recipe_runs_in_smoke_size(overopt_smoke, smoke_runs):
    assert "| proxy | method |" in overopt_smoke
    run = smoke_runs / "overopt-smoke" / "overoptimization"
    assert json.loads((run / "manifest.json").read_text())["status"] == "finished"
    results = json.loads((run / "results.json").read_text())
    assert list(results["proxies"]) == ["reward-60pairs", "reward-30pairs-flip40"]
    for name, entry in results["proxies"].items():
        bon, ppo = entry["methods"]["best-of-n"], entry["methods"]["ppo"]
        assert [p["n"] for p in bon["points"]] == [1, 2, 4]
        assert [p["kl_bound"] for p in bon["points"]] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])
        assert bon["points"][0]["kl"] == 0.0 and all(0 <= p["kl"] <= p["kl_bound"] + 1e-12 for p in bon["points"])
        selected = [p["selected"] for p in bon["points"]]  # the proxy less missing_eos_penalty: what was maximised
        assert selected == sorted(selected)  # best of more samples never scores lower on what chose them
        assert [p["step"] for p in ppo["points"]] == [0, 1, 2]
        assert ppo["points"][0]["kl"] == pytest.approx(0.0, abs=1e-6)
        assert set(bon["fit"]) == {"alpha", "beta", "peak_d", "peak_gain"}
        config = yaml.safe_load((smoke_runs / "overopt-smoke" / name / "config.yaml").read_text())
        assert config["max_train_pairs"] == (60 if name == "reward-60pairs" else 30)
        assert (smoke_runs / "overopt-smoke" / f"align-ppo-{name}" / "model" / "config.json").is_file()
    assert yaml.safe_load((smoke_runs / "overopt-smoke" / "reward-30pairs-flip40" / "config.yaml").read_text())[
        "label_flip_rate"] == 0.4
    png = (run / "overoptimization.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| reward-60pairs | best-of-n |" in (run / "results.md").read_text()


def test_overoptimization_without_the_parent_sft_run_names_the_command(tmp_path, capsys):
    assert rlhf_lab(["overoptimization", "--config", str(REPO / "recipes/overoptimization/overoptimization.yaml"),
                     "--runs_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rlhf-lab run recipes/tinyworld" in err, err


def test_overoptimization_killed_at_a_random_step_resumes_to_the_same_results(overopt_smoke, smoke_sft, smoke_runs):
    """The experiment SIGKILLs itself inside a random one of its proxy and PPO runs, at a
    random step (recipes/core/kill_switch.py); --resume keeps the finished runs, continues the interrupted one and
    ends with the same results."""
    import os
    import random
    import subprocess
    import sys

    seed = int(os.environ.get("RLHF_LAB_KILL_SEED") or random.SystemRandom().randrange(10**6))
    rng = random.Random(seed)
    after, step = rng.randrange(1, 4), rng.randint(1, 2)  # of the 4 runs (2 proxies, then 2 PPO of 2 steps)
    print(f"RLHF_LAB_KILL_SEED={seed}: killing run {after + 1} of 4 before it completes step {step}")
    argv = smoke_argv(smoke_sft, smoke_runs, "overopt-killed")
    run = smoke_runs / "overopt-killed" / "overoptimization"
    child = subprocess.run([sys.executable, "-m", "recipes.core.cli", *argv], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, KILL_ENV: f"{step}@{after + 1}"}, timeout=300)
    assert child.returncode == -9, f"not killed (rc {child.returncode}): {child.stderr[-2000:]}"
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    assert len(json.loads((run / "checkpoints/finished.json").read_text())) == after

    assert rlhf_lab(argv) == 2  # protected
    assert rlhf_lab(argv + ["--resume"]) == 0
    resumed = json.loads((run / "results.json").read_text())
    reference = json.loads((smoke_runs / "overopt-smoke/overoptimization/results.json").read_text())
    got, want = dict(leaves(resumed)), dict(leaves(reference))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key


def leaves(obj, path=""):
    """(path, value) of every number, string and None in a JSON document."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, f"{path}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from leaves(value, f"{path}/{i}")
    else:
        yield path, obj
