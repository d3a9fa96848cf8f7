"""`rlhf-lab compare runs/<name>`: every alignment run of a recipe in one table, plots and TensorBoard.

Reads the finished `align-*` run directories under runs/<name> (one per method, and per seed with
`rlhf-lab run --seeds`) and writes runs/<name>/compare/:

    compare.md, compare.csv   a row per method and seed (and with several seeds, the mean and its 95%
                              t-interval across seeds), the SFT baseline first: the loss each method ran,
                              the rewards the online methods and best-of-n optimised (reward_funcs), gold
                              reward, its gain over SFT with the paired interval, win rate vs SFT with its
                              interval, proxy reward, KL to SFT, length, per-family scores, and the costs:
                              wall time, tokens generated, reward-model queries, preference labels; then
                              which methods differ (paired, prompt by prompt, Holm-corrected) and, with
                              several seeds, how stable the ranking is (Kendall's W); and a line per reward model
                              the methods used, from its run's manifest: accuracy, gold accuracy, ECE, its
                              length and flattery coefficients, and its ensemble's disagreement against error
    pairwise.csv              every pair of methods of every seed: the paired difference in gold, its
                              interval, p-value and whether it survives Holm's correction
    frontier.png              gold reward against KL for every method (final points and training paths)
    training.png              gold and proxy reward over training steps, per method
    families.png              per-family gold scores, per method
    tb/                       the table as TensorBoard HParams, and a custom-scalars layout putting each
                              evaluation metric of every method on one chart
    manifest.json             the runs compared (to know when it is out of date) and the rows

Where the evaluation had no gold (prompts that are not the world's) the judge takes its place in every
column, statistic and plot (`gain vs SFT (judge)`, ranked by judge); where a judge sat beside gold, its gain
and win rate are columns of their own and a line says how far its ranking agrees with gold's (Kendall's tau
over the methods' gains, and the share of significant gold pairs the judge orders the same way).

All numbers are the methods' own final evaluations (alignment/evaluate.py: same prompts, same sampling),
but for the costs: wall time is the whole stage's, evaluations included; tokens generated are those a
method sampled to learn or choose from (the offline methods' sampled pairs, the online methods' rollouts,
best-of-n's n answers per prompt), the evaluations' own samples left out; reward queries are the answers
the reward model scored to train or choose (not counting the evaluation's proxy column); preference labels
are the pairs a method trained on (the dataset's or the proxy-ranked ones; online DPO's, one per prompt a
step). The reward model's own training labels are shared by every method and not counted.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path

from alignment.common import PER_PROMPT_FILE
from alignment.compare_plots import read_curves, write_plots
from alignment.compare_tensorboard import write_tensorboard
from alignment.evaluate import GOLD, JUDGE, Truth
from recipes.core.config import CommandParser
from recipes.core.errors import UserError
from recipes.core.rundir import atomic_write_text, now
from recipes.core.stages import METHODS, method_of
from recipes.core.statistics import holm, kendalls_w, paired_difference, seed_interval
from recipes.core.tracking import markdown_table

OUT = "compare"
BASELINE = "sft"
# (metric key, column header, format) in table order; gold/<family> columns are added from the runs.
COLUMNS = [
    ("loss", "loss", "{}"),
    ("reward_funcs", "trained on", "{}"),
    ("gold_reward", "gold", "{:+.3f}"),
    ("gold_gain", "gain vs SFT", "{:+.3f}"),
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
    ("reward_queries", "reward queries", "{:,.0f}"),
    ("preference_labels", "pref. labels", "{:,.0f}"),
]


@dataclasses.dataclass
class CompareConfig:
    run_dir: str  # runs/<name>: the recipe's run directories


JUDGE_COLUMNS = [  # where there is no gold, in gold's three places
    ("judge_reward", "judge", "{:+.3f}"),
    ("judge_gain", "gain vs SFT (judge)", "{:+.3f}"),
    ("judge_win_rate", "win vs SFT (judge)", "{:.1%}"),
]
BESIDE_GOLD = [("judge_gain", "judge gain", "{:+.3f}"), ("judge_win_rate", "judge win", "{:.1%}")]
INTERVAL_KEYS = ("gold_reward", "gold_gain", "win_rate", "judge_reward", "judge_gain", "judge_win_rate")


def truth_of_runs(runs) -> Truth:
    """Gold when the runs were evaluated on the world's prompts, else the judge."""
    return GOLD if any(r.metrics.get(GOLD.reward) is not None for r in runs) else JUDGE


def has_judge(runs) -> bool:
    return any(r.metrics.get(JUDGE.reward) is not None for r in runs)


