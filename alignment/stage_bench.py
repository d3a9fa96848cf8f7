"""`rlhf-lab bench --stages`: the GRPO stage on the lab's GPT against the same TRL trainer on its Llama export.

    rlhf-lab bench --stages                  # the 1M and 10M GPTs, 6 GRPO steps each, writes bench_stages.json
    rlhf-lab bench --stages --quick          # a tiny model, 2 steps: seconds (what the tests run)

What a user of an RL stage feels is the stage, not a generation loop: this runs `trl.GRPOTrainer` for the
same number of steps, with the same config, seed, prompts, tokenizer and reward model, once on the lab's
`GPTForCausalLM` and once on its exact `LlamaForCausalLM` export (base_model/export.py: same weights, same
logits). Only the model code differs: the GPT samples through its own `generate` (the lab's sampler where
TRL's call allows it) and runs its own forward; the Llama runs transformers'. Each side's wall time is split
into sampling (TRL's `_generate_single_turn`), scoring (`_calculate_rewards`: the reward model on the decoded
answers, the same model on both sides) and the rest, which is updating (log-probabilities of the policy and
the reference, the loss, backward and the optimizer step). Reported as ratios measured in the same run,
the two sides interleaved (GPT, Llama, Llama, GPT, ...) and each figure the median over repetitions.

The weights are random (scaled as base_model/bench.py scales them), so answers rarely end before the length
budget and both sides sample about the same number of tokens; tokens sampled are reported so that a
difference in work shows.

A third side (not in `--quick`) runs the GPT with `cache_implementation: static`, the compiled decode step
(base_model/static_decode.py): its warm speed as a ratio to the eager GPT's, the seconds spent compiling the
shapes the stage sampled with (paid once per process, by whichever run met a shape first). A fourth runs the GPT with `torch_compile: true` (transformers' key: the trained model's
forward compiled, so the update's steps and the log-probability passes), each run compiling its own model: the
median is the warm speed, the first run (from an empty in-process cache) less it the compiling. For both, the
verdict is how many steps of a stage it takes for the time saved per step to pay for the compiling.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from alignment import ppo_trainer
from alignment.ppo import PPOStageConfig
from base_model import sampler, static_decode, train_tokenizer
from base_model.bench import build_pair
from base_model.hf import GPTForSequenceClassification
from recipes.core.config import parse_config
from recipes.core.errors import UserError
from recipes.core.world import generate
from reward import score

SIZES = ("1M", "10M")
FULL = dict(sizes=SIZES, steps=6, reps=3, batch=16, generations=8, completion_tokens=64, compiled=True)
QUICK = dict(sizes=("tiny",), steps=2, reps=1, batch=4, generations=2, completion_tokens=8, compiled=False)
COMPILED_SIDES = {"static": {"cache_implementation": "static"}, "compiled": {"torch_compile": True}}
PARTS = ("sampling", "scoring", "updating")


def prompts_and_texts():
    """Plain-text prompts and a tokenizer corpus from the smoke world (generated in memory, no files)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, size="smoke", seed=0)
        corpus = (Path(tmp) / "corpus" / "train.txt").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in (Path(tmp) / "eval" / "prompts.jsonl").read_text().splitlines()]
    return [r["prompt"][-1]["content"] for r in rows], corpus.split("\n\n")


