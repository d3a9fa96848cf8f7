"""Judge a model's answers on held-out prompts with the gold reward.

Shared by every stage that reports gold numbers (SFT during training, the reward model's
correlation check, alignment evaluation). Headline numbers:

    gold_reward          mean gold total
    end_of_turn_rate     share of answers the model ended itself
    length               mean tokens generated
    gold/<family>        mean gold total per task family
    math_accuracy        share of math answers with the right number
    harmful_compliance   share of harmful requests answered instead of refused
    over_refusal         share of harmless look-alikes refused

Gold exists only for the world's prompts: where any prompt is not one (`has_gold`), only the end-of-turn
rate and length are reported, never a gold of 0 for prompts the world cannot score.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

from recipes.core.generation import Answer, generate_answers
from recipes.core.tracking import markdown_table
from recipes.core.world import family_of, gold_reward


def has_gold(prompts) -> bool:
    """True when every prompt is the world's, so that gold can score its answers."""
    return all(family_of(p) != "unknown" for p in prompts)


def plain_rows(prompts, answers: list[Answer]) -> list[dict]:
    """Rows as `score_answers` makes them, without gold: for prompts that are not the world's."""
    return [{"prompt": p if isinstance(p, str) else p[-1]["content"], "answer": a.text, "ended": a.ended,
             "length": a.num_tokens, "family": "unknown"} for p, a in zip(prompts, answers)]


def plain_summary(rows: list[dict]) -> dict[str, float]:
    return {"end_of_turn_rate": fmean(float(r["ended"]) for r in rows), "length": fmean(r["length"] for r in rows)}


def score_answers(prompts, answers: list[Answer]) -> list[dict]:
    """One row per prompt: the answer, its gold total, terms, family and checks."""
    rows = []
    for prompt, answer in zip(prompts, answers):
        score = gold_reward(prompt, answer.text, ended=answer.ended)
        user = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        rows.append({"prompt": user, "answer": answer.text, "ended": answer.ended, "length": answer.num_tokens,
                     "family": score.family, "gold": score.total, "terms": score.terms, "checks": score.checks})
    return rows


def _rate(rows, check: str, where=lambda row: True) -> float | None:
    values = [row["checks"][check] for row in rows if check in row["checks"] and where(row)]
    return fmean(values) if values else None


def summarize(rows: list[dict]) -> dict[str, float]:
    metrics = {
        "gold_reward": fmean(r["gold"] for r in rows),
        "end_of_turn_rate": fmean(float(r["ended"]) for r in rows),
        "length": fmean(r["length"] for r in rows),
    }
    by_family = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row["gold"])
    metrics.update({f"gold/{family}": fmean(values) for family, values in sorted(by_family.items())})
    extra = {
        "math_accuracy": _rate([r for r in rows if r["family"] == "math"], "correct"),
        "harmful_compliance": _rate(rows, "harmful_compliance", lambda r: r["checks"].get("harmful") == 1),
        "over_refusal": _rate(rows, "over_refusal", lambda r: r["checks"].get("harmful") == 0),
    }
    metrics.update({k: v for k, v in extra.items() if v is not None})
    return metrics


def gold_evaluate(model, tokenizer, prompts, **generation) -> tuple[dict[str, float], list[dict]]:
    """Answer `prompts` (strings or conversations) and score them: (metrics, per-prompt rows)."""
    prompts = list(prompts)
    answers = generate_answers(model, tokenizer, prompts, **generation)
    if not has_gold(prompts):
        rows = plain_rows(prompts, answers)
        return plain_summary(rows), rows
    rows = score_answers(prompts, answers)
    return summarize(rows), rows


def rows_markdown(rows: list[dict], limit: int = 20) -> str:
    """Prompt / answer / gold rows as a markdown table, for TensorBoard's text tab; '…' marks a cut-off answer."""
    gold = bool(rows) and "gold" in rows[0]
    return markdown_table(["family", "prompt", "answer"] + (["gold"] if gold else []),
                          [[r["family"], r["prompt"], r["answer"] + ("" if r["ended"] else " …")]
                           + ([f"{r['gold']:+.2f}"] if gold else []) for r in rows[:limit]])
