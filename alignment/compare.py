"""`rlhf-lab compare runs/<name>`: every alignment run of a recipe in one table, plots and TensorBoard.

Reads the finished `align-*` run directories under runs/<name> (one per method, and per seed with
`rlhf-lab run --seeds`) and writes runs/<name>/compare/:

    compare.md, compare.csv   a row per method and seed (and with several seeds, the mean and its 95%
                              t-interval across seeds), the SFT baseline first: gold reward, win rate vs
                              SFT, proxy reward, KL to SFT, length, per-family scores, wall time, tokens
    frontier.png              gold reward against KL for every method (final points and training paths)
    training.png              gold and proxy reward over training steps, per method
    families.png              per-family gold scores, per method
    tb/                       the table as TensorBoard HParams, and a custom-scalars layout putting each
                              evaluation metric of every method on one chart
    manifest.json             the runs compared (to know when it is out of date) and the rows

All numbers are the methods' own final evaluations (alignment/evaluate.py: same prompts, same sampling),
but for two costs: wall time is the whole stage's, evaluations included; tokens generated are those a
method sampled to learn or choose from (DPO/KTO's sampled pairs, PPO/GRPO/RLOO's rollouts, best-of-n's
n answers per prompt), the evaluations' own samples left out.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path

from recipes.errors import UserError
from recipes.rundir import atomic_write_text, now
from recipes.statistics import seed_interval
from recipes.tracking import markdown_table

OUT = "compare"
BASELINE = "sft"
# (metric key, column header, format) in table order; gold/<family> columns are added from the runs.
COLUMNS = [
    ("gold_reward", "gold", "{:+.3f}"),
    ("win_rate", "win vs SFT", "{:.1%}"),
    ("proxy_reward", "proxy", "{:+.3f}"),
    ("kl", "KL", "{:.3f}"),
    ("length", "length", "{:.1f}"),
]
TASK_COLUMNS = [
    ("math_accuracy", "math acc", "{:.2f}"),
    ("harmful_compliance", "harmful compl.", "{:.2f}"),
    ("over_refusal", "over-refusal", "{:.2f}"),
]
COST_COLUMNS = [
    ("wall_time_s", "wall s", "{:.0f}"),
    ("tokens_generated", "tokens generated", "{:,.0f}"),
]


@dataclasses.dataclass
class CompareConfig:
    run_dir: str  # runs/<name>: the recipe's run directories


@dataclasses.dataclass
class Run:
    name: str  # align-dpo, align-dpo-seed1
    method: str
    seed: int
    path: Path
    metrics: dict
    finished: str


def method_of(name: str, manifest: dict) -> str:
    return (manifest.get("data") or {}).get("method") or re.sub(r"-seed\d+$", "", name)[len("align-"):]


def collect(recipe_runs: Path) -> list[Run]:
    """The finished alignment runs under runs/<name>, by method order then seed."""
    from alignment.common import METHODS

    if not recipe_runs.is_dir():
        raise UserError(f"{recipe_runs}: no such run directory (expected runs/<recipe>, e.g. runs/tinyworld)")
    runs = []
    for path in sorted(recipe_runs.glob("align-*")):
        manifest_path = path / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{manifest_path}: corrupted manifest (not JSON)") from None
        if manifest.get("status") != "finished":
            print(f"compare: leaving out {path.name} (not finished)")
            continue
        method = method_of(path.name, manifest)
        runs.append(Run(path.name, method, int(manifest.get("seed") or 0), path, manifest.get("metrics") or {},
                        manifest.get("finished") or ""))
    if not runs:
        raise UserError(f"{recipe_runs}: no finished alignment runs (align-<method>/) to compare; "
                        f"run `rlhf-lab run recipes/{recipe_runs.name}` first")
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(runs, key=lambda r: (order.get(r.method, len(order)), r.method, r.seed))


def family_columns(runs: list[Run]) -> list[tuple[str, str, str]]:
    families = sorted({k for r in runs for k in r.metrics if k.startswith("gold/")})
    return [(k, k, "{:+.2f}") for k in families]


def baseline_metrics(run: Run) -> dict:
    """The SFT model's numbers as evaluated inside `run` (same prompts and seed)."""
    out = {k[len("sft_"):]: v for k, v in run.metrics.items() if k.startswith("sft_")}
    out.update(wall_time_s=None, tokens_generated=None)
    return out


