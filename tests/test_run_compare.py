"""`rlhf-lab run` on the smoke recipe end to end, its skipping and reruns, and `rlhf-lab compare`'s
table, CSV, plots and TensorBoard data."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from recipes.core.cli import main as rlhf_lab
from recipes.core.kill_switch import ENV as KILL_ENV
from recipes.core.lock import recipe_lock
from recipes.core.rundir import weights_hash
from recipes.core.runner import plan
from recipes.core.stages import METHODS as METHOD_SPECS
from recipes.core.stages import STAGES as REGISTRY
from recipes.core.statistics import seed_interval

REPO = Path(__file__).resolve().parents[1]
METHODS = ["dpo", "kto", "grpo", "rloo", "ppo", "best-of-n"]
STAGES = ["world", "pretrain", "sft", "reward"] + [f"align-{m}" for m in METHODS] + ["compare"]


def outcomes(output: str) -> dict[str, str]:
    """{stage: "ran" | "skipped"} from the runner's output lines."""
    found = {}
    for stage, word in re.findall(r"^\[([\w-]+)\] (running|resuming|skipped)", output, flags=re.M):
        found[stage] = "skipped" if word == "skipped" else "ran"
    return found


def smoke_copy(parent: Path) -> Path:
    """A copy of recipes/smoke in parent/smoke with the six methods these tests follow: the runner does the same
    for any number, and the others have tests of their own (test_align_new_methods.py)."""
    folder = parent / "smoke"
    shutil.copytree(REPO / "recipes" / "smoke", folder)
    for path in folder.glob("align-*.yaml"):
        if path.stem[len("align-"):] not in METHODS:
            path.unlink()
    return folder


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """A copy of recipes/smoke the tests may edit, in a folder also named smoke."""
    return smoke_copy(tmp_path_factory.mktemp("recipes"))


