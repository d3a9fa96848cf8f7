"""Models to look at: a run directory turned into something that answers prompts, and the gold and
proxy scores of its answers. Shared by `rlhf-lab chat` and `rlhf-lab sample`.

A RUN_DIR is a stage's run directory (runs/<recipe>/sft, runs/<recipe>/align-dpo, ...) or a saved
model directory. A best-of-n run answers as its policy does: n samples from its SFT model, the one
its rewards (its reward model, and whatever else its `reward_funcs` named) score highest. The proxy
score comes from the recipe's reward model
(runs/<recipe>/reward/model beside the run) unless another is named.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import base_model  # noqa: F401  (registers the architecture with the Auto classes)
from alignment.best_of_n import REWARD_SUBDIR, SPEC_FILE
from alignment.common import load_policy, load_reward_model
from alignment.rewards import build as build_rewards
from alignment.rewards import combined
from recipes.core.chat_format import load_chat_tokenizer
from recipes.core.errors import UserError
from recipes.core.generation import generate_answers
from recipes.core.model_dirs import check_model_dir
from recipes.core.seeds import stream_seed
from recipes.core.world import gold_reward
from reward import score


@dataclasses.dataclass
class Answerer:
    name: str
    model: object
    tokenizer: object
    best_of_n: int = 1
    chooser: object = None  # the best-of-n policy's own reward: chooser(prompts, answers) -> scores

    @property
    def context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def answer(self, prompts: list, *, max_new_tokens: int, temperature: float, seed: int = 0):
        sampling = dict(do_sample=temperature > 0, temperature=temperature or 1.0)
        if self.best_of_n == 1:
            return generate_answers(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed,
                                    **sampling)
        sampling = dict(do_sample=True, temperature=temperature or 1.0)  # n greedy answers would be one answer
        rounds = [generate_answers(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                   seed=stream_seed(seed, "best-of-n/candidate", k), **sampling)
                  for k in range(self.best_of_n)]
        rewards = [self.chooser(prompts, answers) for answers in rounds]
        best = [max(range(self.best_of_n), key=lambda k: (rewards[k][i], -k)) for i in range(len(prompts))]
        return [rounds[k][i] for i, k in enumerate(best)]


def model_dir_of(path: Path, kind: str = "policy") -> Path:
    """The model directory of a run directory or a model directory, checked to hold a model of `kind`."""
    if (path / "model" / "config.json").is_file():
        return check_model_dir(path / "model", "RUN_DIR" if kind == "policy" else "--reward_model", kind)
    if (path / "config.json").is_file():
        return check_model_dir(path, "RUN_DIR" if kind == "policy" else "--reward_model", kind)
    raise UserError(f"{path}: not a run directory with a finished model/ nor a saved model directory (no config.json)")


def load_answerer(path: str | Path) -> Answerer:
    path = Path(path)
    model_dir = model_dir_of(path)
    name = path.name if model_dir != path else (path.parent.name if path.name == "model" else path.name)
    model, tokenizer = load_policy(model_dir)
    model.eval()
    spec_file = model_dir / SPEC_FILE
    if spec_file.is_file():
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        return Answerer(name, model, tokenizer, best_of_n=int(spec["n"]),
                        chooser=chooser_of(spec, spec_file, model_dir / REWARD_SUBDIR, tokenizer))
    return Answerer(name, model, tokenizer)


def chooser_of(spec: dict, spec_file: Path, reward_dir: Path, tokenizer):
    """The reward a best-of-n run chose by, rebuilt from its spec (runs from before `reward_funcs` chose by the
    proxy alone)."""
    keys = types.SimpleNamespace(reward_funcs=spec.get("reward_funcs") or ["proxy"],
                                 missing_eos_penalty=spec.get("missing_eos_penalty"))
    weights = spec.get("reward_weights") or [1.0] * len(keys.reward_funcs)
    try:
        functions = build_rewards(keys, reward_model=load_reward_model(reward_dir), reward_tokenizer=tokenizer,
                                  tokenizer=tokenizer, batch_size=32)
    except ValueError as error:
        raise UserError(f"{spec_file}: {error}") from None
    return combined(functions, weights)


@dataclasses.dataclass
class Proxy:
    model: object
    tokenizer: object
    path: Path


def find_reward_model(run_dirs: list[str], explicit: str | None) -> Proxy | None:
    """The proxy reward model: `explicit`, else the recipe's reward/model beside the first run; None if neither."""
    candidates = [model_dir_of(Path(explicit), "reward")] if explicit else []
    for run_dir in map(Path, run_dirs):
        recipe_runs = run_dir.parent.parent if run_dir.name == "model" else run_dir.parent
        candidates.append(recipe_runs / "reward" / "model")
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return Proxy(load_reward_model(candidate), load_chat_tokenizer(candidate, "reward_model_name_or_path"), candidate)
    return None


def scores(prompts: list, answers, proxy_model: Proxy | None) -> list[dict]:
    """Gold total and family of each answer (world prompts), and the proxy's score when there is a reward model."""
    proxy = [None] * len(answers) if proxy_model is None else score(
        proxy_model.model, proxy_model.tokenizer, prompts, [a.text for a in answers], ended=[a.ended for a in answers])
    out = []
    for prompt, answer, p in zip(prompts, answers, proxy):
        gold = gold_reward(prompt, answer.text, ended=answer.ended)
        out.append({"gold": gold.total, "family": gold.family, "proxy": p, "ended": answer.ended})
    return out


def score_line(s: dict) -> str:
    gold = f"gold {s['gold']:+.2f} ({s['family']})" if s["family"] != "unknown" else "gold - (not a world prompt)"
    proxy = f"proxy {s['proxy']:+.2f}" if s["proxy"] is not None else "proxy - (no reward model)"
    return f"{gold} | {proxy}" + ("" if s["ended"] else " | cut off")
