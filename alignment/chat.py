"""`rlhf-lab chat RUN_DIR`: talk to a model, each answer shown with its gold and proxy score.

    rlhf-lab chat runs/tinyworld/align-ppo [--temperature 0.7] [--reward_model runs/other/reward]

Type a message and press enter; /reset starts a new conversation, /quit (or Ctrl-D) leaves. Gold
scores the last reply to the last message (it is defined on world prompts such as "What is 12 + 7?";
other messages get only its style terms); the proxy is the recipe's reward model. When the
conversation outgrows the model's context, the oldest turns are dropped.
"""

from __future__ import annotations

import argparse

from alignment.answerers import find_reward_model, load_answerer, score_line, scores
from recipes.core.config import CommandParser
from recipes.core.errors import UserError
from recipes.core.generation import render_prompts


def fit_history(answerer, messages: list[dict], max_new_tokens: int) -> list[dict]:
    """The latest turns that fit the context with room for the answer (always the last user message)."""
    kept = list(messages)
    while answerer.context and len(render_prompts(answerer.tokenizer, [kept])[0]) + max_new_tokens > answerer.context:
        if len(kept) <= 1:
            raise UserError(f"message too long for {answerer.name}'s context of {answerer.context} tokens "
                            f"with max_new_tokens {max_new_tokens}")
        kept = kept[2:] if len(kept) > 2 else kept[-1:]
    return kept


def chat(answerer, proxy, *, temperature: float, max_new_tokens: int, seed: int, read=None, write=None) -> int:
    read, write = read or input, write or print  # looked up per call, so a replaced input() or print() is used
    write(f"chatting with {answerer.name}" + (f" (best of {answerer.best_of_n})" if answerer.best_of_n > 1 else "")
          + "; /reset for a new conversation, /quit to leave")
    messages: list[dict] = []
    turns = 0
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            write("")
            return turns
        if line in ("/quit", "/exit"):
            return turns
        if line == "/reset":
            messages = []
            write("(new conversation)")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        try:
            history = fit_history(answerer, messages, max_new_tokens)
        except UserError as err:
            write(f"({err})")
            messages.pop()
            continue
        answer = answerer.answer([history], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + turns)[0]
        score = scores([history], [answer], proxy)[0]
        write(f"{answerer.name}> {answer.text}")
        write(f"    [{score_line(score)}]")
        messages.append({"role": "assistant", "content": answer.text})
        turns += 1


def parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="rlhf-lab chat", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (e.g. runs/tinyworld/align-ppo) or a saved model")
    p.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    p.add_argument("--max_new_tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward_model", help="proxy reward model (default: the recipe's reward/model)")
    return p


def cli(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.max_new_tokens <= 0 or args.temperature < 0:
        raise UserError("command line: --max_new_tokens must be positive and --temperature not negative")
    answerer = load_answerer(args.run_dir)
    chat(answerer, find_reward_model([args.run_dir], args.reward_model), temperature=args.temperature,
         max_new_tokens=args.max_new_tokens, seed=args.seed)
    return 0
