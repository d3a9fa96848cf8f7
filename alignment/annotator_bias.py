"""Annotators with a length bias, measured against the truth: `rlhf-lab annotator-bias --config
recipes/annotator-bias/annotator-bias.yaml`.

Reward models are trained from the same SFT model on the world's preference pairs labelled by annotators
with a growing length bias (`length_biases`, the world source's `length_bias` key: utility + b x answer
tokens), then each is optimised against by the same alignment methods (`methods`: best-of-n and PPO by
default, each the recipe's own config with the proxy swapped in). One mitigation is measured too: the reward
models for `mitigated_length_biases` trained again with `length_balanced_pairs` (the chosen answer is the
longer in exactly half their training pairs). For every reward model: its held-out accuracy, gold accuracy, calibration
and its length coefficient (reward per token with gold held fixed, reward/diagnostics.py); for every method
against it: gold reward and its paired gain over SFT, proxy reward, answer length and KL to SFT.

Writes runs/<recipe>/annotator-bias/: annotator-bias.png, results.json, results.md; the reward models' runs are
runs/<recipe>/reward-<variant>/ and the methods' align-<method>-<variant>/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from alignment import best_of_n, ppo
from alignment.annotator_bias_plot import plot, table
from alignment.overoptimization import resolve_sft, sub_run
from recipes.core.config import RunArguments
from recipes.core.errors import UserError
from recipes.core.rundir import RunDir, atomic_write_text, parent_entry
from recipes.core.stages import METHODS, STAGES
from reward import train

STAGE = "annotator-bias"
MODULES = {"best-of-n": best_of_n, "ppo": ppo}
# What the table and the figure read from each run's metrics.
REWARD_KEYS = ("accuracy", "gold_accuracy", "noise_ceiling", "label_gold_agreement", "gold_rank_correlation",
               "ece", "length_coefficient", "length_coefficient_se", "gold_length_slope", "length_correlation")
METHOD_KEYS = ("gold_reward", "gold_gain", "gold_gain_low", "gold_gain_high", "proxy_reward", "length", "kl",
               "win_rate", "sft_gold_reward", "sft_length")


@dataclasses.dataclass
class AnnotatorBiasConfig(RunArguments):
    parent_recipe: str = dataclasses.field(
        default="tinyworld", metadata={"help": "The recipe whose SFT model is aligned: <runs_root>/<parent_recipe>/sft."})
    sft_model_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "The SFT model directory instead of the parent recipe's."})
    reward_config: str = dataclasses.field(
        default="recipes/annotator-bias/proxy-reward.yaml",
        metadata={"help": "Reward-stage YAML of every reward model; the stage adds the length bias to its "
                  "world dataset_name (and length_balanced_pairs for the mitigation)."})
    length_biases: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.02, 0.05],
        metadata={"help": "The annotators' length bias of each reward model's labels (utility per world token)."})
    mitigated_length_biases: list[float] = dataclasses.field(
        default_factory=lambda: [0.02, 0.05], metadata={"help": "Train one more reward model on each of these "
                                                        "biases' labels with length_balanced_pairs (each one of "
                                                        "length_biases); []: no mitigation."})
    methods: list[str] = dataclasses.field(
        default_factory=lambda: ["best-of-n", "ppo"], metadata={"help": "Methods optimised against each reward "
                                                                "model: best-of-n, ppo."})
    best_of_n_config: str = "recipes/annotator-bias/proxy-best-of-n.yaml"
    ppo_config: str = "recipes/annotator-bias/proxy-ppo.yaml"
    seed: int = 0
    config_files_sha256: str | None = dataclasses.field(
        default=None, metadata={"help": "Set by the stage: hash of the reward and method configs, so editing them "
                                "makes `rlhf-lab run` rerun this stage."})

    def __post_init__(self):
        if not self.length_biases or any(not 0 <= b <= 10 for b in self.length_biases):
            raise ValueError(f"key 'length_biases' must hold strengths between 0 and 10, got {self.length_biases}")
        if len(set(self.length_biases)) != len(self.length_biases):
            raise ValueError(f"key 'length_biases' must not repeat a strength, got {self.length_biases}")
        self.mitigated_length_biases = list(self.mitigated_length_biases or [])  # null: no mitigation
        if any(b not in self.length_biases for b in self.mitigated_length_biases):
            raise ValueError(f"key 'mitigated_length_biases' must hold strengths of length_biases "
                             f"{self.length_biases}, got {self.mitigated_length_biases}")
        unknown = [m for m in self.methods if m not in MODULES]
        if unknown or not self.methods:
            raise ValueError(f"key 'methods' must name some of {', '.join(MODULES)}, got {self.methods}")
        digest = hashlib.sha256()
        for key in ("reward_config", "best_of_n_config", "ppo_config"):
            path = Path(getattr(self, key))
            if not path.is_file():
                raise ValueError(f"key '{key}': {path} not found")
            digest.update(path.read_bytes())
        self.config_files_sha256 = digest.hexdigest()[:16]

    def variants(self) -> list[tuple[str, float, bool]]:
        """(name, length bias, length-balanced pairs?) of every reward model."""
        out = [(f"length{b:g}", b, False) for b in self.length_biases]
        out += [(f"length{b:g}-balanced", b, True) for b in sorted(set(self.mitigated_length_biases))]
        return out


def biased_source(source: str, length_bias: float) -> str:
    """A world preferences source with the annotators' length bias set (replacing one it names)."""
    base, _, query = source.partition("?")
    keep = [part for part in query.split("&") if part and not part.startswith("length_bias=")]
    return base + "?" + "&".join(keep + ([f"length_bias={length_bias!r}"] if length_bias else []))