def check_comparable(runs) -> None:
    """One line, and no table, when the runs were not scored by one truth: some with gold and some without, or
    by different judges (their scores are on different scales)."""
    with_gold = [r.name for r in runs if r.metrics.get(GOLD.reward) is not None]
    if with_gold and len(with_gold) < len(runs):
        without = [r.name for r in runs if r.name not in with_gold]
        raise UserError(f"compare: {', '.join(without)} had no gold (prompts that are not the world's) but "
                        f"{', '.join(with_gold)} did; rerun them on the same eval_prompts")
    judged = [r.name for r in runs if r.metrics.get(JUDGE.reward) is not None]
    if not with_gold and judged and len(judged) < len(runs):
        unjudged = [r.name for r in runs if r.name not in judged]
        raise UserError(f"compare: no gold, and {', '.join(unjudged)} had no judge to rank by while "
                        f"{', '.join(judged)} did; rerun them with judge_model_name_or_path")
    judges = {r.judge.get("weights_sha256") or r.judge.get("model"): r.name for r in runs if r.judge}
    if len(judges) > 1:
        raise UserError(f"compare: the runs were scored by {len(judges)} different judges ({', '.join(judges.values())} "
                        "among them); rerun them with one judge_model_name_or_path")


@dataclasses.dataclass
class Run:
    name: str  # align-dpo, align-dpo-seed1
    method: str
    seed: int
    path: Path
    metrics: dict
    finished: str
    loss: str | None = None  # the loss_type it ran (TRL's name), where the method has several
    per_prompt: dict | None = None  # the final evaluation prompt by prompt (alignment.common.PER_PROMPT_FILE)
    judge: dict | None = None  # the manifest's judge parent (run or model, weights_sha256), if a judge scored it
    reward: dict | None = None  # the manifest's reward parent: the reward model it optimised or was scored by


def loss_of(path: Path) -> str | None:
    import yaml

    try:
        loss = (yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}).get("loss_type")
    except (OSError, yaml.YAMLError):
        return None
    return "+".join(loss) if isinstance(loss, list) else loss