def build_models(size: str, tokenizer, out: Path):
    """The GPT, its Llama export and a GPT reward model, saved under `out` (TRL rebuilds the reference from there)."""
    ours, llama = build_pair(size, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    reward = GPTForSequenceClassification(ours.config.__class__(**{**ours.config.to_dict(), "num_labels": 1}))
    for name, model in (("gpt", ours), ("llama", llama), ("reward", reward)):
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    return out / "gpt", out / "llama", out / "reward"


def run_grpo(model_dir: Path, reward_dir: Path, prompts: list[str], settings: dict, work: Path) -> dict:
    """`steps` steps of trl.GRPOTrainer on the model in `model_dir`: wall time, its three parts, tokens sampled."""
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    reward = AutoModelForSequenceClassification.from_pretrained(str(reward_dir), num_labels=1)
    config = trl.GRPOConfig(
        output_dir=str(work), max_steps=settings["steps"], per_device_train_batch_size=settings["batch"],
        num_generations=settings["generations"], max_completion_length=settings["completion_tokens"],
        learning_rate=1e-5, beta=0.02, temperature=1.0, top_k=0, logging_steps=1, save_strategy="no",
        report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False, seed=0, disable_tqdm=True,
        cache_implementation=settings.get("cache_implementation"), torch_compile=settings.get("torch_compile", False))
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward], reward_processing_classes=[tokenizer],
                              args=config, train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                              processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # the raw log dict of every step
    seconds = {part: 0.0 for part in PARTS}
    tokens = [0]

    def timed(name: str, part: str, count=None):
        original = getattr(trainer, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = original(*args, **kwargs)
            seconds[part] += time.perf_counter() - started
            if count is not None:
                tokens[0] += count(out)
            return out

        setattr(trainer, name, wrapper)

    timed("_generate_single_turn", "sampling", count=lambda out: sum(len(ids) for ids in out[0]))
    timed("_calculate_rewards", "scoring")
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    seconds["updating"] = total - seconds["sampling"] - seconds["scoring"]
    return {"seconds": total, **{f"{p}_seconds": seconds[p] for p in PARTS}, "tokens_sampled": tokens[0]}


def run_ppo(model_dir: Path, reward_dir: Path, prompts: list[str], settings: dict, work: Path) -> dict:
    """`steps` rollouts of the lab's PPO loop (alignment/ppo_trainer.py) on the model in `model_dir`, the reward
    model as proxy and value model: wall time, sampling (`generate_answers`), scoring, the rest (the rollout's
    log-probabilities and values, GAE, the PPO epochs), tokens sampled."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    policy, ref = (AutoModelForCausalLM.from_pretrained(str(model_dir)) for _ in range(2))
    reward, value = (AutoModelForSequenceClassification.from_pretrained(str(reward_dir), num_labels=1)
                     for _ in range(2))
    value.requires_grad_(True)
    rollout_batch = settings["batch"]
    config = parse_config(PPOStageConfig, [
        "--per_device_train_batch_size", str(rollout_batch // 2), "--num_mini_batches", "2",
        "--gradient_accumulation_steps", "1", "--num_ppo_epochs", "2", "--max_steps", str(settings["steps"]),
        "--response_length", str(settings["completion_tokens"]), "--learning_rate", "1e-5", "--save_steps", "0",
        "--eval_at_start", "false", "--eval_every", "0", "--seed", "0", "--runs_root", str(work),
        *(["--cache_implementation", settings["cache_implementation"]] if settings.get("cache_implementation") else []),
        *(["--torch_compile", "true"] if settings.get("torch_compile") else [])],
        "align")
    config.output_dir = str(work)

    def proxy(prompt_rows, answers):
        return score(reward, tokenizer, prompt_rows, [a.text for a in answers], ended=[a.ended for a in answers])

    trainer = ppo_trainer.PPOTrainer(config, policy=policy, ref_model=ref, reward_model=reward, value_model=value,
                                     processing_class=tokenizer, train_dataset=datasets.Dataset.from_dict(
                                         {"prompt": prompts[:rollout_batch * settings["steps"]]}), reward=proxy)
    seconds = {part: 0.0 for part in PARTS}
    tokens = [0]
    plain_generate, plain_reward = ppo_trainer.generate_answers, trainer.reward

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        answers = plain_generate(*args, **kwargs)
        seconds["sampling"] += time.perf_counter() - started
        tokens[0] += sum(a.num_tokens for a in answers)
        return answers

    def timed_reward(*args, **kwargs):
        started = time.perf_counter()
        out = plain_reward(*args, **kwargs)
        seconds["scoring"] += time.perf_counter() - started
        return out

    ppo_trainer.generate_answers, trainer.reward = timed_generate, timed_reward
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # a line per rollout
            trainer.train()
        total = time.perf_counter() - started
    finally:
        ppo_trainer.generate_answers = plain_generate
    seconds["updating"] = total - seconds["sampling"] - seconds["scoring"]
    return {"seconds": total, **{f"{p}_seconds": seconds[p] for p in PARTS}, "tokens_sampled": tokens[0]}


RUNNERS = {"grpo": run_grpo, "ppo": run_ppo}


def counting_fast_sampler(run):
    """`run` with a count of the calls the lab's sampler took (the GPT's `generate` hands it the plain ones)."""

    def counted(*args, **kwargs):
        plain, calls = sampler.sample, [0]

        def sample(*a, **k):
            calls[0] += 1
            return plain(*a, **k)

        sampler.sample = sample
        try:
            return {**run(*args, **kwargs), "fast_sampler_calls": calls[0]}
        finally:
            sampler.sample = plain

    return counted


def bench_size(size: str, settings: dict, prompts: list[str], texts: list[str]) -> list[dict]:
    """One row per stage: both sides' medians over `reps` interleaved runs, and the ratios."""
    tokenizer = train_tokenizer(texts, vocab_size=512 if size == "tiny" else 1024)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gpt, llama, reward = build_models(size, tokenizer, Path(tmp))
        sides = ("gpt", "llama", *COMPILED_SIDES) if settings["compiled"] else ("gpt", "llama")
        for stage, run in RUNNERS.items():
            runs = {side: [] for side in sides}
            calls_before = static_decode.shape_calls()
            for rep in range(settings["reps"]):
                for side in (sides if rep % 2 == 0 else sides[::-1]):
                    work = Path(tmp) / f"{stage}-{side}-{rep}"
                    side_settings = {**settings, **COMPILED_SIDES.get(side, {})}
                    runs[side].append(counting_fast_sampler(run)(llama if side == "llama" else gpt, reward, prompts,
                                                                 side_settings, work))
            # The shapes this stage sampled with, and what compiling each cost (once per process, whichever
            # stage met it first): the stage's share of the compiling a user pays.
            calls = {k: n - calls_before.get(k, 0) for k, n in static_decode.shape_calls().items()}
            compiled = {k: static_decode.compile_seconds().get(k, 0.0) for k, n in calls.items() if n > 0}
            if "static" in sides and not compiled:
                raise RuntimeError(f"{stage}: the static side never took the compiled decode step")
            rows.append(summarise(stage, size, settings, runs, compiled))
    return rows


