"""Reward over-optimisation, after Gao et al. 2022: `rlhf-lab overoptimization --config recipes/overoptimization/overoptimization.yaml`.

Proxy reward models are trained from the same SFT model on fewer or noisier labels (the reward stage
with `max_train_pairs` and `label_flip_rate`), then each is optimised against:
- best-of-n: n answers sampled from the SFT model per held-out prompt, the proxy's favourite kept,
  for growing n (one pool of samples, the first n of it), at its KL estimated from the candidates
  (`best_of_n.estimated_kl`, at most log n - (n-1)/n);
- PPO with little or no KL penalty, evaluated every few rollouts, so its KL to the SFT model grows.
Gold and proxy reward are plotted against d = sqrt(KL), and Gao's functional forms are fitted to the
gold reward's gain over the SFT model: best-of-n R(d) = d (alpha - beta d), RL R(d) = d (alpha - beta log d).
The fitted gold peak (d* = alpha / 2 beta and exp(alpha / beta - 1)) is marked. Proxy reward keeps
rising with KL; gold rises, peaks and falls, earlier for the weaker proxies.

Writes runs/<recipe>/overoptimization/: overoptimization.png, results.json (every point and fit),
results.md; the proxies' runs are runs/<recipe>/reward-<variant>/ and the PPO runs align-ppo-<variant>/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

from alignment import ppo
from alignment.best_of_n import best_of, candidates_kl, kl_bound
from alignment.common import MISSING_EOS_PENALTY, load_policy, load_reward_model
from alignment.compare_plots import read_curves
from alignment.gao_fits import fit_gao
from alignment.overoptimization_plot import plot, table
from recipes.core.config import RunArguments
from recipes.core.errors import UserError
from recipes.core.generation import generate_answers, render_prompts
from recipes.core.model_dirs import resolve_model
from recipes.core.rundir import RunDir, atomic_write_text, parent_entry, require_parent
from recipes.core.runner import reason_to_run, resumable
from recipes.core.seeds import stream_seed
from recipes.core.stage_kit import load_eval_prompts
from recipes.core.stages import METHODS, STAGES
from recipes.core.world import gold_reward
from reward import score, train

STAGE = "overoptimization"


@dataclasses.dataclass
class OveroptimizationConfig(RunArguments):
    parent_recipe: str = dataclasses.field(
        default="tinyworld", metadata={"help": "The recipe whose SFT model is optimised: <runs_root>/<parent_recipe>/sft."})
    sft_model_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "The SFT model directory instead of the parent recipe's."})
    proxy_config: str = dataclasses.field(
        default="recipes/overoptimization/proxy-reward.yaml",
        metadata={"help": "Reward-stage YAML every proxy is trained with (then max_train_pairs, label_flip_rate)."})
    proxy_pairs: list[int] = dataclasses.field(
        default_factory=lambda: [4000, 1000, 250], metadata={"help": "Training pairs of each proxy."})
    proxy_flip_rates: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.0, 0.0], metadata={"help": "Share of each proxy's labels swapped on purpose."})
    ppo_config: str = dataclasses.field(
        default="recipes/overoptimization/ppo.yaml", metadata={"help": "PPO YAML run against each proxy."})
    ppo_max_steps: int = dataclasses.field(default=60, metadata={"help": "PPO rollouts per proxy (0: no PPO)."})
    ppo_eval_every: int = 6
    ppo_kl_coef: float = dataclasses.field(default=0.0, metadata={"help": "PPO's KL penalty: small, so KL grows."})
    best_of_n: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    eval_prompts: str = "world:eval?size=default&seed=0"
    eval_prompts_split: str = "test"
    eval_num_prompts: int = 200
    eval_max_new_tokens: int = 160
    eval_generation_batch_size: int = 32
    seed: int = 0
    config_files_sha256: str | None = dataclasses.field(
        default=None, metadata={"help": "Set by the stage: hash of proxy_config and ppo_config, so editing them "
                                "makes `rlhf-lab run` rerun this stage."})

    def __post_init__(self):
        if len(self.proxy_pairs) != len(self.proxy_flip_rates) or not self.proxy_pairs:
            raise ValueError(f"keys 'proxy_pairs' and 'proxy_flip_rates' must be lists of one length, got "
                             f"{len(self.proxy_pairs)} and {len(self.proxy_flip_rates)}")
        if any(n <= 0 for n in self.proxy_pairs) or any(not 0 <= r <= 1 for r in self.proxy_flip_rates):
            raise ValueError("key 'proxy_pairs' must hold positive integers and 'proxy_flip_rates' rates in [0, 1]")
        if not self.best_of_n or any(n <= 0 for n in self.best_of_n):
            raise ValueError(f"key 'best_of_n' must hold positive integers, got {self.best_of_n}")
        for key in ("eval_num_prompts", "eval_max_new_tokens", "ppo_eval_every"):
            if getattr(self, key) <= 0:
                raise ValueError(f"key '{key}' must be a positive integer, got {getattr(self, key)}")
        digest = hashlib.sha256()
        for key in ("proxy_config", "ppo_config"):
            path = Path(getattr(self, key))
            if not path.is_file():
                raise ValueError(f"key '{key}': {path} not found")
            digest.update(path.read_bytes())
        self.config_files_sha256 = digest.hexdigest()[:16]

    def proxies(self) -> list[tuple[str, int, float]]:
        return [(f"reward-{n}pairs" + (f"-flip{round(r * 100)}" if r else ""), n, r)
                for n, r in zip(self.proxy_pairs, self.proxy_flip_rates)]


# ----------------------------------------------------------------------------------------------
# The two optimisers


def best_of_n_curves(sft_dir: Path, proxies: dict[str, Path], config: OveroptimizationConfig) -> dict[str, list[dict]]:
    """{proxy: [{n, kl, kl_bound, gold, proxy, selected}, ...]}: one pool of max(n) samples per prompt, the first n
    of it; selected is the proxy less missing_eos_penalty for a cut-off answer, what the choice maximised;
    kl is best-of-n's estimate from the candidates and the SFT model's log-probabilities (best_of_n.estimated_kl)."""
    import numpy as np

    policy, tokenizer = load_policy(sft_dir)
    prompts = load_eval_prompts(config)
    pool = [generate_answers(policy, tokenizer, prompts, max_new_tokens=config.eval_max_new_tokens, do_sample=True,
                             batch_size=config.eval_generation_batch_size,
                             seed=stream_seed(config.seed, "best-of-n/candidate", k))
            for k in range(max(config.best_of_n))]
    gold = np.array([[gold_reward(p, a.text, ended=a.ended).total for p, a in zip(prompts, answers)] for answers in pool])
    prompt_ids = render_prompts(tokenizer, prompts)
    curves = {}
    for name, reward_dir in proxies.items():
        reward_model = load_reward_model(reward_dir)
        proxy = np.array([score(reward_model, tokenizer, prompts, [a.text for a in answers],
                                ended=[a.ended for a in answers]) for answers in pool])  # [candidate, prompt]
        cut = np.array([[not a.ended for a in answers] for answers in pool])
        chosen_by = proxy - MISSING_EOS_PENALTY * cut  # the one end-of-turn rule; the proxy is reported plain
        points = []
        for n in sorted(set(config.best_of_n)):
            chosen = best_of(chosen_by[:n].T.tolist())  # per prompt, the index of the proxy's favourite
            rows = range(len(prompts))
            kl = candidates_kl(policy, prompt_ids, pool, chosen_by.T.tolist(), n,
                               batch_size=config.eval_generation_batch_size, pad_token_id=tokenizer.pad_token_id)
            points.append({"n": n, "kl": kl, "kl_bound": kl_bound(n),
                           "gold": float(np.mean([gold[chosen[i], i] for i in rows])),
                           "proxy": float(np.mean([proxy[chosen[i], i] for i in rows])),
                           "selected": float(np.mean([chosen_by[chosen[i], i] for i in rows]))})
        curves[name] = points
    return curves


def ppo_curve(sft_dir: Path, reward_dir: Path, name: str, config: OveroptimizationConfig, stage: RunDir) -> list[dict]:
    """PPO against one proxy; [{step, kl, gold, proxy}] at each of its evaluations."""
    argv = ["--config", config.ppo_config, "--sft_model_name_or_path", str(sft_dir),
            "--reward_model_name_or_path", str(reward_dir), "--run_name", f"align-ppo-{name}",
            "--max_steps", str(config.ppo_max_steps), "--eval_every", str(config.ppo_eval_every),
            "--kl_coef", str(config.ppo_kl_coef), "--eval_prompts", config.eval_prompts,
            "--eval_num_prompts", str(config.eval_num_prompts), "--eval_max_new_tokens", str(config.eval_max_new_tokens),
            "--recipe", config.recipe, "--seed", str(config.seed), "--overwrite", "true"]
    if config.runs_root:
        argv += ["--runs_root", config.runs_root]
    ppo_config = METHODS["ppo"].parse(argv)
    sub_run(ppo, ppo_config, f"align-ppo-{name}", config, stage)
    curves = read_curves(RunDir.for_config(ppo_config, f"align-ppo-{name}").tb_dir)
    kl, gold, proxy = (dict(curves.get(k, [])) for k in ("kl", "gold", "proxy"))
    return [{"step": s, "kl": kl[s], "gold": gold[s], "proxy": proxy.get(s)} for s in sorted(set(kl) & set(gold))]


def train_proxy(sft_dir: Path, name: str, pairs: int, flip_rate: float, config: OveroptimizationConfig,
                stage: RunDir) -> tuple[Path, dict]:
    argv = ["--config", config.proxy_config, "--model_name_or_path", str(sft_dir), "--run_name", name,
            "--max_train_pairs", str(pairs), "--label_flip_rate", str(flip_rate), "--recipe", config.recipe,
            "--seed", str(config.seed), "--overwrite", "true"]
    if config.runs_root:
        argv += ["--runs_root", config.runs_root]
    reward_config = STAGES["reward"].parse(argv)
    metrics = sub_run(train, reward_config, name, config, stage)
    return RunDir.for_config(reward_config, name).model_dir, metrics


def sub_run(module, sub_config, name: str, config: OveroptimizationConfig, stage: RunDir) -> dict:
    """Run one proxy or PPO run of the experiment. With --resume, one that finished with the same config and
    parents is kept and one that was interrupted continues from its checkpoint, as `rlhf-lab run` does."""
    run = RunDir.for_config(sub_config, name)
    if config.resume and reason_to_run(run, sub_config) is None:
        print(f"[{stage.path.name}] {name}: finished with the same config, kept", flush=True)
        return run.manifest()["metrics"]
    if config.resume and resumable(run, sub_config):
        sub_config.resume, sub_config.overwrite = True, False
    metrics = module.main(sub_config)
    done = stage.checkpoints_dir / "finished.json"  # its runs so far: a resume of the experiment keeps them
    kept = json.loads(done.read_text()) if done.is_file() else []
    atomic_write_text(done, json.dumps(sorted(set(kept) | {name}), indent=2) + "\n")
    return metrics


# ----------------------------------------------------------------------------------------------
# The stage


def resolve_sft(config: OveroptimizationConfig) -> tuple[Path, RunDir | None]:
    if config.sft_model_name_or_path:
        return resolve_model(config.sft_model_name_or_path, "sft_model_name_or_path", "policy"), None
    parent_config = dataclasses.replace(config, recipe=config.parent_recipe)
    try:
        sft = require_parent(parent_config, "sft")
    except UserError:
        raise UserError(f"{RunDir.for_config(parent_config, 'sft').path} has no finished sft run: run "
                        f"`rlhf-lab run recipes/{config.parent_recipe}` (or set sft_model_name_or_path) first") from None
    return sft.model_dir, sft


def main(config: OveroptimizationConfig) -> dict:
    started = time.time()
    sft_dir, sft_run = resolve_sft(config)
    run = RunDir.for_config(config, STAGE)
    run.start(config, parents=[parent_entry("sft", sft_dir, sft_run)])

    proxies, proxy_metrics = {}, {}
    for name, pairs, flip_rate in config.proxies():
        print(f"[{STAGE}] proxy {name}: {pairs} pairs, {flip_rate:.0%} of labels swapped", flush=True)
        proxies[name], proxy_metrics[name] = train_proxy(sft_dir, name, pairs, flip_rate, config, run)
    print(f"[{STAGE}] best-of-n, n = {sorted(set(config.best_of_n))}, against every proxy", flush=True)
    curves = {name: {"best-of-n": points} for name, points in best_of_n_curves(sft_dir, proxies, config).items()}
    if config.ppo_max_steps > 0:
        for name, reward_dir in proxies.items():
            print(f"[{STAGE}] PPO against {name}, KL penalty {config.ppo_kl_coef}", flush=True)
            curves[name]["ppo"] = ppo_curve(sft_dir, reward_dir, name, config, run)

    results = {"proxies": {}, "sft_gold": curves[next(iter(curves))]["best-of-n"][0]["gold"]}
    for name, by_method in curves.items():
        entry = {"accuracy": proxy_metrics[name].get("accuracy"),
                 "gold_rank_correlation": proxy_metrics[name].get("gold_rank_correlation"), "methods": {}}
        for method, points in by_method.items():
            base = points[0]["gold"]  # n = 1, or PPO's step 0: the SFT model
            fit = fit_gao([math.sqrt(max(p["kl"], 0.0)) for p in points], [p["gold"] - base for p in points], method)
            entry["methods"][method] = {"points": points, "base_gold": base, "fit": fit}
        results["proxies"][name] = entry

    plot(run.path / "overoptimization.png", results)
    atomic_write_text(run.path / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(run.path / "results.md", table(results) + "\n")
    print(table(results))
    metrics = {"proxies": len(proxies), "wall_time_s": round(time.time() - started, 2)}
    for name, entry in results["proxies"].items():
        for method, result in entry["methods"].items():
            best = max(result["points"], key=lambda p: p["gold"])
            metrics[f"{name}/{method}/best_gold"] = best["gold"]
            metrics[f"{name}/{method}/best_gold_kl"] = best["kl"]
    run.finish(metrics, makes_model=False)  # the proxies and PPO policies are models of runs of their own
    print(f"wrote {run.path}/overoptimization.png, results.json, results.md")
    return metrics


CONFIG = OveroptimizationConfig  # the stage registry (recipes/core/stages.py) parses argv into this