def per_prompt_of(path: Path) -> dict | None:
    try:
        return json.loads((path / PER_PROMPT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def row_name(name: str) -> str:
    """A run's row in the table: its directory name without align- and -seed<k> (dpo, grpo-rlvr)."""
    return re.sub(r"-seed\d+$", "", name)[len("align-"):]


def collect(recipe_runs: Path) -> list[Run]:
    """The finished alignment runs under runs/<name>, by method order then seed."""
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
        method = row_name(path.name)
        judge = next((p for p in manifest.get("parents") or [] if p.get("role") == "judge"), None)
        reward = next((p for p in manifest.get("parents") or [] if p.get("role") == "reward"), None)
        runs.append(Run(path.name, method, int(manifest.get("seed") or 0), path, manifest.get("metrics") or {},
                        manifest.get("finished") or "", loss_of(path), per_prompt_of(path), judge, reward))
    if not runs:
        raise UserError(f"{recipe_runs}: no finished alignment runs (align-<method>/) to compare; "
                        f"run `rlhf-lab run recipes/{recipe_runs.name}` first")
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(runs, key=lambda r: (order.get(method_of(r.method), len(order)), r.method, r.seed))


def family_columns(runs: list[Run]) -> list[tuple[str, str, str]]:
    families = sorted({k for r in runs for k in r.metrics if k.startswith("gold/")})
    return [(k, k, "{:+.2f}") for k in families]


def baseline_metrics(run: Run) -> dict:
    """The SFT model's numbers as evaluated inside `run` (same prompts and seed)."""
    out = {k[len("sft_"):]: v for k, v in run.metrics.items() if k.startswith("sft_")}
    out.update(wall_time_s=None, tokens_generated=None, reward_queries=None, preference_labels=None)
    return out


def build_rows(runs: list[Run]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Table rows (dicts with method, seed, and every column's value) and the columns."""
    if truth_of_runs(runs) is GOLD:
        at = [k for k, _, _ in COLUMNS].index("win_rate") + 1
        main = COLUMNS[:at] + (BESIDE_GOLD if has_judge(runs) else []) + COLUMNS[at:]
        columns = main + family_columns(runs) + TASK_COLUMNS + COST_COLUMNS
    else:
        at = [k for k, _, _ in COLUMNS].index("gold_reward")
        columns = COLUMNS[:at] + JUDGE_COLUMNS + COLUMNS[at + 3:] + COST_COLUMNS
    keys = list(dict.fromkeys([k for k, _, _ in columns] + [f"{k}_{end}" for k in INTERVAL_KEYS for end in ("low", "high")]
                              + ["tie_rate", "win_rate_decided", "judge_tie_rate", "judge_win_rate_decided", "kl_bound"]))
    per_method: dict[str, list[dict]] = {BASELINE: []}
    for seed in sorted({r.seed for r in runs}):  # the SFT baseline of each seed, from its first method's evaluation
        first = next(r for r in runs if r.seed == seed)
        base = baseline_metrics(first)
        per_method[BASELINE].append({"method": BASELINE, "seed": seed, "run": first.name, **{k: base.get(k) for k in keys}})
    for run in runs:
        per_method.setdefault(run.method, []).append(
            {"method": run.method, "seed": run.seed, "run": run.name, **{k: run.metrics.get(k) for k in keys},
             "loss": run.loss})
    rows = []
    for method, group in per_method.items():
        rows += group
        if len(group) > 1:
            rows.append(mean_row(method, group, keys))
    return rows, columns


def mean_row(method: str, group: list[dict], keys: list[str]) -> dict:
    """The mean over seeds of every column; gold's, the gain's and the win rate's intervals are the 95%
    Student-t intervals across the seeds."""
    row = {"method": method, "seed": "mean", "run": f"{len(group)} seeds"}
    for key in keys:
        values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
        if values:
            row[key] = seed_interval(values)[0]
        elif key in ("loss", "reward_funcs"):  # what the method ran, the same in every seed
            row[key] = group[0].get(key)
    for key in INTERVAL_KEYS:
        values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
        if values:
            _, row[f"{key}_low"], row[f"{key}_high"] = seed_interval(values)
    return row


def pairwise(runs: list[Run], truth: Truth = GOLD) -> list[dict]:
    """Every pair of methods evaluated on the same prompts in the same seed: the mean per-prompt gold (or judge)
    difference
    (first - second) with its paired bootstrap interval and p-value, and whether it survives Holm's correction
    over all the seed's pairs (SFT included, as the baseline every run shares)."""
    out = []
    for seed in sorted({r.seed for r in runs}):
        scored = [r for r in runs if r.seed == seed and r.per_prompt and truth.per_prompt in r.per_prompt]
        if not scored:
            continue
        pairs = []

        def add(a, b, gold_a, gold_b):
            d = paired_difference(gold_a, gold_b, seed=seed)
            pairs.append({"seed": seed, "first": a, "second": b, "difference": d.mean, "low": d.low, "high": d.high,
                          "p_value": d.p_value, "prompts": len(gold_a)})

        for r in scored:  # against the SFT baseline the run itself was evaluated with
            add(BASELINE, r.method, r.per_prompt[truth.baseline], r.per_prompt[truth.per_prompt])
        for i, r in enumerate(scored):
            for other in scored[i + 1:]:
                if r.per_prompt["prompts"] == other.per_prompt["prompts"] \
                        and r.per_prompt["samples_per_prompt"] == other.per_prompt["samples_per_prompt"]:
                    add(r.method, other.method, r.per_prompt[truth.per_prompt], other.per_prompt[truth.per_prompt])
        for pair, significant in zip(pairs, holm([p["p_value"] for p in pairs])):
            pair["significant"] = significant
        out += pairs
    return out


def significance_markdown(pairs: list[dict], rows: list[dict], truth: Truth = GOLD) -> str:
    """Per seed, the methods ranked by gold (or judge), each with the methods it is significantly above (paired,
    Holm)."""
    lines = []
    for seed in sorted({p["seed"] for p in pairs}):
        gold = {r["method"]: r[truth.reward] for r in rows if r["seed"] == seed and r.get(truth.reward) is not None}
        ranked = sorted(gold, key=lambda m: -gold[m])
        lines.append(f"Seed {seed}, ranked by {truth.name}; \"above\" = paired difference significant at 5% after Holm's "
                     f"correction over the {sum(p['seed'] == seed for p in pairs)} pairs:\n")
        for m in ranked:
            above = [(p["second"] if p["first"] == m else p["first"]) for p in pairs if p["seed"] == seed
                     and p["significant"] and ((p["first"] == m and p["difference"] > 0)
                                               or (p["second"] == m and p["difference"] < 0))]
            lines.append(f"- {m} ({gold[m]:+.3f}): above {', '.join(above) if above else 'none'}")
        lines.append("")
    return "\n".join(lines)


def ranking_stability(rows: list[dict], truth: Truth = GOLD) -> tuple[float, int, int] | None:
    """Kendall's W of the methods' gold (or judge) gains over the seeds that ran every method: (W, seeds, methods)."""
    methods = sorted({r["method"] for r in rows if r["method"] != BASELINE})
    seeds = sorted({r["seed"] for r in rows if r["seed"] != "mean"})
    by = {(r["method"], r["seed"]): r.get(truth.gain) for r in rows}
    complete = [s for s in seeds if all(isinstance(by.get((m, s)), (int, float)) for m in methods)]
    if len(complete) < 2 or len(methods) < 3:
        return None
    return kendalls_w([[by[(m, s)] for m in methods] for s in complete]), len(complete), len(methods)


def caption(runs: list[Run], pairs: list[dict], truth: Truth = GOLD) -> str:
    """What the evaluation could see: prompts x answers, the typical paired half-width of a gain over SFT, and
    the smallest gain it detects with 80% power (2.8 standard errors of the paired difference)."""
    scored = [r for r in runs if r.per_prompt and truth.per_prompt in r.per_prompt]
    if not scored:
        return ""
    import numpy as np

    high, low = f"{truth.gain}_high", f"{truth.gain}_low"
    half = [(r.metrics[high] - r.metrics[low]) / 2 for r in scored if isinstance(r.metrics.get(high), (int, float))]
    first = scored[0].per_prompt
    if not half:
        return ""
    median = float(np.median(half))
    k = first["samples_per_prompt"]
    k_sft = first.get("baseline_samples_per_prompt", k)
    judge = scored[0].judge or {}
    scored_by = f"the judge's score ({judge.get('run') or judge.get('model')})" if truth is JUDGE else "gold"
    return (f"Evaluation: {len(first[truth.per_prompt])} held-out prompts, {k} answer{'s' if k > 1 else ''} to each from every "
            f"method and {k_sft} from the SFT baseline (its own draws, shared by the methods). Win vs SFT: share of "
            f"(method answer, SFT answer) pairs won on {scored_by}, ties half. Gain vs SFT: mean of per-prompt "
            f"differences in {truth.name}, 95% paired bootstrap interval (median half-width {median:.3f}); a gain smaller than about "
            f"{2.8 * median / 1.96:.3f} is detected with less than 80% power.")


def judge_agreement(runs: list[Run], rows: list[dict]) -> str:
    """Where a judge sat beside gold: per seed, Kendall's tau between the methods' gold gains and judge gains, and
    how many of the pairs gold tells apart (paired, Holm) the judge orders the same way."""
    from scipy.stats import kendalltau

    if truth_of_runs(runs) is not GOLD or not has_judge(runs):
        return ""
    gold_pairs = [p for p in pairwise(runs, GOLD) if p["significant"] and p["first"] != BASELINE]
    lines = []
    for seed in sorted({r.seed for r in runs}):
        both = [r for r in rows if r["seed"] == seed and r["method"] != BASELINE
                and isinstance(r.get("gold_gain"), float) and isinstance(r.get("judge_gain"), float)]
        judge = {r["method"]: r["judge_gain"] for r in both}
        decided = [p for p in gold_pairs if p["seed"] == seed and p["first"] in judge and p["second"] in judge]
        same = sum((p["difference"] > 0) == (judge[p["first"]] > judge[p["second"]]) for p in decided)
        if len(both) >= 2:
            tau = kendalltau([r["gold_gain"] for r in both], [r["judge_gain"] for r in both]).statistic
            lines.append(f"Seed {seed}, the judge against gold: Kendall's tau {tau:+.2f} between the {len(both)} "
                         f"methods' gains; of the {len(decided)} method pairs gold tells apart, the judge orders "
                         f"{same} the same way.")
    return "\n".join(lines)


def reward_model_notes(recipe_runs: Path, runs: list[Run]) -> str:
    """A line per reward model the methods used (the reward parents their manifests name, runs/<recipe>/reward when
    none does), from its run's manifest: what it learnt besides gold (reward/diagnostics.py). "-" for a number the
    run did not measure (an older run, data without gold); nothing for a model given by path."""
    named = sorted({Path(r.reward["run"]).name for r in runs if r.reward and r.reward.get("run")})
    recorded = any(r.reward for r in runs)
    lines = []
    for name in named or ([] if recorded else ["reward"]):
        try:
            manifest = json.loads((recipe_runs / name / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(manifest, dict) or manifest.get("status") != "finished":
            continue
        m = manifest.get("metrics") or {}

        def number(key: str, fmt: str) -> str:
            value = m.get(key)
            return cell(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"

        line = (f"Reward model ({name}): accuracy {number('accuracy', '{:.3f}')}, gold accuracy "
                f"{number('gold_accuracy', '{:.3f}')}, ECE against gold {number('ece', '{:.3f}')}")
        if "length_coefficient" in m:  # older runs and answers without gold have no attribution
            line += (f"; on SFT samples, reward per world token of length {number('length_coefficient', '{:+.4f}')} "
                     f"(SE {number('length_coefficient_se', '{:.4f}')}; gold's own "
                     f"{number('gold_length_slope', '{:+.4f}')}), for flattering "
                     f"{number('flattery_coefficient', '{:+.3f}')} (SE {number('flattery_coefficient_se', '{:.3f}')}), "
                     "gold held fixed")
        line += "."
        if isinstance(m.get("ensemble_members"), (int, float)):
            line += (f" Ensemble of {m['ensemble_members']:.0f} seeds: gold accuracy "
                     f"{number('ensemble_gold_accuracy', '{:.3f}')} (members "
                     f"{number('ensemble_member_gold_accuracy', '{:.3f}')}); its disagreement against its error on "
                     f"gold: AUROC "
                     f"{number('ensemble_disagreement_error_auroc', '{:.2f}')}, Spearman "
                     f"{number('ensemble_disagreement_error_spearman', '{:+.2f}')}.")
        lines.append(line)
    return "\n\n".join(lines)


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
            low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
            if key in INTERVAL_KEYS and isinstance(low, (int, float)) and not math.isnan(low) and low != high:
                text += f" [{fmt.format(low)}, {fmt.format(high)}]"
            cells.append(text)
        table.append(cells)
    return markdown_table(headers, table)


def to_csv(rows: list[dict], columns, truth: Truth, with_judge: bool) -> str:
    fields = ["method", "seed", "run", "loss"]
    for t in [truth] + ([JUDGE] if with_judge and truth is GOLD else []):
        fields += [t.reward, f"{t.reward}_low", f"{t.reward}_high", t.gain, f"{t.gain}_low", f"{t.gain}_high",
                   t.win, f"{t.win}_low", f"{t.win}_high", t.tie, t.decided]
    fields += ["kl_bound"] + [k for k, _, _ in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(fields)), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def inputs_of(runs: list[Run]) -> dict[str, str]:
    return {r.name: r.finished for r in runs}


OUTPUTS = ("compare.md", "compare.csv", "pairwise.csv", "frontier.png", "training.png", "families.png")


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
    recipe_runs = Path(config.run_dir)
    runs = collect(recipe_runs)
    check_comparable(runs)
    rows, columns = build_rows(runs)
    out = recipe_runs / OUT
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, columns)
    truth = truth_of_runs(runs)
    pairs = pairwise(runs, truth)
    notes = [caption(runs, pairs, truth), significance_markdown(pairs, rows, truth), judge_agreement(runs, rows)]
    stability = ranking_stability(rows, truth)
    if stability is not None:
        w, n_seeds, n_methods = stability
        notes.append(f"Ranking stability over {n_seeds} seeds: Kendall's W = {w:.2f} on the {n_methods} methods' "
                     "gains (1: every seed ranks them alike; 0: no agreement).")
    notes.append(reward_model_notes(recipe_runs, runs))
    text = "\n\n".join([table] + [n for n in notes if n])
    atomic_write_text(out / "compare.md", f"# {recipe_runs.name}: alignment methods compared\n\n{text}\n")
    atomic_write_text(out / "compare.csv", to_csv(rows, columns, truth, has_judge(runs)))
    atomic_write_text(out / "pairwise.csv", pairs_csv(pairs))
    curves = {r.name: read_curves(r.path / "tb") for r in runs}
    write_plots(out, runs, rows, curves, truth)
    write_tensorboard(out / "tb", runs, rows, columns)
    atomic_write_text(out / "manifest.json", json.dumps(
        {"stage": OUT, "status": "finished", "finished": now(), "inputs": inputs_of(runs), "rows": rows},
        indent=2) + "\n")
    print(text)
    print(f"wrote {out}/ ({', '.join(OUTPUTS)}, tb/)")
    return {"rows": len(rows), "methods": len({r.method for r in runs}), "seeds": len({r.seed for r in runs}),
            "significant_pairs": sum(p["significant"] for p in pairs),
            **({"kendalls_w": stability[0]} if stability is not None else {})}


def pairs_csv(pairs: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["seed", "first", "second", "difference", "low", "high", "p_value",
                                                "significant", "prompts"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(pairs)
    return buffer.getvalue()


def cli(argv: list[str]) -> int:
    parser = CommandParser(prog="rlhf-lab compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the recipe's run directory, e.g. runs/tinyworld")
    args = parser.parse_args(argv)
    main(CompareConfig(run_dir=args.run_dir))
    return 0