def summarise(stage: str, size: str, settings: dict, runs: dict, compiled: dict | None = None) -> dict:
    row = {"stage": stage, "size": size, "steps": settings["steps"], "batch": settings["batch"],
           "max_completion_length": settings["completion_tokens"]}
    if stage == "grpo":
        row["num_generations"] = settings["generations"]
    for side, results in runs.items():
        for key in results[0]:
            row[f"{side}_{key}"] = statistics.median(r[key] for r in results)
        row[f"{side}_steps_per_s"] = settings["steps"] / row[f"{side}_seconds"]
    row["steps_per_s_ratio"] = row["gpt_steps_per_s"] / row["llama_steps_per_s"]
    for part in PARTS:
        row[f"{part}_ratio"] = row[f"llama_{part}_seconds"] / max(row[f"gpt_{part}_seconds"], 1e-9)
    if "static" in runs:  # the median is the warm speed; compiling was timed apart, once per shape
        row["static_compiled_shapes"] = compiled or {}
        row["static_compile_seconds"] = sum((compiled or {}).values())
        row["static_sampling_ratio"] = row["gpt_sampling_seconds"] / max(row["static_sampling_seconds"], 1e-9)
    if "compiled" in runs:  # each run compiled its own model; the first, from an empty cache, took longest
        row["compiled_first_run_seconds"] = runs["compiled"][0]["seconds"]
        row["compiled_compile_seconds"] = max(0.0, row["compiled_first_run_seconds"] - row["compiled_seconds"])
        row["compiled_updating_ratio"] = row["gpt_updating_seconds"] / max(row["compiled_updating_seconds"], 1e-9)
    return with_verdicts(row)


