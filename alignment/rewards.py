"""The rewards a method optimises or chooses by: `reward_funcs` and `reward_weights`, named as in TRL.

    proxy                 the trained reward model (what RLHF really optimises, and can over-optimise); an
                          answer cut off before its end of turn loses `missing_eos_penalty`
    gold                  the world's gold reward (its own missing-end term): the ceiling to compare with
    gold:<family>         that family's verifier, a verifiable reward (RLVR): 1 when the answer is correct
                          (`gold:math`: the exact result, nothing else), 0 when not and on other families' prompts
    length                minus the answer's length in tokens, end of turn included (weight 0.01: -0.01 a token)
    module.path:function  any function importable from the working directory with TRL's reward-function
                          signature: f(prompts, completions, **kwargs) -> one float per completion (named
                          dataset columns, e.g. f(completions, family, **kwargs), are passed by GRPO's family,
                          RLOO and online DPO; PPO and best-of-n pass prompts, completions and completion_ids)

The methods' reward is the weighted sum (GRPO's family, RLOO and online DPO hand the list to TRL, which sums
it the same way; PPO and best-of-n call `combined`). Every function's output is checked: one finite number
per completion, or the run stops with one line naming the spec.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import sys

from recipes.core.errors import UserError
from recipes.core.world import gold_reward, make_gold_reward_func
from recipes.core.world.families import all_families
from recipes.core.world.gold import ended_flags
from reward import score

BUILT_IN = ("proxy", "gold", "length")


@dataclasses.dataclass
class RewardArguments:
    """The `reward_funcs` and `reward_weights` keys of the methods that score their own answers."""

    reward_funcs: list[str] = dataclasses.field(
        default_factory=lambda: ["proxy"],
        metadata={"help": "What the method optimises (summed with reward_weights): proxy (the reward model), gold, "
                  "gold:<family> (a verifier, e.g. gold:math), length (minus the answer's tokens), or "
                  "module.path:function (TRL's reward-function signature)."})
    reward_weights: list[float] | None = dataclasses.field(
        default=None, metadata={"help": "One weight per reward function (default: 1.0 each)."})

    def check_reward_keys(self) -> None:
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if not self.reward_funcs:
            raise ValueError("key 'reward_funcs' must name at least one reward (e.g. [proxy])")
        for spec in self.reward_funcs:
            resolve(spec)  # names, imports and signatures are checked before anything loads
        if self.reward_weights is not None:
            if len(self.reward_weights) != len(self.reward_funcs):
                raise ValueError(f"key 'reward_weights' has {len(self.reward_weights)} weights for "
                                 f"{len(self.reward_funcs)} reward_funcs ({', '.join(self.reward_funcs)})")
            if not all(math.isfinite(w) for w in self.reward_weights):
                raise ValueError(f"key 'reward_weights' must hold finite numbers, got {self.reward_weights}")

    @property
    def weights(self) -> list[float]:
        return list(self.reward_weights) if self.reward_weights is not None else [1.0] * len(self.reward_funcs)

    @property
    def uses_proxy(self) -> bool:
        return "proxy" in self.reward_funcs


def family_names() -> list[str]:
    return [family.NAME for family in all_families()]


def resolve(spec: str):
    """What a spec names: a built-in's name, ("gold", family) or an imported function. Raises ValueError with
    one line naming the spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"key 'reward_funcs': {spec!r} is not a reward name")
    if spec in BUILT_IN:
        return spec
    if spec.startswith("gold:"):
        family = spec[len("gold:"):]
        if family not in family_names():
            raise ValueError(f"key 'reward_funcs': '{spec}' names no world family (expected gold:<family>, one of "
                             f"{', '.join(family_names())})")
        return ("gold", family)
    if ":" not in spec:
        raise ValueError(f"key 'reward_funcs': unknown reward '{spec}' (expected {', '.join(BUILT_IN)}, "
                         "gold:<family> or module.path:function)")
    return import_function(spec)


