"""`rlhf-lab run recipes/<name>`: a whole recipe in order, each stage skipped when already done.

    rlhf-lab run recipes/tinyworld [--from STAGE] [--seeds 0,1,2] [--runs_root DIR] [--set STAGE.KEY=VALUE ...]

A recipe is its folder: `pretrain.yaml`, `sft.yaml`, `reward.yaml`, `overoptimization.yaml` and one
`align-<method>.yaml` per alignment method (and `align-<method>-<variant>.yaml` for the same method with other
keys), each the config of one stage (`rlhf-lab <stage> --config
FILE` runs it alone; other YAML files there are the stages' own includes). The runner makes the world
data the configs name, runs the stages it finds in that order, then `rlhf-lab compare` on the
alignment runs.

A stage is skipped, and says so, when its run directory holds a finished run whose saved config.yaml
equals the stage's resolved config now and whose parents (the models it started from or was scored
with) still have the weights it recorded; otherwise it runs again, replacing the old run. So editing a
key reruns that stage, and its descendants rerun only if its output changed. `--from STAGE` reruns
that stage and every one after it; `--seeds` repeats the alignment stages once per seed (the YAML's
seed in align-<method>/, the others in align-<method>-seed<k>/; a variant's in align-<method>-<variant>[-seed<k>]/).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import yaml

from alignment.compare import CompareConfig, is_up_to_date
from alignment.compare import main as compare
from alignment.evaluate import with_sft
from recipes.core.config import CommandParser, config_dict
from recipes.core.data.world_cache import PREFIX, cached_dir, parse_world_source, world_dir
from recipes.core.errors import UserError
from recipes.core.lock import HELD_ENV, held_by_this_process, recipe_lock
from recipes.core.progress import recipe_bar
from recipes.core.rundir import RunDir, changed_keys, weights_hash
from recipes.core.stages import METHODS, STAGES, StageSpec, method_of

ALIGN_PREFIX = "align-"
COMPARE = "compare"
WORLD = "world"


@dataclasses.dataclass
class Stage:
    name: str  # its run directory under <runs_root>/<recipe>/
    spec: StageSpec  # the registry's entry: its module, config class and parents
    argv: list[str]

    @property
    def command(self) -> tuple[str, ...]:
        """`rlhf-lab <command> <argv>` runs it in a process of its own."""
        return tuple(self.spec.command.split())

    @property
    def kind(self) -> str:
        return "align" if self.name.startswith(ALIGN_PREFIX) else self.name


# ----------------------------------------------------------------------------------------------
# The plan


def parse_overrides(pairs: list[str]) -> dict[str, list[str]]:
    """`--set sft.learning_rate=1e-3` -> {"sft": ["--learning_rate", "1e-3"]}; `align.KEY` means every method."""
    overrides: dict[str, list[str]] = {}
    for pair in pairs:
        target, eq, value = pair.partition("=")
        stage, dot, key = target.partition(".")
        if not eq or not dot or not stage or not key:
            raise UserError(f"command line: --set expects STAGE.KEY=VALUE (e.g. sft.learning_rate=1e-4), got '{pair}'")
        overrides.setdefault(stage, []).extend([f"--{key}", value])
    return overrides


def plan(recipe_dir: Path, *, seeds: list[int] | None, runs_root: str | None,
         overrides: dict[str, list[str]]) -> list[Stage]:
    """The recipe's stages in the order they run (world data and compare not included)."""
    if not recipe_dir.is_dir():
        raise UserError(f"{recipe_dir}: recipe folder not found (expected e.g. recipes/tinyworld)")
    common = ["--recipe", recipe_dir.resolve().name] + (["--runs_root", runs_root] if runs_root else [])
    stages = []
    for name, spec in STAGES.items():
        path = recipe_dir / f"{name}.yaml"
        if path.is_file():
            stages.append(Stage(name, spec, ["--config", str(path), *common, *overrides.pop(name, [])]))
    methods = []  # (order, the run's name after align-, its method, its file)
    for path in sorted(recipe_dir.glob(f"{ALIGN_PREFIX}*.yaml")):
        name = path.stem[len(ALIGN_PREFIX):]
        method = method_of(name)
        if method is None:
            raise UserError(f"{path}: unknown alignment method '{name}'; expected align-<method>.yaml or "
                            f"align-<method>-<variant>.yaml with method one of {', '.join(METHODS)}")
        methods.append((list(METHODS).index(method), name, method, path))
    methods.sort()
    align_overrides = overrides.pop("align", [])
    method_overrides = {name: overrides.pop(f"{ALIGN_PREFIX}{name}", []) for _, name, _, _ in methods}
    if overrides:
        known = list(STAGES) + ["align"] + [f"{ALIGN_PREFIX}{name}" for _, name, _, _ in methods]
        raise UserError(f"command line: --set names stage '{next(iter(overrides))}', which recipe {recipe_dir} "
                        f"does not have (stages: {', '.join(known)})")
    if not stages and not methods:
        raise UserError(f"{recipe_dir}: no stage configs (expected pretrain.yaml, sft.yaml, reward.yaml "
                        "or align-<method>.yaml)")

    yaml_seeds = {name: _yaml_seed(path) for _, name, _, path in methods}
    for seed in seeds or [None]:
        for _, name, method, path in methods:
            argv = ["--config", str(path), *common, *align_overrides, *method_overrides[name]]
            run_name = f"{ALIGN_PREFIX}{name}"
            if seed is not None and seed != yaml_seeds[name]:
                run_name = f"{run_name}-seed{seed}"
                argv += ["--seed", str(seed)]
            if run_name != f"{ALIGN_PREFIX}{method}":
                argv += ["--run_name", run_name]
            stages.append(Stage(run_name, METHODS[method], argv))
    return stages