def build_rows(runs: list[Run]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Table rows (dicts with method, seed, and every column's value) and the columns."""
    columns = COLUMNS + family_columns(runs) + TASK_COLUMNS + COST_COLUMNS
    keys = [k for k, _, _ in columns] + ["gold_reward_low", "gold_reward_high", "tie_rate", "win_rate_decided"]
    per_method: dict[str, list[dict]] = {BASELINE: []}
    for seed in sorted({r.seed for r in runs}):  # the SFT baseline of each seed, from its first method's evaluation
        first = next(r for r in runs if r.seed == seed)
        base = baseline_metrics(first)
        per_method[BASELINE].append({"method": BASELINE, "seed": seed, "run": first.name, **{k: base.get(k) for k in keys}})
    for run in runs:
        per_method.setdefault(run.method, []).append(
            {"method": run.method, "seed": run.seed, "run": run.name, **{k: run.metrics.get(k) for k in keys}})
    rows = []
    for method, group in per_method.items():
        rows += group
        if len(group) > 1:
            rows.append(mean_row(method, group, keys))
    return rows, columns


def mean_row(method: str, group: list[dict], keys: list[str]) -> dict:
    """The mean over seeds of every column; gold's interval is the 95% t-interval across the seeds."""
    row = {"method": method, "seed": "mean", "run": f"{len(group)} seeds"}
    for key in keys:
        values = [r[key] for r in group if isinstance(r[key], (int, float))]
        row[key] = seed_interval(values)[0] if values else None
    _, row["gold_reward_low"], row["gold_reward_high"] = seed_interval([r["gold_reward"] for r in group])
    return row


def cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def markdown(rows: list[dict], columns) -> str:
    headers = ["method", "seed"] + [h for _, h, _ in columns]
    table = []
    for row in rows:
        cells = [row["method"], str(row["seed"])]
        for key, _, fmt in columns:
            text = cell(row.get(key), fmt)
            if key == "gold_reward" and row.get("gold_reward_low") is not None \
                    and not math.isnan(row["gold_reward_low"]):
                text += f" [{row['gold_reward_low']:+.3f}, {row['gold_reward_high']:+.3f}]"
            cells.append(text)
        table.append(cells)
    return markdown_table(headers, table)


def to_csv(rows: list[dict], columns) -> str:
    fields = ["method", "seed", "run", "gold_reward", "gold_reward_low", "gold_reward_high", "tie_rate",
              "win_rate_decided"] + [k for k, _, _ in columns if k != "gold_reward"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(fields)), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def inputs_of(runs: list[Run]) -> dict[str, str]:
    return {r.name: r.finished for r in runs}


OUTPUTS = ("compare.md", "compare.csv", "frontier.png", "training.png", "families.png")


def is_up_to_date(config: CompareConfig) -> bool:
    """True when compare/ was written from exactly the finished alignment runs there are now."""
    recipe_runs = Path(config.run_dir)
    out = recipe_runs / OUT
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        runs = collect(recipe_runs)
    except (OSError, json.JSONDecodeError, UserError):
        return False
    return manifest.get("inputs") == inputs_of(runs) and all((out / f).is_file() for f in OUTPUTS)


def main(config: CompareConfig) -> dict:
    from alignment.compare_plots import read_curves, write_plots
    from alignment.compare_tensorboard import write_tensorboard

    recipe_runs = Path(config.run_dir)
    runs = collect(recipe_runs)
    rows, columns = build_rows(runs)
    out = recipe_runs / OUT
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, columns)
    atomic_write_text(out / "compare.md", f"# {recipe_runs.name}: alignment methods compared\n\n{table}\n")
    atomic_write_text(out / "compare.csv", to_csv(rows, columns))
    curves = {r.name: read_curves(r.path / "tb") for r in runs}
    write_plots(out, runs, rows, curves)
    write_tensorboard(out / "tb", runs, rows, columns)
    atomic_write_text(out / "manifest.json", json.dumps(
        {"stage": OUT, "status": "finished", "finished": now(), "inputs": inputs_of(runs), "rows": rows},
        indent=2) + "\n")
    print(table)
    print(f"wrote {out}/ ({', '.join(OUTPUTS)}, tb/)")
    return {"rows": len(rows), "methods": len({r.method for r in runs}), "seeds": len({r.seed for r in runs})}


def cli(argv: list[str]) -> int:
    from recipes.config import CommandParser

    parser = CommandParser(prog="rlhf-lab compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the recipe's run directory, e.g. runs/tinyworld")
    args = parser.parse_args(argv)
    main(CompareConfig(run_dir=args.run_dir))
    return 0
