"""The over-optimisation experiment's figure and table: gold and proxy reward against sqrt(KL), one
panel per proxy reward model, Gao et al.'s fitted curves and the fitted gold peaks marked."""

from __future__ import annotations

import math
from pathlib import Path

from alignment.gao_fits import gao_curve
from recipes.core.rundir import atomic_savefig
from recipes.core.tracking import markdown_table

MARKERS = {"best-of-n": "o", "ppo": "s"}
COLORS = {"best-of-n": "tab:blue", "ppo": "tab:red"}


def plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    proxies = results["proxies"]
    fig, axes = plt.subplots(1, len(proxies), figsize=(5.2 * len(proxies), 4.4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], proxies.items()):
        twin = ax.twinx()
        for method, result in entry["methods"].items():
            points = result["points"]
            d = np.sqrt(np.maximum([p["kl"] for p in points], 0.0))
            color = COLORS.get(method, "tab:green")
            ax.plot(d, [p["gold"] for p in points], MARKERS.get(method, "^"), color=color, label=f"{method}: gold")
            proxy = [p["proxy"] for p in points]
            if all(v is not None for v in proxy):
                twin.plot(d, proxy, MARKERS.get(method, "^"), color=color, alpha=0.35, mfc="none",
                          label=f"{method}: proxy")
            fit = result["fit"]
            if fit["alpha"] is not None:
                grid = np.linspace(0, max(d.max(), fit["peak_d"] or 0) * 1.05, 100)
                ax.plot(grid, result["base_gold"] + gao_curve(grid, fit["alpha"], fit["beta"], method), "-",
                        color=color, linewidth=1)
                if fit["peak_d"] is not None and fit["peak_d"] <= grid[-1]:
                    ax.axvline(fit["peak_d"], color=color, linestyle=":", linewidth=1)
                    ax.plot(fit["peak_d"], result["base_gold"] + fit["peak_gain"], "*", color=color, markersize=13)
        accuracy = entry.get("accuracy")
        ax.set_title(f"{name}" + (f" (held-out accuracy {accuracy:.2f})" if accuracy is not None else ""), fontsize=10)
        ax.set_xlabel("sqrt(KL(policy || SFT))")
        ax.set_ylabel("gold reward (filled)")
        twin.set_ylabel("proxy reward (hollow)", alpha=0.6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Reward over-optimisation: fitted curves after Gao et al. 2022, stars at the fitted gold peak", fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    rows = []
    for name, entry in results["proxies"].items():
        for method, result in entry["methods"].items():
            best = max(result["points"], key=lambda p: p["gold"])
            last = result["points"][-1]
            fit = result["fit"]
            rows.append([
                name, method, _f(entry.get("accuracy"), "{:.3f}"), _f(entry.get("gold_rank_correlation"), "{:.3f}"),
                f"{result['base_gold']:+.3f}", f"{best['gold']:+.3f} at sqrt KL {math.sqrt(max(best['kl'], 0)):.2f}",
                f"{last['gold']:+.3f} / {_f(last['proxy'], '{:+.3f}')} at sqrt KL {math.sqrt(max(last['kl'], 0)):.2f}",
                _f(fit["alpha"], "{:.3f}"), _f(fit["beta"], "{:.3f}"), _f(fit["peak_d"], "{:.2f}")])
    return markdown_table(["proxy", "method", "proxy accuracy", "rank corr.", "SFT gold", "best gold",
                           "last gold / proxy", "alpha", "beta", "fitted peak sqrt KL"], rows)


def _f(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
