"""Write the world: corpus, SFT conversations, preference pairs, evaluation prompts and stats.

Every kind and split draws from its own random stream, named after the seed, the kind and the
split, so generating one kind alone gives the same bytes as generating all of them, and the same
seed always gives byte-identical files. Prompts and answers use separate streams so that the
evaluation prompts can avoid the training prompts without regenerating any answers.

Layout of `out_dir` (all JSONL with sorted keys, UTF-8):

    corpus/train.txt, corpus/validation.txt   documents separated by blank lines
    sft/{train,validation}.jsonl              messages, persona, family, gold
    preferences/{train,validation}.jsonl      prompt, chosen, rejected (conversational), family,
                                              gold_chosen, gold_rejected, persona_chosen,
                                              persona_rejected, flipped, label_agrees_with_gold,
                                              p_agree
    eval/prompts.jsonl                        prompt (conversational), family  (separate seed)
    stats.json                                sizes, persona score table, annotator agreement,
                                              noise ceiling (deterministic)
    timing.json                               generation time (the only file that varies)
"""

import json
import random
import time
from pathlib import Path

from ..errors import UserError
from . import annotators, personas
from .annotators import GROUPS, Annotators, Biases, answer_tokens, flatters
from .corpus import corpus_text
from .families import all_families
from .gold import gold_reward
from .sizes import SIZES, WorldSize

GENERATOR_VERSION = "2"  # 2: math operands up to 20 (were 50)
KINDS = ("corpus", "sft", "preferences", "eval")
SPLITS = ("train", "validation")
EVAL_ATTEMPTS = 30  # draws per evaluation prompt to find one unseen in training