def train_reward(sft_dir: Path, variant: str, length_bias: float, balanced: bool, config: AnnotatorBiasConfig,
                 stage: RunDir) -> tuple[Path, dict]:
    base = STAGES["reward"].parse(["--config", config.reward_config])
    if not base.dataset_name.startswith("world:preferences"):
        raise UserError(f"key 'reward_config': {config.reward_config} trains on {base.dataset_name}; the experiment "
                        "biases the world's annotators, so expected a world:preferences source")
    argv = ["--config", config.reward_config, "--model_name_or_path", str(sft_dir), "--run_name", f"reward-{variant}",
            "--dataset_name", biased_source(base.dataset_name, length_bias), "--length_balanced_pairs", str(balanced),
            "--recipe", config.recipe, "--seed", str(config.seed), "--overwrite", "true"]
    if config.runs_root:
        argv += ["--runs_root", config.runs_root]
    reward_config = STAGES["reward"].parse(argv)
    metrics = sub_run(train, reward_config, f"reward-{variant}", config, stage)
    return RunDir.for_config(reward_config, f"reward-{variant}").model_dir, metrics


def align(method: str, sft_dir: Path, reward_dir: Path, variant: str, config: AnnotatorBiasConfig,
          stage: RunDir) -> dict:
    name = f"align-{method}-{variant}"
    argv = ["--config", getattr(config, f"{method.replace('-', '_')}_config"), "--sft_model_name_or_path", str(sft_dir),
            "--reward_model_name_or_path", str(reward_dir), "--run_name", name, "--recipe", config.recipe,
            "--seed", str(config.seed), "--overwrite", "true"]
    if config.runs_root:
        argv += ["--runs_root", config.runs_root]
    return sub_run(MODULES[method], METHODS[method].parse(argv), name, config, stage)


def main(config: AnnotatorBiasConfig) -> dict:
    started = time.time()
    sft_dir, sft_run = resolve_sft(config)
    run = RunDir.for_config(config, STAGE)
    run.start(config, parents=[parent_entry("sft", sft_dir, sft_run)])

    results = {"variants": {}}
    for variant, length_bias, balanced in config.variants():
        print(f"[{STAGE}] reward-{variant}: annotators' length bias {length_bias:g} per token"
              + (", length-balanced pairs" if balanced else ""), flush=True)
        reward_dir, reward_metrics = train_reward(sft_dir, variant, length_bias, balanced, config, run)
        entry = {"length_bias": length_bias, "balanced": balanced,
                 "reward": {k: reward_metrics.get(k) for k in REWARD_KEYS}, "methods": {}}
        for method in config.methods:
            print(f"[{STAGE}] {method} against reward-{variant}", flush=True)
            metrics = align(method, sft_dir, reward_dir, variant, config, run)
            entry["methods"][method] = {k: metrics.get(k) for k in METHOD_KEYS}
        results["variants"][variant] = entry
    first = next(iter(next(iter(results["variants"].values()))["methods"].values()))
    results["sft"] = {"gold_reward": first["sft_gold_reward"], "length": first["sft_length"]}

    plot(run.path / "annotator-bias.png", results)
    atomic_write_text(run.path / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(run.path / "results.md", table(results) + "\n")
    print(table(results))
    metrics = {"reward_models": len(results["variants"]), "wall_time_s": round(time.time() - started, 2)}
    for variant, entry in results["variants"].items():
        metrics[f"{variant}/length_coefficient"] = entry["reward"]["length_coefficient"]
        for method, values in entry["methods"].items():
            metrics[f"{variant}/{method}/gold_reward"] = values["gold_reward"]
            metrics[f"{variant}/{method}/length"] = values["length"]
    run.finish(metrics, makes_model=False)  # the reward models and policies are models of runs of their own
    print(f"wrote {run.path}/annotator-bias.png, results.json, results.md")
    return metrics


CONFIG = AnnotatorBiasConfig  # the stage registry (recipes/core/stages.py) parses argv into this