def _yaml_seed(path: Path) -> int:
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return int(values.get("seed", 0)) if isinstance(values, dict) else 0


def world_sources(configs: list[Any]) -> list[str]:
    """Every `world:` data source the resolved configs name, in order of first mention."""
    sources: list[str] = []
    for config in configs:
        for value in config_dict(config).values():
            if isinstance(value, str) and value.startswith(PREFIX) and value not in sources:
                sources.append(value)
    return sources


# ----------------------------------------------------------------------------------------------
# Is a stage done?


def recorded_parents(manifest: dict) -> list[tuple[str, Path, str]]:
    """(what, model directory, weights sha256) of every model the run recorded starting from or scoring with."""
    return [(f"{p['role']} model", Path(p["model"]), p["weights_sha256"])
            for p in manifest.get("parents") or [] if p.get("weights_sha256")]


def resumable(run: RunDir, config: Any) -> bool:
    """An interrupted run of this very config with checkpoints to continue from (in place, or a staged rerun)."""
    run = run.interrupted_rerun() or run
    manifest = run.manifest()
    return bool(manifest and manifest.get("status") != "finished" and changed_keys(run.config_path, config) == []
                and run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir()))


def reason_to_run(run: RunDir, config: Any) -> str | None:
    """Why the stage must run, or None when its finished run is up to date."""
    manifest = run.manifest()
    if manifest is None:
        return "not run yet"
    if not run.is_finished():
        return "its last run did not finish"
    changed = changed_keys(run.config_path, config)
    if changed is None:
        return "its config.yaml is missing or unreadable"
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return "config changed: " + ", ".join(changed[:3]) + more
    if "parents" not in manifest:
        return "its manifest was written by an older rlhf-lab (no parents recorded)"
    for what, model_dir, sha in recorded_parents(manifest):
        if not model_dir.is_dir():
            return f"its {what} ({model_dir}) is gone"
        if weights_hash(model_dir) != sha:
            return f"its {what} changed"
    return None


# ----------------------------------------------------------------------------------------------
# What each stage prints when it is done


def headline(stage: str, metrics: dict) -> str:
    m = metrics
    try:
        if stage == "pretrain":
            return f"eval loss {m['initial_eval_loss']:.3f} -> {m['eval_loss']:.3f} ({m['steps']} steps)"
        if stage == "sft":
            return (f"gold reward {m['pretrained_gold_reward']:+.3f} (pretrained) -> {m['gold_reward']:+.3f}, "
                    f"ends its turn {m['end_of_turn_rate']:.0%}")
        if stage == "reward":
            return (f"accuracy {m['accuracy']:.3f} = {m['accuracy_of_ceiling']:.0%} of the noise ceiling, "
                    f"rank correlation with gold {m['gold_rank_correlation']:.3f}")
        if stage.startswith(ALIGN_PREFIX):
            return with_sft(m)
    except (KeyError, TypeError):
        pass
    return ", ".join(f"{k} {v:.4g}" for k, v in list(m.items())[:3] if isinstance(v, (int, float)))


# ----------------------------------------------------------------------------------------------
# The command


def parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="rlhf-lab run", description="Run a whole recipe in order (world data, pretrain, SFT, reward, "
               "every alignment method, compare), skipping stages that are already done.")
    p.add_argument("recipe", help="the recipe folder, e.g. recipes/tinyworld")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="rerun this stage and every later one: world, pretrain, sft, reward, align, align-<method>, compare")
    p.add_argument("--seeds", help="comma-separated seeds to repeat the alignment stages with, e.g. 0,1,2")
    p.add_argument("--runs_root", help="root of the run directories (default: $RLHF_LAB_RUNS, else ./runs)")
    p.add_argument("--jobs", type=int, default=None,
                   help="alignment stages run this many at a time, each in its own process. Default: 2 on a "
                   "machine with 2 or more cores and no GPU, else 1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override one key of one stage (align.KEY: every method); repeatable")
    return p


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"command line: --seeds expects comma-separated integers, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"command line: --seeds expects distinct integers, got '{text}'")
    return seeds


def first_forced(order: list[str], from_stage: str | None) -> int:
    """Index of the first stage `--from` forces to rerun (len(order) when none)."""
    if from_stage is None:
        return len(order)
    for i, name in enumerate(order):
        if name == from_stage or (from_stage == "align" and name.startswith(ALIGN_PREFIX)) \
                or name.startswith(f"{from_stage}-seed"):
            return i
    raise UserError(f"command line: --from names stage '{from_stage}'; this recipe's stages are "
                    + ", ".join(dict.fromkeys(["align" if n.startswith(ALIGN_PREFIX) else n for n in order]
                                              + [n for n in order if n.startswith(ALIGN_PREFIX)])))


def run_recipe(recipe_dir: Path, *, from_stage: str | None = None, seeds: list[int] | None = None,
               runs_root: str | None = None, overrides: list[str] = (), jobs: int = 1) -> dict[str, str]:
    """Run the recipe; returns {stage: "ran" | "skipped"}."""
    stages = plan(recipe_dir, seeds=seeds, runs_root=runs_root, overrides=parse_overrides(list(overrides)))
    configs = {s.name: s.spec.parse(s.argv) for s in stages}  # every config checked first
    recipe = recipe_dir.resolve().name
    root = next(iter(configs.values())).resolved_runs_root()
    order = [WORLD] + [s.name for s in stages] + [COMPARE]
    forced_from = first_forced(order, from_stage)
    print(f"recipe {recipe}: {len(order)} stages -> {root / recipe}"
          + (f" (alignment stages {jobs} at a time)" if jobs > 1 else ""))

    outcome: dict[str, str] = {}
    started = time.time()
    with recipe_lock(root / recipe):
        bar = recipe_bar(len(order), recipe)
        try:
            outcome[WORLD] = run_world(world_sources(list(configs.values())), forced=forced_from == 0)
            bar.update()
            parallel = []  # alignment stages to run side by side once their parents are done
            for i, stage in enumerate(stages, start=1):
                config = configs[stage.name]
                run = RunDir(root, recipe, stage.name)
                reason = f"--from {from_stage}" if i >= forced_from else reason_to_run(run, config)
                if reason is None:
                    print(f"[{stage.name}] skipped: finished, same config and parents  "
                          f"({headline(stage.name, run.manifest()['metrics'])})")
                    outcome[stage.name] = "skipped"
                elif jobs > 1 and stage.kind == "align":
                    parallel.append((stage, reason, run.path.exists(), resumable(run, config) and i < forced_from))
                    continue
                else:
                    config.resume = resumable(run, config) and i < forced_from
                    config.overwrite = run.path.exists() and not config.resume
                    print(f"[{stage.name}] " + ("resuming from its last checkpoint (interrupted, same config)"
                                                if config.resume else f"running ({reason})"), flush=True)
                    t0 = time.time()
                    metrics = stage.spec.load().main(config)
                    print(f"[{stage.name}] done in {time.time() - t0:.0f} s: {headline(stage.name, metrics)}", flush=True)
                    outcome[stage.name] = "ran"
                bar.update()
            if parallel:
                outcome.update(run_side_by_side(parallel, jobs, root / recipe / "logs", bar))
            outcome = {name: outcome[name] for name in order if name in outcome}
            failed = [name for name, result in outcome.items() if result == "failed"]
            if failed:
                raise UserError(f"stages failed: {', '.join(failed)} (their logs are in {root / recipe / 'logs'}); "
                                "the stages that finished are kept")
            if any(s.kind == "align" for s in stages):
                outcome[COMPARE] = run_compare(root / recipe, forced=len(order) - 1 >= forced_from)
            else:
                print(f"[{COMPARE}] skipped: the recipe has no alignment stages")
                outcome[COMPARE] = "skipped"
            bar.update()
        finally:
            bar.close()
    ran = sum(v == "ran" for v in outcome.values())
    print(f"recipe {recipe}: {ran} stages ran, {len(outcome) - ran} skipped, {time.time() - started:.0f} s")
    return outcome


