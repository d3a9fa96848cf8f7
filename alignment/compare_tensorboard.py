"""The comparison inside TensorBoard: `tensorboard --logdir runs/<name>` opens on it.

- HParams: one session per table row (method and seed, the mean rows left out), with the method's
  learning rate and KL strength as hyperparameters and the table's columns as metrics;
- custom scalars: a layout of charts each holding one evaluation metric of every run, since every
  method logs its evaluations under the same `gold_eval/` tags.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import yaml

from recipes.core.tracking import markdown_table

HPARAM_METRIC_PREFIX = "compare/"
# Charts of the custom-scalars layout: (category, [(title, tag regexes)]).
LAYOUT = [
    ("alignment methods: evaluation (every run on one chart)", [
        ("gold reward", [r"gold_eval/gold_reward$"]),
        ("win rate vs SFT", [r"gold_eval/win_rate$"]),
        ("judge reward (where a judge scores)", [r"gold_eval/judge_reward$"]),
        ("win rate vs SFT, judged", [r"gold_eval/judge_win_rate$"]),
        ("proxy reward", [r"gold_eval/proxy_reward$"]),
        ("KL to SFT", [r"gold_eval/kl$"]),
        ("answer length", [r"gold_eval/length$"]),
        ("gold per family", [r"gold_eval/gold/.*"]),
        ("math accuracy", [r"gold_eval/math_accuracy$"]),
        ("harmful compliance", [r"gold_eval/harmful_compliance$"]),
        ("over-refusal", [r"gold_eval/over_refusal$"]),
    ]),
    ("alignment methods: training", [
        ("training reward (the reward_funcs: the proxy unless set)",
         [r"train/reward$", r"ppo/reward$", r"train/objective/scores$"]),
        ("training KL", [r"train/kl$", r"ppo/kl$", r"train/objective/kl$"]),
        ("loss", [r"train/loss$", r"ppo/policy_loss$"]),
    ]),
]


def hyperparameters(run) -> dict:
    """The run's method, seed and the two knobs every method has in some form."""
    try:
        config = yaml.safe_load((run.path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    kl = config.get("beta", config.get("kl_coef"))
    return {"method": run.method, "seed": int(run.seed), "loss": run.loss or "-",
            "learning_rate": float(config.get("learning_rate") or 0.0),
            "kl_coefficient": float(kl) if kl is not None else 0.0,
            "best_of_n": int(config.get("n") or 0)}


def write_tensorboard(tb_dir: Path, runs, rows: list[dict], columns) -> None:
    from torch.utils.tensorboard import SummaryWriter

    if tb_dir.exists():
        shutil.rmtree(tb_dir)  # rewritten whole: a second compare must not add a second copy of each session
    tb_dir.mkdir(parents=True)

    by_name = {r.name: r for r in runs}
    with SummaryWriter(str(tb_dir)) as writer:
        writer.add_custom_scalars({
            category: {title: ["Multiline", tags] for title, tags in charts} for category, charts in LAYOUT})
        header = ["method", "seed"] + [h for _, h, _ in columns]
        writer.add_text("compare/table", markdown_table(header, [
            [r["method"], r["seed"]] + [_text(r.get(k)) for k, _, _ in columns] for r in rows]))
        for row in rows:
            if row["seed"] == "mean" or row["run"] not in by_name:
                continue
            params = hyperparameters(by_name[row["run"]]) if row["method"] != "sft" else \
                {"method": "sft", "seed": int(row["seed"]), "loss": "-", "learning_rate": 0.0, "kl_coefficient": 0.0,
                 "best_of_n": 0}
            metrics = {HPARAM_METRIC_PREFIX + key: float(row[key]) for key, _, _ in columns
                       if isinstance(row.get(key), (int, float)) and not math.isnan(row[key])}
            writer.add_hparams(params, metrics, run_name=f"{row['method']}-seed{row['seed']}")

def _text(value) -> str:
    return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
