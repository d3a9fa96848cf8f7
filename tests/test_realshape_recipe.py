"""The real-shape CPU recipe: hub-shaped files without gold, a judge trained apart from the proxy, every stage
through `rlhf-lab run`; and the evaluation without gold, where the judge takes gold's place in the table."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from recipes.core.cli import main as rlhf_lab

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "realshape-cpu"
DATA = RECIPE / "data"
METHODS = ["dpo", "grpo", "ppo", "best-of-n"]
NOT_THE_WORLDS = ["Write a haiku about autumn leaves.", "Explain photosynthesis in one sentence.",
                  "What is the capital of France?", "Give me three tips for a job interview.",
                  "Translate 'good night' into Spanish.", "Why is the sky blue?"]
COLUMNS = {  # folder -> the columns of the hub dataset it stands for
    "stories": {"text"},
    "ultrachat": {"prompt", "prompt_id", "messages"},
    "ultrafeedback": {"prompt", "prompt_id", "chosen", "rejected", "messages"},
    "hh": {"chosen", "rejected"},
    "prompts": {"prompt"},
}


@pytest.fixture(scope="module")
def realshape(tmp_path_factory) -> Path:
    """The whole recipe, run once from the repository root (its data paths are relative to it)."""
    runs = tmp_path_factory.mktemp("realshape-runs")
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert rlhf_lab(["run", "recipes/realshape-cpu", "--runs_root", str(runs)]) == 0
    finally:
        os.chdir(cwd)
    return runs / "realshape-cpu"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def metrics_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["metrics"]


def test_the_shipped_files_are_what_world_writes(tmp_path):
    assert rlhf_lab(["world", "--out", str(tmp_path / "hub"), "--size", "smoke", "--shapes", "hub"]) == 0
    shipped = sorted(p.relative_to(DATA) for p in DATA.rglob("*.jsonl"))
    assert shipped == sorted(p.relative_to(tmp_path / "hub") for p in (tmp_path / "hub").rglob("*.jsonl"))
    for name in shipped:
        assert (DATA / name).read_bytes() == (tmp_path / "hub" / name).read_bytes(), name


def test_the_files_have_the_hub_shapes_and_no_gold():
    for path in DATA.rglob("*.jsonl"):
        data = rows(path)
        assert data and all(set(r) == COLUMNS[path.parent.name] for r in data), path
    pair = rows(DATA / "ultrafeedback" / "train_prefs.jsonl")[0]
    assert pair["chosen"][:-1] == pair["rejected"][:-1] == [{"role": "user", "content": pair["prompt"]}]
    assert rows(DATA / "hh" / "train.jsonl")[0]["chosen"].startswith("\n\nHuman: ")


def test_the_recipe_runs_end_to_end_judged_beside_gold(realshape):
    assert load_file(str(realshape / "judge" / "model" / "model.safetensors"))["score.weight"].shape[0] == 1
    proxy = load_file(str(realshape / "reward" / "model" / "model.safetensors"))
    judge = load_file(str(realshape / "judge" / "model" / "model.safetensors"))
    assert any((proxy[k] - judge[k]).abs().max() > 0 for k in proxy)
    for method in METHODS:
        run = realshape / f"align-{method}"
        manifest = json.loads((run / "manifest.json").read_text())
        judge_parent = next(p for p in manifest["parents"] if p["role"] == "judge")
        assert judge_parent["run"] == str(realshape / "judge") and judge_parent["weights_sha256"]
        m = manifest["metrics"]
        for key in ("judge_reward", "judge_gain", "judge_win_rate", "gold_reward", "gold_gain", "proxy_reward", "kl"):
            assert isinstance(m[key], float), (method, key)
        assert m["judge_gain_low"] <= m["judge_gain"] <= m["judge_gain_high"]
        per_prompt = json.loads((run / "eval_per_prompt.json").read_text())
        assert len(per_prompt["judge"]) == len(per_prompt["sft_judge"]) == len(per_prompt["gold"]) == 10
    table = (realshape / "compare" / "compare.md").read_text()
    assert "| judge gain | judge win |" in table and "| gold |" in table
    assert "the judge against gold: Kendall's tau" in table


def test_without_gold_the_judge_takes_its_place(realshape, tmp_path, capsys):
    runs = tmp_path / "runs"
    for stage in ("sft", "reward", "judge"):
        shutil.copytree(realshape / stage, runs / "realshape-cpu" / stage)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in NOT_THE_WORLDS))
    for method in ("dpo", "best-of-n"):
        assert rlhf_lab(["align", "--method", method, "--config", str(RECIPE / f"align-{method}.yaml"),
                         "--runs_root", str(runs), "--eval_prompts", str(prompts)]) == 0
    out = capsys.readouterr().out
    assert "and no judge" not in out  # the judge is there: no warning that only proxy, KL and length are measured
    for method in ("dpo", "best-of-n"):
        run = runs / "realshape-cpu" / f"align-{method}"
        m = metrics_of(run)
        assert not any(k.startswith("gold") or k.startswith("sft_gold") for k in m), method
        assert "win_rate" not in m and "math_accuracy" not in m
        per_prompt = json.loads((run / "eval_per_prompt.json").read_text())
        assert "gold" not in per_prompt and len(per_prompt["judge"]) == len(NOT_THE_WORLDS)
        # the gain is the mean of the per-prompt differences the run recorded (one answer per prompt each)
        assert m["judge_gain"] == pytest.approx(np.mean(np.subtract(per_prompt["judge"], per_prompt["sft_judge"])))
        assert m["judge_win_rate"] == pytest.approx(np.mean(per_prompt["judge_win"]))
    assert rlhf_lab(["compare", str(runs / "realshape-cpu")]) == 0
    table = (runs / "realshape-cpu" / "compare" / "compare.md").read_text()
    header = table.splitlines()[2]
    assert "| judge | gain vs SFT (judge) | win vs SFT (judge) | proxy |" in header and "gold" not in header
    assert "ranked by judge" in table and f"won on the judge's score ({runs / 'realshape-cpu' / 'judge'})" in table
    csv_header = (runs / "realshape-cpu" / "compare" / "compare.csv").read_text().splitlines()[0]
    assert "judge_gain_low" in csv_header and "gold_reward" not in csv_header


def test_a_judge_must_not_be_the_proxy_and_must_exist(realshape, tmp_path, capsys):
    common = ["align", "--method", "dpo", "--config", str(RECIPE / "align-dpo.yaml")]
    code = rlhf_lab(common + ["--runs_root", str(realshape.parent),
                              "--judge_model_name_or_path", str(realshape / "reward" / "model")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "is the proxy being optimised" in err[0]

    runs = tmp_path / "runs"
    for stage in ("sft", "reward"):
        shutil.copytree(realshape / stage, runs / "realshape-cpu" / stage)
    code = rlhf_lab(common + ["--runs_root", str(runs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "has no finished judge run: run `rlhf-lab judge --config" in err[0], err


def test_compare_refuses_runs_scored_by_different_judges(realshape, tmp_path, capsys):
    runs = tmp_path / "realshape-cpu"
    for method in ("dpo", "grpo"):
        shutil.copytree(realshape / f"align-{method}", runs / f"align-{method}")
    manifest_path = runs / "align-grpo" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    next(p for p in manifest["parents"] if p["role"] == "judge")["weights_sha256"] = "0" * 64  # another judge
    manifest_path.write_text(json.dumps(manifest))
    assert rlhf_lab(["compare", str(runs)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scored by 2 different judges" in err[0]
    assert not (runs / "compare").exists()
