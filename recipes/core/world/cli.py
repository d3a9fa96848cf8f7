"""`rlhf-lab world`: write the gold world to a directory, or show what it looks like.

    rlhf-lab world --out DIR [--size smoke|default] [--seed N] [--shapes world|hub] [--length_bias B ...]
    rlhf-lab world show [--size smoke|default] [--seed N] [-n K] [--length_bias B ...]

The annotator biases (--length_bias, --sycophancy_bias, --position_bias, --group_disagreement; see
annotators.py) are the keys of a world source: `world:preferences?size=default&length_bias=0.05`.
"""

import argparse
import json
import random
import tempfile
import textwrap
from pathlib import Path

from ..errors import UserError
from .annotators import Biases, parse_biases
from .generate import generate
from .gold import gold_reward
from .hub_shapes import write_hub_shaped
from .sizes import SIZES


def _parser(show: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-lab world show" if show else "rlhf-lab world",
        description="Print a few samples of each kind with their gold terms." if show else
        "Write the gold world (corpus, SFT, preferences, evaluation prompts, stats) to a directory. "
        "Use `rlhf-lab world show` to look at samples.")
    if not show:
        parser.add_argument("--out", required=True, help="directory to write into")
        parser.add_argument("--shapes", choices=["world", "hub"], default="world",
                            help="world: the lab's own files with gold columns; hub: the shapes of the hub datasets "
                            "real recipes name (TinyStories, UltraChat, UltraFeedback, HH), gold columns removed")
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke" if show else "default")
    parser.add_argument("--seed", type=int, default=0)
    helps = {"length_bias": "annotators' utility per world token of an answer (longer answers preferred)",
             "sycophancy_bias": "annotators' utility when an answer flatters or agrees with the user",
             "position_bias": "logit added for the answer shown first",
             "group_disagreement": "spread of the annotator groups' weights on the gold terms (0: one group)"}
    for key in Biases.keys():
        parser.add_argument(f"--{key}", type=float, default=0.0, help=helps[key] + "; default 0: off")
    if show:
        parser.add_argument("-n", type=int, default=3, help="samples of each kind")
    return parser


def cli(argv: list[str]) -> int:
    show = bool(argv) and argv[0] == "show"
    args = _parser(show).parse_args(argv[1:] if show else argv)
    biases = parse_biases({key: str(getattr(args, key)) for key in Biases.keys() if getattr(args, key)}, "flags")
    if show:
        with tempfile.TemporaryDirectory() as tmp:
            generate(tmp, size=args.size, seed=args.seed, biases=biases)
            print(render(Path(tmp), args.n, args.seed))
        return 0
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Never overwrite: a directory with files in it may hold someone's edited data.
        raise UserError(f"{args.out}: already exists and is not empty; expected a new or empty --out directory")
    if args.shapes == "hub":
        if biases.any():
            raise UserError("--shapes hub writes the hub datasets' shapes without the annotators' columns; "
                            "expected no bias flags with it")
        with tempfile.TemporaryDirectory() as tmp:
            counts = write_hub_shaped(out, size=args.size, seed=args.seed, tmp=Path(tmp))
        print(f"wrote {args.out}: " + ", ".join(f"{name} ({n} rows)" for name, n in counts.items()))
        return 0
    stats = generate(out, size=args.size, seed=args.seed, biases=biases)
    print(summary(stats, args.out))
    return 0


def _terms(score) -> str:
    terms = " ".join(f"{name}={value:+.2f}" for name, value in score.terms.items() if value or name == "task")
    return f"gold {score.total:+.2f} [{score.family}] {terms}"


def _quote(text: str) -> str:
    return textwrap.indent(text, "    | ")


def render(world: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    pick = lambda rows: rng.sample(rows, min(n, len(rows)))  # noqa: E731
    read = lambda p: [json.loads(line) for line in (world / p).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    out = ["== corpus (pretraining text) =="]
    documents = (world / "corpus" / "train.txt").read_text(encoding="utf-8").split("\n\n")
    out += [_quote(doc.strip()) + "\n" for doc in pick(documents)]
    out.append("== sft (demonstrations by persona) ==")
    for row in pick(read("sft/train.jsonl")):
        user, reply = row["messages"][0]["content"], row["messages"][-1]["content"]
        out += [f"  persona {row['persona']}: {_terms(gold_reward(user, reply))}", _quote(f"User: {user}\nAssistant: {reply}"), ""]
    out.append("== preferences (annotator label, gold of each side) ==")
    for row in pick(read("preferences/train.jsonl")):
        user = row["prompt"][-1]["content"]
        agree = "agrees with gold" if row["label_agrees_with_gold"] else "DISAGREES with gold"
        biased = f", biases: {', '.join(row['biases_applied'])}" if row.get("biases_applied") else ""
        out += [f"  User: {user}   (label {agree}{', flipped' if row['flipped'] else ''}{biased})"]
        for side in ("chosen", "rejected"):
            reply = row[side][0]["content"]
            out += [f"  {side} ({row['persona_' + side]}): {_terms(gold_reward(user, reply))}", _quote(reply)]
        out.append("")
    out.append("== eval (held-out prompts) ==")
    out += [f"  [{row['family']}] {row['prompt'][-1]['content']}" for row in pick(read("eval/prompts.jsonl"))]
    return "\n".join(out)


def summary(stats: dict, out_dir) -> str:
    lines = [f"wrote the {stats['size']} world (seed {stats['seed']}) to {out_dir} in {stats['generation_seconds']:.1f}s"]
    lines += [f"  {path:30s} {info['bytes']:>10,d} bytes {info['rows']:>7,d} rows" for path, info in stats["files"].items()]
    table = stats["personas"]["mean_gold"]
    personas = ["helpful", "rude", "verbose", "careless", "unsafe"]
    lines.append("mean gold by family and persona:")
    lines.append("  " + f"{'':10s}" + "".join(f"{p:>10s}" for p in personas))
    for family, cells in table.items():
        lines.append("  " + f"{family:10s}" + "".join(f"{cells[p]:>10.2f}" if p in cells else f"{'-':>10s}" for p in personas))
    wins = ", ".join(f"{p} {w['share']:.1%}" for p, w in stats["personas"]["helpful_wins"].items())
    lines.append(f"helpful beats: {wins}")
    a = stats["annotators"]["all"]
    lines.append(f"annotators: agreement with gold {a['measured_agreement']:.3f} (Bradley-Terry expects "
                 f"{a['expected_agreement']:.3f} +- {a['standard_error']:.3f}), noise ceiling {a['noise_ceiling']:.3f}, "
                 f"T={stats['annotators']['bt_temperature']}, flips {stats['annotators']['flip_rate']}")
    effects = stats["annotators"].get("bias_effects")
    if effects:
        on = ", ".join(f"{k} {v}" for k, v in stats["annotators"]["biases"].items() if v)
        parts = [f"{what} answer chosen in {effects['chosen_' + what]:.1%} (expected {effects['expected_chosen_' + what]:.1%}, "
                 f"{effects[what + '_pairs']} pairs)" for what in ("longer", "flattering") if effects[what + "_pairs"]]
        parts.append(f"first-shown answer chosen in {effects['chosen_shown_first']:.1%} "
                     f"(expected {effects['expected_chosen_shown_first']:.1%})")
        lines.append(f"biased annotators ({on}): " + "; ".join(parts))
    return "\n".join(lines)