def run_side_by_side(todo: list[tuple[Stage, str, bool, bool]], jobs: int, log_dir: Path, bar) -> dict[str, str]:
    """Run independent stages `jobs` at a time, each in a process of its own with cores / jobs threads.

    A model this small keeps two threads only partly busy, so two one-thread processes get more done
    than one two-thread process (README, "What the default recipe gives"). Each process writes its
    log to log_dir/<stage>.log; a stage that fails is reported by the last line of its log.
    """
    import os
    import subprocess
    import sys

    log_dir.mkdir(parents=True, exist_ok=True)
    # KTO last: by then DPO has sampled the answers both rank (same SFT model and settings), and KTO
    # takes them from the cache instead of sampling them again beside it.
    todo = sorted(todo, key=lambda item: item[0].name.startswith(f"{ALIGN_PREFIX}kto"))
    threads = str(max(1, (os.cpu_count() or 1) // jobs))

    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           HELD_ENV: held_by_this_process()}  # the stages write under this process's recipe lock
    pending, running, outcome = list(todo), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            stage, reason, exists, resume = pending.pop(0)
            log = log_dir / f"{stage.name}.log"
            how = ["--resume", "true"] if resume else ["--overwrite", "true"] if exists else []
            argv = [sys.executable, "-m", "recipes.core.cli", *stage.command, *stage.argv, *how]
            print(f"[{stage.name}] " + ("resuming from its last checkpoint" if resume else f"running ({reason})")
                  + f", {threads} thread(s), log {log}", flush=True)
            handle = open(log, "a" if resume else "w", encoding="utf-8")
            running[subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)] = (stage, handle, time.time())
        time.sleep(0.2)
        for process in [p for p in running if p.poll() is not None]:
            stage, handle, t0 = running.pop(process)
            handle.close()
            log = log_dir / f"{stage.name}.log"
            if process.returncode == 0:
                metrics = (RunDir(log_dir.parent.parent, log_dir.parent.name, stage.name).manifest() or {}).get("metrics", {})
                print(f"[{stage.name}] done in {time.time() - t0:.0f} s: {headline(stage.name, metrics)}", flush=True)
                outcome[stage.name] = "ran"
            else:
                lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
                print(f"[{stage.name}] failed (exit {process.returncode}): {lines[-1] if lines else 'no output'}", flush=True)
                outcome[stage.name] = "failed"
            bar.update()
    return outcome


def run_world(sources: list[str], *, forced: bool) -> str:
    """Make (or find cached) every world dataset the recipe names."""
    import shutil

    worlds = list(dict.fromkeys(parse_world_source(s) for s in sources))
    missing = [w for w in worlds if forced or not cached_dir(w).is_dir()]
    if not worlds:
        print(f"[{WORLD}] skipped: the recipe names no world data")
        return "skipped"
    if not missing:
        print(f"[{WORLD}] skipped: {len(worlds)} world datasets cached ({', '.join(map(str, worlds))})")
        return "skipped"
    print(f"[{WORLD}] running ({'--from ' + WORLD if forced else 'not cached yet'})", flush=True)
    t0 = time.time()
    for world in missing:
        if forced and cached_dir(world).is_dir():
            shutil.rmtree(cached_dir(world))
        world_dir(world)
    print(f"[{WORLD}] done in {time.time() - t0:.0f} s: generated {', '.join(map(str, missing))}", flush=True)
    return "ran"


def run_compare(recipe_runs: Path, *, forced: bool) -> str:
    config = CompareConfig(run_dir=str(recipe_runs))
    if not forced and is_up_to_date(config):
        print(f"[{COMPARE}] skipped: the alignment runs have not changed since {recipe_runs / COMPARE} was written")
        print((recipe_runs / COMPARE / "compare.md").read_text(encoding="utf-8").split("\n\n", 1)[-1], end="")
        return "skipped"
    print(f"[{COMPARE}] running", flush=True)
    compare(config)
    return "ran"


def default_jobs() -> int:
    """Two alignment stages at a time on a CPU-only machine with 2+ cores: a 1M-parameter model keeps two
    threads only partly busy, and two one-thread processes did 1.1x (training) to 1.4x (sampling) the
    work of one two-thread process on this project's 2-core machine. On a GPU one at a time."""
    import os

    import torch

    return 2 if (os.cpu_count() or 1) >= 2 and not torch.cuda.is_available() else 1


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"command line: --jobs must be 1 or more, got {args.jobs}")
    run_recipe(Path(args.recipe), from_stage=args.from_stage, seeds=parse_seeds(args.seeds),
               runs_root=args.runs_root, overrides=args.overrides, jobs=args.jobs or default_jobs())
    return 0