@pytest.fixture(scope="module")
def first_run(recipe, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return runs, recipe


def run(recipe: Path, runs: Path, capsys, *extra: str) -> dict[str, str]:
    jobs = [] if "--jobs" in extra else ["--jobs", "1"]  # in-process: a smoke stage is shorter than a process start
    assert rlhf_lab(["run", str(recipe), "--runs_root", str(runs), *jobs, *extra]) == 0
    return outcomes(capsys.readouterr().out)


def test_run_then_rerun_skips_then_an_edited_key_reruns_that_stage_and_its_descendants(first_run, capsys):
    runs, recipe = first_run
    first = run(recipe, runs, capsys)
    assert sorted(first) == sorted(STAGES)
    assert all(first[s] == "ran" for s in STAGES if s != "world")  # the world may be cached by other tests
    for method in METHODS:
        manifest = json.loads((runs / "smoke" / f"align-{method}" / "manifest.json").read_text())
        assert manifest["status"] == "finished" and manifest["data"]["method"] == method
    assert (runs / "smoke" / "compare" / "compare.md").is_file()
    # every manifest records its parents in one shape, the roles the stage registry names, each a finished run
    specs = {**REGISTRY, **{f"align-{m}": METHOD_SPECS[m] for m in METHODS}}
    for stage in STAGES[1:-1]:
        manifest = json.loads((runs / "smoke" / stage / "manifest.json").read_text())
        parents = manifest["parents"]
        assert [p["role"] for p in parents] == list(specs[stage].parents), stage
        for parent in parents:
            assert parent["stage"] == parent["role"] and parent["model"] == str(runs / "smoke" / parent["role"] / "model")
            assert parent["weights_sha256"] == weights_hash(Path(parent["model"]))

    second = run(recipe, runs, capsys)
    assert second == dict.fromkeys(STAGES, "skipped")

    config = yaml.safe_load((recipe / "reward.yaml").read_text())
    config["learning_rate"] = config["learning_rate"] * 2
    (recipe / "reward.yaml").write_text(yaml.safe_dump(config))
    third = run(recipe, runs, capsys)
    assert {s for s, o in third.items() if o == "ran"} == {"reward", *[f"align-{m}" for m in METHODS], "compare"}
    assert third["pretrain"] == third["sft"] == "skipped"


def test_from_reruns_that_stage_and_every_later_one(first_run, capsys):
    runs, recipe = first_run
    rerun = run(recipe, runs, capsys, "--from", "align-ppo")
    assert {s for s, o in rerun.items() if o == "ran"} == {"align-ppo", "align-best-of-n", "compare"}


def test_set_overrides_one_key_and_seeds_repeat_the_alignment_stages(first_run, capsys):
    runs, recipe = first_run
    done = run(recipe, runs, capsys, "--seeds", "0,1", "--set", "align-best-of-n.n=3")
    assert done["align-best-of-n"] == "ran" and done["align-dpo"] == "skipped"
    assert {s for s, o in done.items() if s.endswith("-seed1")} == {f"align-{m}-seed1" for m in METHODS}
    assert all(done[f"align-{m}-seed1"] == "ran" for m in METHODS)
    manifest = json.loads((runs / "smoke" / "align-dpo-seed1" / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["data"]["method"] == "dpo"
    assert yaml.safe_load((runs / "smoke" / "align-best-of-n" / "config.yaml").read_text())["n"] == 3

    with open(runs / "smoke" / "compare" / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for method in ["sft"] + METHODS:
        seeds = [r["seed"] for r in rows if r["method"] == method]
        assert seeds == ["0", "1", "mean"], (method, seeds)
    mean = next(r for r in rows if r["method"] == "dpo" and r["seed"] == "mean")
    per_seed = [float(r["gold_reward"]) for r in rows if r["method"] == "dpo" and r["seed"] in ("0", "1")]
    assert float(mean["gold_reward"]) == pytest.approx(sum(per_seed) / 2)
    assert float(mean["gold_reward_low"]) <= float(mean["gold_reward"]) <= float(mean["gold_reward_high"])

    gains = [float(r["gold_gain"]) for r in rows if r["method"] == "dpo" and r["seed"] in ("0", "1")]
    assert (float(mean["gold_gain_low"]), float(mean["gold_gain_high"])) == pytest.approx(seed_interval(gains)[1:])
    assert "Ranking stability over 2 seeds: Kendall's W = " in (runs / "smoke" / "compare" / "compare.md").read_text()


def test_jobs_runs_the_alignment_stages_side_by_side_in_processes_of_their_own(first_run, capsys):
    runs, recipe = first_run
    assert rlhf_lab(["run", str(recipe), "--runs_root", str(runs), "--from", "align", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    done = outcomes(out)
    assert {s for s, o in done.items() if o == "ran"} >= {f"align-{m}" for m in METHODS} | {"compare"}
    for method in METHODS:
        assert f"[align-{method}] done in" in out
        log = (runs / "smoke" / "logs" / f"align-{method}.log").read_text()
        assert "gold" in log.splitlines()[-1]  # the stage's own closing line went to its log
        manifest = json.loads((runs / "smoke" / f"align-{method}" / "manifest.json").read_text())
        assert manifest["status"] == "finished"
    import os

    assert f"{max(1, (os.cpu_count() or 1) // 2)} thread(s)" in out  # the cores shared between the processes


def test_compare_holds_a_row_per_method_with_every_column_and_real_plots(first_run, capsys):
    runs, recipe = first_run
    if not (runs / "smoke" / "compare" / "compare.csv").is_file():
        run(recipe, runs, capsys)
    shutil.rmtree(runs / "smoke" / "compare")
    assert rlhf_lab(["compare", str(runs / "smoke")]) == 0
    out = capsys.readouterr().out
    assert "| method | seed | loss | trained on | gold | gain vs SFT | win vs SFT |" in out
    compare = runs / "smoke" / "compare"
    with open(compare / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = ["gold_reward", "gold_reward_low", "gold_reward_high", "gold_gain", "gold_gain_low", "gold_gain_high",
               "win_rate", "win_rate_low", "win_rate_high", "proxy_reward", "kl", "length",
               "gold/chat", "gold/math", "gold/safety", "gold/stories", "gold/words", "math_accuracy",
               "harmful_compliance", "over_refusal", "wall_time_s", "tokens_generated", "reward_queries",
               "preference_labels"]
    assert set(columns) <= set(rows[0])
    seed0 = [r for r in rows if r["seed"] == "0"]
    assert [r["method"] for r in seed0] == ["sft"] + METHODS
    for row in seed0[1:]:
        for column in columns:
            assert row[column] != "", (row["method"], column)
        assert float(row["wall_time_s"]) > 0
        sampled = row["method"] in ("grpo", "rloo", "ppo", "best-of-n")  # smoke DPO/KTO train on the world's pairs
        assert (int(float(row["tokens_generated"])) > 0) == sampled, row["method"]
        assert (int(float(row["reward_queries"])) > 0) == sampled, row["method"]  # the proxy scored what they drew
        assert (int(float(row["preference_labels"])) > 0) == (not sampled), row["method"]  # the world's pairs
        assert row["reward_funcs"] == ("proxy" if sampled else ""), row["method"]
        assert 0.0 <= float(row["win_rate"]) <= 1.0
        assert float(row["gold_gain_low"]) <= float(row["gold_gain"]) <= float(row["gold_gain_high"])
        assert float(row["gold_gain"]) == pytest.approx(float(row["gold_reward"]) - float(seed0[0]["gold_reward"]))
    assert {r["method"]: r["loss"] for r in seed0 if r["loss"]} == {"dpo": "sigmoid", "kto": "kto", "grpo": "grpo"}
    md = (compare / "compare.md").read_text()
    assert all(f"| {m} | 0 |" in md for m in ["sft"] + METHODS)
    assert "95% paired bootstrap interval" in md and "Holm's correction over the 21 pairs" in md
    assert "10 held-out prompts, 1 answer to each from every method and 1 from the SFT baseline" in md
    with open(compare / "pairwise.csv", newline="") as f:
        pairs = [p for p in csv.DictReader(f) if p["seed"] == "0"]  # (an earlier test may have added seed 1)
    assert len(pairs) == 21  # SFT and six methods, every pair once
    for pair in pairs:
        assert float(pair["low"]) <= float(pair["difference"]) <= float(pair["high"])
        assert (pair["significant"] == "True") <= (float(pair["low"]) > 0 or float(pair["high"]) < 0)

    import matplotlib.image

    for name in ("frontier.png", "training.png", "families.png"):
        data = (compare / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        image = matplotlib.image.imread(compare / name)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01  # not a blank canvas


def summary_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = set()
    for events in folder.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_tensorboard_holds_hparams_and_a_custom_scalars_layout(first_run, capsys):
    runs, recipe = first_run
    if not (runs / "smoke" / "compare" / "tb").is_dir():
        run(recipe, runs, capsys)
    tb = runs / "smoke" / "compare" / "tb"
    assert "custom_scalars__config__" in summary_tags(tb)
    sessions = sorted(p.name for p in tb.iterdir() if p.is_dir())
    assert {f"{m}-seed0" for m in ["sft"] + METHODS} <= set(sessions)
    tags = summary_tags(tb / "ppo-seed0")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= tags
    assert "compare/gold_reward" in tags and "compare/kl" in tags

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = None
    for events in tb.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == "custom_scalars__config__":
                    layout = layout_pb2.Layout.FromString(value.tensor.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["gold reward"] == [r"gold_eval/gold_reward$"]
    assert "KL to SFT" in charts and "proxy reward" in charts


@pytest.mark.parametrize("argv, expected", [
    (["run", "recipes/nope"], "recipes/nope: recipe folder not found"),
    (["run", "recipes/smoke", "--from", "rewrd"], "--from names stage 'rewrd'"),
    (["run", "recipes/smoke", "--seeds", "0,x"], "--seeds expects comma-separated integers"),
    (["run", "recipes/smoke", "--set", "sft.learning_rate"], "--set expects STAGE.KEY=VALUE"),
    (["run", "recipes/smoke", "--set", "critic.learning_rate=1"], "--set names stage 'critic'"),
    (["run", "recipes/smoke", "--set", "sft.learning_rat=1"], "unknown key 'learning_rat'"),
    (["compare", "runs/definitely-not-here"], "runs/definitely-not-here: no such run directory"),
])
def test_bad_input_stops_with_one_line(argv, expected, capsys, tmp_path):
    argv = [a if not a.startswith("recipes/") else str(REPO / a) if a == "recipes/smoke" else a for a in argv]
    assert rlhf_lab(argv + (["--runs_root", str(tmp_path)] if argv[0] == "run" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", ["smoke", "tinyworld", "tinyworld-long", "tinyworld-methods", "overoptimization",
                                  "realdata-gpu"])
def test_every_shipped_recipe_resolves_every_stage_config(name, monkeypatch):
    """What `rlhf-lab run recipes/<name>` checks before running anything: each stage's YAML parses, keys known."""
    monkeypatch.chdir(REPO)  # recipes name their include files relative to the repository
    stages = plan(REPO / "recipes" / name, seeds=[0, 1], runs_root=None, overrides={})
    assert stages
    for stage in stages:
        config = stage.spec.parse(stage.argv)
        assert config.recipe == name
    names = [s.name for s in stages]
    methods = {"smoke": 12, "tinyworld": 6, "tinyworld-long": 6, "tinyworld-methods": 13}.get(name)
    if methods:
        assert names[:3] == ["pretrain", "sft", "reward"] and "align-ppo-seed1" in names
        assert len(names) == 3 + 2 * methods
    if name == "tinyworld-methods":  # a variant runs its method under its own name, seed by seed
        variant = {s.name: s for s in stages}["align-grpo-rlvr-seed1"]
        assert variant.spec.name == "grpo" and variant.argv[-2:] == ["--run_name", "align-grpo-rlvr-seed1"]
        assert variant.spec.parse(variant.argv).reward_funcs == ["proxy", "gold:math"]
        assert {s.spec.name for s in stages if s.name.startswith("align-")} == set(METHOD_SPECS)


def test_a_second_writer_of_the_same_recipe_stops_and_names_the_holder(tmp_path, capsys):
    """Two runs of one recipe on one runs root: the second stops at once, saying which process holds it."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.argv = ['rlhf-lab', 'run', 'recipes/smoke']; "
        "from pathlib import Path; from recipes.core.lock import recipe_lock\n"
        f"with recipe_lock(Path({str(tmp_path / 'smoke')!r})):\n"
        "    print('locked', flush=True); time.sleep(60)")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (["run", str(REPO / "recipes/smoke")],
                     ["pretrain", "--config", str(REPO / "recipes/smoke/pretrain.yaml")]):
            assert rlhf_lab(argv + ["--runs_root", str(tmp_path)]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1, err
            assert f"{tmp_path / 'smoke'} is in use by process {holder.pid}" in err and "rlhf-lab run recipes/smoke" in err
        assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == [".lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()

    with recipe_lock(tmp_path / "smoke"):  # the lock died with its holder: nothing stale to clean up
        pass


def test_run_resumes_a_recipe_killed_mid_stage_at_that_stage_with_the_same_result(tmp_path, capsys):
    """`rlhf-lab run` killed while pretraining (at a random step after a checkpoint: recipes/core/kill_switch.py): the
    next `run` resumes pretraining from its last checkpoint and ends with exactly an uninterrupted run's model."""
    import os
    import random
    import subprocess
    import sys

    runs, recipe = tmp_path / "runs", smoke_copy(tmp_path)
    kill_at = random.Random().randint(26, 99)  # smoke pretraining saves at steps 25, 50 and 75 and ends at 100
    print(f"killing `rlhf-lab run` before pretraining step {kill_at}")
    child = subprocess.run([sys.executable, "-m", "recipes.core.cli", "run", str(recipe), "--runs_root",
                            str(runs), "--jobs", "1"], cwd=REPO, capture_output=True,
                           env={**os.environ, KILL_ENV: str(kill_at)}, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    manifest = json.loads((runs / "smoke" / "pretrain" / "manifest.json").read_text())
    assert manifest["status"] == "running", f"the child finished pretraining before the kill (before step {kill_at})"

    done = run(recipe, runs, capsys)
    assert done["pretrain"] == "ran" and done["sft"] == "ran"
    assert json.loads((runs / "smoke" / "pretrain" / "manifest.json").read_text())["resumed"]

    reference = tmp_path / "reference"
    assert rlhf_lab(["pretrain", "--config", str(REPO / "recipes/smoke/pretrain.yaml"), "--runs_root", str(reference)]) == 0
    resumed_metrics = json.loads((runs / "smoke" / "pretrain" / "manifest.json").read_text())["metrics"]
    reference_metrics = json.loads((reference / "smoke" / "pretrain" / "manifest.json").read_text())["metrics"]
    assert resumed_metrics["eval_loss"] == reference_metrics["eval_loss"]
    assert resumed_metrics["train_loss"] == reference_metrics["train_loss"]
    assert weights_hash(runs / "smoke" / "pretrain" / "model") == weights_hash(reference / "smoke" / "pretrain" / "model")
