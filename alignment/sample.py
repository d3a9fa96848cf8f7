"""`rlhf-lab sample --prompts FILE_OR_FAMILY RUN_DIR...`: the same prompts answered side by side by several models.

    rlhf-lab sample --prompts math runs/tinyworld/sft runs/tinyworld/align-ppo runs/tinyworld/align-dpo
    rlhf-lab sample --prompts my_prompts.jsonl -n 10 --temperature 1.0 --out side_by_side.md runs/tinyworld/*/

--prompts is a file of prompts (any shape `rlhf-lab` reads: jsonl/json/parquet/txt with a prompt or
messages column) or a world task family (chat, math, safety, stories, words; `all` for every family),
whose prompts come from the held-out world evaluation set. Each answer is shown with its gold score
(world prompts) and the proxy score of the recipe's reward model. Greedy unless --temperature > 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alignment.answerers import find_reward_model, load_answerer, score_line, scores
from recipes.core.config import CommandParser
from recipes.core.data import load_prompts
from recipes.core.errors import UserError
from recipes.core.generation import as_messages, render_prompts
from recipes.core.rundir import atomic_write_text
from recipes.core.world import family_of
from recipes.core.world.families import all_families

WORLD_EVAL = "world:eval?size=default&seed=0"


def world_families() -> list[str]:
    return [family.NAME for family in all_families()]


def load_sample_prompts(source: str, n: int, eval_prompts: str = WORLD_EVAL) -> list:
    if Path(source).exists():
        prompts = list(load_prompts(source)["prompt"])
    elif source in world_families() or source == "all":
        prompts = [p for p in load_prompts(eval_prompts, split="test")["prompt"]
                   if source == "all" or family_of(p) == source]
    else:
        raise UserError(f"--prompts {source}: neither a file nor a world family (expected a path, 'all' or one of "
                        f"{', '.join(world_families())})")
    if not prompts:
        raise UserError(f"--prompts {source}: no prompts found")
    return prompts[:n]


def check_fits(answerer, prompts, max_new_tokens: int) -> None:
    for i, ids in enumerate(render_prompts(answerer.tokenizer, prompts)):
        if answerer.context and len(ids) + max_new_tokens > answerer.context:
            raise UserError(f"prompt {i + 1}: {len(ids)} tokens plus max_new_tokens {max_new_tokens} exceed "
                            f"{answerer.name}'s context of {answerer.context}; lower --max_new_tokens")


def side_by_side(prompts, names: list[str], answers: dict, scored: dict) -> str:
    blocks = []
    for i, prompt in enumerate(prompts):
        user = as_messages(prompt)[-1]["content"]
        lines = [f"## {i + 1}. {user}", ""]
        for name in names:
            lines += [f"**{name}** ({scored[name][i]})", "", "> " + (answers[name][i].text or "(empty)").replace("\n", "\n> "), ""]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def main(args) -> str:
    prompts = load_sample_prompts(args.prompts, args.n, args.eval_prompts)
    proxy = find_reward_model(args.run_dirs, args.reward_model)
    answers, scored, names = {}, {}, []
    for run_dir in args.run_dirs:
        answerer = load_answerer(run_dir)
        name = answerer.name if answerer.name not in answers else str(run_dir)
        check_fits(answerer, prompts, args.max_new_tokens)
        answers[name] = answerer.answer(prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                        seed=args.seed)
        scored[name] = [score_line(s) for s in scores(prompts, answers[name], proxy)]
        names.append(name)
    text = side_by_side(prompts, names, answers, scored)
    print(text)
    if proxy is not None:
        print(f"(proxy: {proxy.path})")
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
        print(f"wrote {args.out}")
    return text


def parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="rlhf-lab sample", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or saved model directories")
    p.add_argument("--prompts", required=True, help="a prompts file, or a world family (or 'all')")
    p.add_argument("-n", type=int, default=5, help="how many prompts (default 5)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sampled")
    p.add_argument("--max_new_tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward_model", help="proxy reward model (default: the recipe's reward/model)")
    p.add_argument("--eval_prompts", default=WORLD_EVAL, help=f"where a family's prompts come from (default {WORLD_EVAL})")
    p.add_argument("--out", help="also write the side-by-side answers to this markdown file")
    return p


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.n <= 0 or args.max_new_tokens <= 0 or args.temperature < 0:
        raise UserError("command line: -n and --max_new_tokens must be positive and --temperature not negative")
    main(args)
    return 0
