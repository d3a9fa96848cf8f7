"""The annotator-bias experiment's figure and table: against the annotators' length bias, the reward model's
length coefficient, and each method's gold gain over SFT and answer length; the length-balanced mitigation as
hollow markers."""

from __future__ import annotations

from pathlib import Path

from recipes.core.rundir import atomic_savefig
from recipes.core.tracking import markdown_table

COLORS = {"best-of-n": "tab:blue", "ppo": "tab:red"}


def plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(results["variants"].values())
    plain = [v for v in variants if not v["balanced"]]
    mitigated = [v for v in variants if v["balanced"]]
    methods = list(variants[0]["methods"])
    fig, (coef, gain, length) = plt.subplots(1, 3, figsize=(15, 4.3))
    for entries, style in ((plain, dict(marker="o")), (mitigated, dict(marker="D", mfc="none", linestyle="none"))):
        x = [v["length_bias"] for v in entries]
        label = " (length-balanced pairs)" if entries is mitigated else ""
        c = [_nan(v["reward"]["length_coefficient"]) for v in entries]
        se = [_nan(v["reward"]["length_coefficient_se"], 0.0) for v in entries]
        coef.errorbar(x, c, yerr=[2 * s for s in se], color="black", capsize=3, label="reward model" + label, **style)
        for method in methods:
            values = [v["methods"][method] for v in entries]
            g = [_nan(m["gold_gain"]) for m in values]
            err = [[_nan(m["gold_gain"]) - _nan(m["gold_gain_low"]) for m in values],
                   [_nan(m["gold_gain_high"]) - _nan(m["gold_gain"]) for m in values]]
            color = COLORS.get(method, "tab:green")
            gain.errorbar(x, g, yerr=err, color=color, capsize=3, label=method + label, **style)
            length.plot(x, [_nan(m["length"]) for m in values], color=color, label=method + label, **style)
    if plain:
        coef.axhline(_nan(plain[0]["reward"].get("gold_length_slope")), color="goldenrod", linestyle=":",
                     label="gold's own slope on length")
    gain.axhline(0, color="gray", linewidth=0.8)
    length.axhline(results["sft"]["length"], color="gray", linestyle="--", label="SFT model")
    for ax, title, ylabel in ((coef, "reward per answer token, gold held fixed", "length coefficient (+-2 SE)"),
                              (gain, "gold reward gained over SFT (paired 95% interval)", "gold gain"),
                              (length, "answer length", "tokens generated")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("annotators' length bias (utility per world token)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("What annotators' length bias does to a reward model and to the methods optimised against it", fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    rows = []
    sft = results["sft"]
    for name, v in results["variants"].items():
        r = v["reward"]
        for method, m in v["methods"].items():
            rows.append([
                name, _f(v["length_bias"], "{:g}"), "yes" if v["balanced"] else "no", _f(r["accuracy"], "{:.3f}"),
                _f(r["gold_accuracy"], "{:.3f}"), _f(r["ece"], "{:.3f}"),
                _f(r["length_coefficient"], "{:+.4f}") + " +- " + _f(r["length_coefficient_se"], "{:.4f}"),
                method, _f(m["gold_reward"], "{:+.3f}"),
                f"{_f(m['gold_gain'], '{:+.3f}')} [{_f(m['gold_gain_low'], '{:+.3f}')}, {_f(m['gold_gain_high'], '{:+.3f}')}]",
                _f(m["proxy_reward"], "{:+.3f}"), _f(m["length"], "{:.1f}"), _f(m["kl"], "{:.3f}")])
    header = ["reward model", "length bias", "balanced pairs", "accuracy", "gold accuracy", "ECE",
              "length coef. (reward/token) +- SE", "method", "gold", "gold gain over SFT [95%]", "proxy", "length",
              "KL"]
    caption = (f"SFT model: gold {_f(sft['gold_reward'], '{:+.3f}')}, length {_f(sft['length'], '{:.1f}')} tokens. "
               "Length coefficient: the reward model's score regressed on gold, length and flattery over SFT answers.")
    return markdown_table(header, rows) + "\n\n" + caption


def _nan(value, default=float("nan")) -> float:
    return default if value is None else float(value)


def _f(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