def import_function(spec: str):
    module_name, _, name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # "importable from the working directory", as `python -m` would
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure while importing the user's module is the spec's fault
        raise ValueError(f"key 'reward_funcs': cannot import '{module_name}' for '{spec}': "
                         f"{type(error).__name__}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"key 'reward_funcs': '{module_name}' has no function '{name}' (from '{spec}')")
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return function
    if inspect.iscoroutinefunction(function):
        raise ValueError(f"key 'reward_funcs': '{spec}' is an async function; the lab calls reward functions "
                         "synchronously (wrap it in a plain function)")
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    positional_only = [n for n, p in parameters.items() if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    if not takes_any or positional_only:
        # TRL calls f(prompts=..., completions=..., completion_ids=..., trainer_state=..., <dataset columns>=...)
        raise ValueError(f"key 'reward_funcs': '{spec}' has signature {name}{inspect.signature(function)}; expected "
                         f"TRL's reward-function signature {name}(prompts, completions, **kwargs)")
    return function


# ----------------------------------------------------------------------------------------------
# The functions


def proxy_reward_func(reward_model, tokenizer, *, batch_size: int, missing_eos_penalty: float | None):
    """The reward model's score, rendered as in its training (`reward.score`); counts its queries."""
    def proxy_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        ended = ended_flags(completion_ids, tokenizer.eos_token_id)
        proxy_reward.queries += len(completions)
        return score(reward_model, tokenizer, list(prompts), list(completions), ended=ended, batch_size=batch_size,
                     missing_eos_penalty=missing_eos_penalty if ended is not None else None)

    proxy_reward.queries = 0
    return proxy_reward


def verifier_func(family: str):
    def verifier(prompts, completions, **kwargs) -> list[float]:
        out = []
        for p, c in zip(prompts, completions):
            scored = gold_reward(p, c)
            out.append(float(scored.checks.get("correct", 0.0)) if scored.family == family else 0.0)
        return out

    verifier.__name__ = f"gold_{family}"
    return verifier


def length_func(tokenizer):
    def length(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if completion_ids is not None:
            return [-float(len(ids)) for ids in completion_ids]
        return [-float(len(tokenizer(text_of(c), add_special_tokens=False)["input_ids"])) for c in completions]

    return length


def text_of(completion) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")


def checked(spec: str, function):
    """`function`, stopping the run with one line naming `spec` when it returns anything but one finite number
    per completion."""
    def reward(prompts, completions, **kwargs) -> list[float]:
        try:
            values = function(prompts=prompts, completions=completions, **kwargs)
        except TypeError as error:  # a keyword it needs that this method does not pass, or one it cannot take
            raise UserError(f"key 'reward_funcs': '{spec}' could not be called with this method's arguments "
                            f"({', '.join(['prompts', 'completions', *kwargs])}): {error}") from None
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise UserError(f"key 'reward_funcs': '{spec}' must return one number per completion, got "
                            f"{str(values)[:80]}") from None
        if len(values) != len(completions):
            raise UserError(f"key 'reward_funcs': '{spec}' returned {len(values)} values for {len(completions)} "
                            "completions")
        bad = next((v for v in values if not math.isfinite(v)), None)
        if bad is not None:
            raise UserError(f"key 'reward_funcs': '{spec}' returned {bad} (every reward must be a finite number)")
        return values

    reward.__name__ = getattr(function, "__name__", spec).replace(".", "_")  # TRL logs rewards/<name>/mean
    return reward


def build(config, *, reward_model, reward_tokenizer, tokenizer, batch_size: int) -> list:
    """The config's reward functions, checked, in order. The proxy's function counts its queries (`.queries`)."""
    functions = []
    for spec in config.reward_funcs:
        target = resolve(spec)
        if target == "proxy":
            if reward_model is None:
                raise UserError("key 'reward_funcs': 'proxy' needs a reward model (reward_model_name_or_path)")
            function = proxy_reward_func(reward_model, reward_tokenizer, batch_size=batch_size,
                                         missing_eos_penalty=config.missing_eos_penalty)
        elif target == "gold":
            function = make_gold_reward_func(tokenizer.eos_token_id)
        elif target == "length":
            function = length_func(tokenizer)
        elif isinstance(target, tuple):
            function = verifier_func(target[1])
        else:
            function = target
        wrapped = checked(spec, function)
        wrapped.inner = function
        functions.append(wrapped)
    return functions


def reward_queries(functions) -> int:
    """Answers the reward model scored through these functions so far."""
    return sum(getattr(getattr(f, "inner", f), "queries", 0) for f in functions)


def combined(functions, weights):
    """One reward for the lab's own samplers (PPO, best-of-n): the weighted sum of `functions`, as TRL sums them,
    called on `Answer`s (recipes/core/generation.py) the way TRL calls a reward function: completions as
    assistant turns when the prompts are conversations, completion ids cut after the end of turn."""
    def reward(prompts, answers) -> list[float]:
        conversational = bool(prompts) and not isinstance(prompts[0], str)
        completions = [[{"role": "assistant", "content": a.text}] if conversational else a.text for a in answers]
        completion_ids = [list(a.token_ids) for a in answers]
        total = [0.0] * len(answers)
        for function, weight in zip(functions, weights):
            values = function(prompts=list(prompts), completions=completions, completion_ids=completion_ids)
            total = [t + weight * v for t, v in zip(total, values)]
        return total

    return reward
