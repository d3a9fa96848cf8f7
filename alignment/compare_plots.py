"""The comparison's PNG plots (matplotlib, no display needed): the truth-vs-KL frontier, truth and proxy
reward over training, and per-family scores. The truth is gold, or the judge where there is no gold
(alignment.evaluate.Truth)."""

from __future__ import annotations

from pathlib import Path

from recipes.core.rundir import atomic_savefig

CURVE_TAGS = {"gold": "gold_eval/gold_reward", "judge": "gold_eval/judge_reward", "proxy": "gold_eval/proxy_reward",
              "kl": "gold_eval/kl"}


def read_curves(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{"gold" | "judge" | "proxy" | "kl": [(step, value), ...]} from a run's TensorBoard events (empty if none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.is_dir():
        return {}
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags().get("scalars", []))
    curves = {}
    for name, tag in CURVE_TAGS.items():
        if tag in tags:
            by_step = {e.step: e.value for e in events.Scalars(tag)}  # a resumed run logs a step twice: keep the last
            curves[name] = sorted(by_step.items())
    return curves


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(methods: list[str]) -> dict[str, tuple]:
    plt = _pyplot()
    palette = plt.get_cmap("tab10")
    return {m: palette(i % 10) for i, m in enumerate(methods)}


def write_plots(out: Path, runs, rows: list[dict], curves: dict, truth) -> None:
    methods = list(dict.fromkeys(r.method for r in runs))
    colors = _colors(methods)
    frontier(out / "frontier.png", runs, rows, curves, colors, truth)
    training(out / "training.png", runs, curves, colors, truth)
    families(out / "families.png", rows, colors)


def frontier(path: Path, runs, rows: list[dict], curves: dict, colors: dict, truth) -> None:
    """Gold (or judge) reward against KL(policy || SFT): each method's final point (95% interval as an error bar)
    and, thin, the path its evaluations took during training."""
    plt = _pyplot()
    key = truth.reward
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        if row["method"] == "sft" and row["seed"] != "mean" and row.get(key) is not None:
            ax.plot(0, row[key], marker="*", markersize=14, color="black",
                    label="SFT" if row is next(r for r in rows if r["method"] == "sft") else None, zorder=3)
    labelled = set()
    for run in runs:
        color = colors[run.method]
        path_points = curves.get(run.name, {})
        if "kl" in path_points and truth.name in path_points:
            kl, score = dict(path_points["kl"]), dict(path_points[truth.name])
            steps = sorted(set(kl) & set(score))
            ax.plot([kl[s] for s in steps], [score[s] for s in steps], color=color, alpha=0.35, linewidth=1)
        m = run.metrics
        if m.get("kl") is None or m.get(key) is None:
            continue
        error = [[m[key] - m.get(f"{key}_low", m[key])], [m.get(f"{key}_high", m[key]) - m[key]]]
        ax.errorbar(m["kl"], m[key], yerr=error, fmt="o", color=color, capsize=3,
                    label=None if run.method in labelled else run.method, zorder=4)
        labelled.add(run.method)
    ax.set_xlabel("KL(policy || SFT), nats per answer")
    ax.set_ylabel(f"{truth.name} reward (held-out prompts)")
    ax.set_title(f"{truth.name.capitalize()} reward against KL to the SFT model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def training(path: Path, runs, curves: dict, colors: dict, truth) -> None:
    """Gold or judge (left) and proxy (right) reward at each evaluation during training, one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=False)
    labelled = set()
    for run in runs:
        for ax, name in zip(axes, (truth.name, "proxy")):
            points = curves.get(run.name, {}).get(name)
            if not points:
                continue
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, color=colors[run.method],
                    label=None if (run.method, name) in labelled else run.method)
            labelled.add((run.method, name))
    for ax, name in zip(axes, (f"{truth.name} reward", "proxy reward (the trained reward model)")):
        ax.set_xlabel("training step (PPO: rollout)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def families(path: Path, rows: list[dict], colors: dict) -> None:
    """Mean gold score per task family, a group of bars per family and a bar per method (seeds averaged)."""
    import numpy as np

    plt = _pyplot()
    keys = sorted({k for r in rows for k in r if k.startswith("gold/")})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    means = {}
    for method in methods:
        group = [r for r in rows if r["method"] == method and r["seed"] != "mean"]
        means[method] = [np.mean([r[k] for r in group if r.get(k) is not None] or [np.nan]) for k in keys]
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(keys) + 2), 4.5))
    if not keys:
        ax.text(0.5, 0.5, "no gold per family: the evaluation prompts are not the world's", ha="center")
        ax.set_axis_off()
        atomic_savefig(fig, path, dpi=110)
        plt.close(fig)
        return
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(keys))
    for i, method in enumerate(methods):
        ax.bar(x + i * width - 0.4 + width / 2, means[method], width,
               color="black" if method == "sft" else colors.get(method), label=method)
    ax.set_xticks(x, [k.split("/", 1)[1] for k in keys])
    ax.set_ylabel("mean gold score")
    ax.set_title("Gold score per task family")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(methods)))
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