def stream(seed: int, *names: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so streams are stable across runs and
    # platforms and independent of each other.
    return random.Random("/".join(["rlhf-lab-world", GENERATOR_VERSION, str(seed), *names]))


def world_size(size: str) -> WorldSize:
    if size not in SIZES:
        raise UserError(f"world size {size!r}: expected one of {', '.join(SIZES)}")
    return SIZES[size]


def split_rows(spec: WorldSize, rows: int, split: str) -> int:
    return rows if split == "train" else max(1, round(rows * spec.validation_share))


def sample_prompts(rng: random.Random, n: int) -> list[tuple]:
    """n (family module, prompt text, facts) drawn by family weight."""
    families = all_families()
    weights = [f.WEIGHT for f in families]
    out = []
    for _ in range(n):
        family = rng.choices(families, weights=weights)[0]
        prompt = family.sample_prompt(rng)
        out.append((family, prompt, family.parse(prompt)))
    return out


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def sft_rows(prompts, rng) -> list[dict]:
    rows = []
    for family, prompt, facts in prompts:
        persona = personas.sample_persona(rng, family, facts, personas.DEFAULT_MIX)
        answer = personas.answer(persona, family, facts, rng)
        rows.append({"messages": user(prompt) + assistant(answer), "persona": persona,
                     "family": family.NAME, "gold": gold_reward(prompt, answer).total})
    return rows


def preference_rows(prompts, rng, annotators: Annotators, group_rng) -> tuple[list[dict], list]:
    rows, labels = [], []
    biases = annotators.biases
    for family, prompt, facts in prompts:
        for _ in range(10):  # redraw personas on a tie: a tie has no gold order to label
            persona_a, persona_b = rng.sample(personas.eligible(family, facts), 2)
            answer_a = personas.answer(persona_a, family, facts, rng)
            answer_b = personas.answer(persona_b, family, facts, rng)
            score_a, score_b = gold_reward(prompt, answer_a), gold_reward(prompt, answer_b)
            gold_a, gold_b = score_a.total, score_b.total
            if gold_a != gold_b:
                break
        else:
            continue
        # The group comes from a stream of its own, so the answers drawn after it are the same with or without groups.
        group = group_rng.randrange(len(GROUPS)) if biases.group_disagreement else None
        label = annotators.label((score_a.terms, score_b.terms), (answer_a, answer_b), (gold_a, gold_b), rng, group)
        extra = {}
        if biases.any():
            extra = {"annotator_group": group, "biases_applied": biases.applied(answer_a, answer_b, group),
                     "shown_first": "chosen" if label.a_preferred else "rejected"}
        if not label.a_preferred:
            persona_a, persona_b, answer_a, answer_b, gold_a, gold_b = persona_b, persona_a, answer_b, answer_a, gold_b, gold_a
        if biases.any():
            for side, text in (("chosen", answer_a), ("rejected", answer_b)):
                extra[f"tokens_{side}"], extra[f"flatters_{side}"] = answer_tokens(text), flatters(text)
        labels.append(label)
        rows.append({"prompt": user(prompt), "chosen": assistant(answer_a), "rejected": assistant(answer_b),
                     "family": family.NAME, "gold_chosen": gold_a, "gold_rejected": gold_b,
                     "persona_chosen": persona_a, "persona_rejected": persona_b, "flipped": label.flipped,
                     "label_agrees_with_gold": label.agrees_with_gold, "p_agree": round(label.p_agree, 6), **extra})
        if biases.any():
            rows[-1]["p_agree_unseen"] = round(label.p_agree_unseen, 6)
    return rows, labels


def training_prompt_texts(spec: WorldSize, seed: int) -> set[str]:
    texts = set()
    for kind, rows in (("sft", spec.sft_rows), ("preferences", spec.preference_pairs)):
        for split in SPLITS:
            n = split_rows(spec, rows, split)
            texts.update(p for _, p, _ in sample_prompts(stream(seed, kind, split, "prompts"), n))
    return texts


def eval_rows(spec: WorldSize, seed: int) -> tuple[list[dict], float]:
    """Evaluation prompts from their own seed, avoiding training prompts where the family allows.

    Small families (chat) have fewer distinct prompts than training uses, so after
    `EVAL_ATTEMPTS` draws a seen prompt is kept; the share held out is reported.
    """
    seen = training_prompt_texts(spec, seed)
    rng = stream(seed, "eval", "prompts")
    families = all_families()
    rows, held_out = [], 0
    for _ in range(spec.eval_prompts):
        family = rng.choices(families, weights=[f.WEIGHT for f in families])[0]
        for _ in range(EVAL_ATTEMPTS):
            prompt = family.sample_prompt(rng)
            if prompt not in seen:
                held_out += 1
                break
        rows.append({"prompt": user(prompt), "family": family.NAME})
    return rows, held_out / max(1, len(rows))


def persona_table(prompts, rng) -> dict:
    """Mean gold per family and persona, and how often helpful beats each flawed persona.

    Every persona answers every prompt it applies to (unsafe: harmful requests only).
    """
    totals, wins = {}, {p: [0, 0] for p in personas.FLAWED}
    for family, prompt, facts in prompts:
        scores = {p: gold_reward(prompt, personas.answer(p, family, facts, rng)).total
                  for p in personas.eligible(family, facts)}
        for persona, score in scores.items():
            cell = totals.setdefault(family.NAME, {}).setdefault(persona, [0.0, 0])
            cell[0] += score
            cell[1] += 1
            if persona != "helpful":
                wins[persona][0] += scores["helpful"] > score
                wins[persona][1] += 1
    return {
        "mean_gold": {fam: {p: round(s / n, 4) for p, (s, n) in sorted(cells.items())}
                      for fam, cells in sorted(totals.items())},
        "helpful_wins": {p: {"share": round(w / n, 4) if n else None, "prompts": n} for p, (w, n) in wins.items()},
    }


def generate(out_dir, size: str = "default", seed: int = 0, kinds=KINDS, biases: Biases = Biases()) -> dict:
    """Write the world into `out_dir` and return its stats (also written to stats.json).

    `biases` are the preference annotators' (annotators.py); the other kinds do not depend on them.
    """
    start = time.perf_counter()
    spec, out = world_size(size), Path(out_dir)
    stats = {"size": size, "seed": seed, "generator_version": GENERATOR_VERSION, "files": {}}

    if "corpus" in kinds:
        for split in SPLITS:
            n_bytes = spec.corpus_bytes if split == "train" else max(500, int(spec.corpus_bytes * spec.validation_share))
            path = out / "corpus" / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(corpus_text(stream(seed, "corpus", split), n_bytes), encoding="utf-8", newline="\n")

    if "sft" in kinds:
        for split in SPLITS:
            prompts = sample_prompts(stream(seed, "sft", split, "prompts"), split_rows(spec, spec.sft_rows, split))
            write_jsonl(out / "sft" / f"{split}.jsonl", sft_rows(prompts, stream(seed, "sft", split, "answers")))
        table_prompts = sample_prompts(stream(seed, "sft", "train", "prompts"), spec.sft_rows)
        stats["personas"] = persona_table(table_prompts, stream(seed, "persona-table"))

    if "preferences" in kinds:
        all_labels, all_rows = [], []
        labelling = Annotators(spec.bt_temperature, spec.flip_rate, biases)
        for split in SPLITS:
            prompts = sample_prompts(stream(seed, "preferences", split, "prompts"),
                                     split_rows(spec, spec.preference_pairs, split))
            rows, labels = preference_rows(prompts, stream(seed, "preferences", split, "answers"), labelling,
                                           stream(seed, "preferences", split, "annotator-groups"))
            write_jsonl(out / "preferences" / f"{split}.jsonl", rows)
            stats.setdefault("annotators", {})[split] = _rounded(annotators.agreement_stats(labels))
            all_labels += labels
            all_rows += rows
        stats["annotators"]["all"] = _rounded(annotators.agreement_stats(all_labels))
        stats["annotators"].update(bt_temperature=spec.bt_temperature, flip_rate=spec.flip_rate)
        if biases.any():
            stats["annotators"]["biases"] = {key: getattr(biases, key) for key in biases.keys()}
            stats["annotators"]["bias_effects"] = _rounded(annotators.bias_effects(all_rows, all_labels))
        stats["noise_ceiling"] = stats["annotators"]["all"]["noise_ceiling"]

    if "eval" in kinds:
        rows, held_out = eval_rows(spec, seed)
        write_jsonl(out / "eval" / "prompts.jsonl", rows)
        stats["eval"] = {"prompts": len(rows), "unseen_in_training": round(held_out, 4)}

    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name not in ("stats.json", "timing.json"):
            text = path.read_bytes()
            rows = text.count(b"\n\n") + 1 if path.suffix == ".txt" else text.count(b"\n")
            stats["files"][path.relative_to(out).as_posix()] = {"bytes": len(text), "rows": rows}
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    seconds = round(time.perf_counter() - start, 3)
    (out / "timing.json").write_text(json.dumps({"generation_seconds": seconds}) + "\n", encoding="utf-8")
    return {**stats, "generation_seconds": seconds}


def _rounded(values: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
