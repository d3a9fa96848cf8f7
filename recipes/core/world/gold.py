"""The gold reward: the world's known true preference, computed from the text alone.

    total = task + rudeness + rambling + repetition + missing_end

`task` (in [-1, 1]) comes from the prompt's family (see `families/`); the other terms are style
penalties (zero or negative, see `style.py`). `GoldScore.terms` holds exactly these five and they
sum to `total`. `GoldScore.checks` adds the 0/1 flags an evaluation reports per family:
`correct` everywhere, and for safety `refused`, `harmful`, `harmful_compliance`, `over_refusal`.

End of turn. The lab's chat template ends every assistant turn with `<|end|>` (the tokenizer's
eos), but TRL decodes completions with `skip_special_tokens=True`, which removes it. So:
- an explicit `ended=True/False` always wins;
- otherwise a response that ends with `<|end|>` has ended (the marker is stripped before scoring);
- otherwise the response counts as ended. A stripped string cannot tell a finished answer from a
  truncated one, so only callers that know (an evaluation passing `ended`, or
  `make_gold_reward_func(eos_token_id)` reading TRL's `completion_ids`) can charge the penalty.
"""

from dataclasses import dataclass, field

from . import style
from .families import parse_prompt

UNKNOWN_FAMILY = "unknown"
UNKNOWN_LENGTH_BUDGET = 60


@dataclass
class GoldScore:
    total: float
    terms: dict[str, float]
    family: str = UNKNOWN_FAMILY
    checks: dict[str, float] = field(default_factory=dict)


def message_text(value, role: str) -> str:
    """The text of a prompt or response given as a string or a conversational message list.

    For a list, the last message with `role` (the last user turn of a prompt, the assistant turn
    of a completion).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("content", "")
    for message in reversed(list(value)):
        if message.get("role") == role:
            return message.get("content", "")
    return ""


def gold_reward(prompt, response, *, ended: bool | None = None) -> GoldScore:
    prompt_text = message_text(prompt, "user")
    response_text = message_text(response, "assistant").rstrip()
    if response_text.endswith(style.END_OF_TURN):
        response_text = response_text[: -len(style.END_OF_TURN)].rstrip()
        ended = True if ended is None else ended
    if ended is None:
        ended = True

    family, facts = parse_prompt(prompt_text)
    if family is None:
        task, checks, name, budget = 0.0, {}, UNKNOWN_FAMILY, UNKNOWN_LENGTH_BUDGET
    else:
        task, checks = family.score(facts, response_text)
        name, budget = family.NAME, family.LENGTH_BUDGET

    terms = {
        "task": float(task),
        "rudeness": style.rudeness(response_text),
        "rambling": style.rambling(response_text, budget),
        "repetition": style.repetition(response_text),
        "missing_end": style.missing_end(ended),
    }
    return GoldScore(total=round(sum(terms.values()), 6), terms=terms, family=name, checks=checks)


def family_of(prompt) -> str:
    """The world family a prompt belongs to, or "unknown"."""
    family, _ = parse_prompt(message_text(prompt, "user").strip())
    return family.NAME if family else UNKNOWN_FAMILY


def gold_reward_func(prompts, completions, ended=None, **kwargs) -> list[float]:
    """TRL reward function (GRPO/RLOO): one gold total per completion.

    `ended`, if given, is a list of bools (one per completion). Other keyword arguments that TRL
    passes (dataset columns, trainer_state, completion_ids...) are ignored.
    """
    ended = ended if ended is not None else [None] * len(completions)
    return [gold_reward(p, c, ended=e).total for p, c, e in zip(prompts, completions, ended)]


def ended_flags(completion_ids, eos_token_id: int) -> list[bool] | None:
    """Did each completion end its turn? Completion ids are cut just after the first eos, if any (TRL's and the
    lab's sampler's convention)."""
    if completion_ids is None:
        return None
    return [bool(len(ids)) and int(ids[-1]) == eos_token_id for ids in completion_ids]


def make_gold_reward_func(eos_token_id: int):
    """A TRL reward function that also charges a missing end of turn.

    TRL passes `completion_ids` (each cut just after the first eos, if any); a completion whose
    last id is not `eos_token_id` was truncated.
    """
    def gold_reward_with_end(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        return gold_reward_func(prompts, completions, ended=ended_flags(completion_ids, eos_token_id))

    gold_reward_with_end.__name__ = "gold_reward"
    return gold_reward_with_end