def with_verdicts(row: dict) -> dict:
    """For each compiled side: its warm speed against the eager GPT's, and after how many steps of a stage the
    time it saves per step has paid for its compiling (none if it saves nothing)."""
    eager_step = row["gpt_seconds"] / row["steps"]
    for side in ("static", "compiled"):
        if f"{side}_seconds" not in row:
            continue
        row[f"{side}_ratio"] = row["gpt_seconds"] / row[f"{side}_seconds"]
        saved = eager_step - row[f"{side}_seconds"] / row["steps"]
        row[f"{side}_break_even_steps"] = row[f"{side}_compile_seconds"] / saved if saved > 0 else None
    return row


def verdict(steps: float | None) -> str:
    return ("never: slower than eager, warm" if steps is None
            else f"pays after ~{steps:,.0f} steps of a stage (compiling included)")


def print_table(rows: list[dict]) -> None:
    print("RL stages (GRPO: trl.GRPOTrainer; PPO: the lab's loop), the lab's GPT against its Llama export on the "
          "same weights; ratio = GPT's speed over Llama's")
    print(f"{'stage':>5} {'size':>5} {'steps/s GPT':>11} {'Llama':>7} {'ratio':>6}   GPT's time in  "
          f"{'sampling':>8} {'scoring':>8} {'updating':>8}   ratio of  {'sampling':>8} {'scoring':>8} {'updating':>8}")
    for r in rows:
        shares = "".join(f"{r[f'gpt_{p}_seconds'] / r['gpt_seconds']:>9.0%}" for p in PARTS)
        ratios = "".join(f"{r[f'{p}_ratio']:>8.2f}x" for p in PARTS)
        print(f"{r['stage']:>5} {r['size']:>5} {r['gpt_steps_per_s']:>11.3f} {r['llama_steps_per_s']:>7.3f} "
              f"{r['steps_per_s_ratio']:>5.2f}x   {'':>13}{shares}   {'':>8}{ratios}")
    for side, title, part in (
            ("static", "cache_implementation: static (the compiled decode step)", "sampling"),
            ("compiled", "torch_compile: true (the trained model's forward compiled)", "updating")):
        chosen = [r for r in rows if f"{side}_ratio" in r]
        if not chosen:
            continue
        print(f"\nThe GPT with {title} against the eager GPT: warm speed, compiling, and when it pays")
        print(f"{'stage':>5} {'size':>5} {'steps/s':>8} {'ratio':>6} {part:>9}   {'compiling':>9}   verdict")
        for r in chosen:
            print(f"{r['stage']:>5} {r['size']:>5} {r[f'{side}_steps_per_s']:>8.3f} {r[f'{side}_ratio']:>5.2f}x "
                  f"{r[f'{side}_{part}_ratio']:>8.2f}x   {r[f'{side}_compile_seconds']:>8.1f}s   "
                  f"{verdict(r[f'{side}_break_even_steps'])}")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-lab bench --stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", action="store_true", help="this benchmark (the RL stage against TRL on Llama)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 steps: seconds, for tests")
    parser.add_argument("--output", default="bench_stages.json", help="where to write the figures")
    parser.add_argument("--steps", type=int, help=f"GRPO steps per run (default {FULL['steps']})")
    parser.add_argument("--reps", type=int, help=f"runs per side, interleaved (default {FULL['reps']})")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("steps", "reps"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise UserError(f"--{key} must be at least 1, got {value}")
            settings[key] = value
    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        raise UserError(f"--output {output}: expected a file path in an existing directory")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, texts = prompts_and_texts()
    rows = [row for size in settings["sizes"] for row in bench_size(size, settings, prompts, texts)]
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__, "stages": rows}
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    print(f"\nwrote {output}")
    return 0
