"""What the online methods share: RL from sampled answers through a TRL trainer (GRPO's family, RLOO, online DPO).

For each prompt the policy samples answers; the reward functions (`reward_funcs`, alignment/rewards.py: the
proxy by default, the gold reward, a verifier, a length penalty or the user's own) score them, and each
answer's advantage is its reward against the others of its group (GRPO: group mean and standard deviation;
RLOO: the mean of the other answers), or, in online DPO, the better of two answers is the chosen one.

The evaluation (alignment/evaluate.py) is the same whatever trains the policy: gold, proxy and KL on held-out
prompts, before training, every `eval_every` steps and at the end, into the manifest and TensorBoard.

A method's config is `dataclass(RunArguments, AlignArguments, OnlineArguments, <TRL config>)`;
`OnlineArguments` holds the reward keys, the checks, and the TRL defaults that differ here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time

import torch

import base_model  # noqa: F401  (registers the architecture with the Auto classes)
from alignment.common import (
    build_evaluator,
    finish_run,
    load_policy,
    load_reward_model,
    resolve_parents,
    run_name,
    start_run,
)
from alignment.evaluate import EvaluationCallback
from alignment.rewards import RewardArguments, reward_queries
from alignment.rewards import build as build_rewards
from recipes.core.chat_format import load_chat_tokenizer
from recipes.core.config import TrainerDefaults
from recipes.core.data import load_prompts
from recipes.core.distributed import claim_run
from recipes.core.errors import UserError
from recipes.core.exact_resume import with_exact_resume
from recipes.core.finite_loss import guarded_train
from recipes.core.generation import render_prompts
from recipes.core.progress import attach_progress
from recipes.core.rundir import RunDir
from recipes.core.stage_kit import lora_config, trainer_refusals
from recipes.core.tracking import route_trainer_events
from recipes.core.training_log import logged


@dataclasses.dataclass
class OnlineArguments(RewardArguments, TrainerDefaults):
    """The reward keys, and TRL keys whose defaults change for the lab (CPU first, TensorBoard)."""

    # TRL keys whose defaults change here.
    logging_steps: float = 1
    save_steps: float = 50

    METHOD = "online"  # the stage is align-<METHOD>; set by each method's config class

    def __post_init__(self):
        stage = f"align-{self.METHOD}"
        self.apply_trainer_defaults(stage)
        self.check_reward_keys()
        if hasattr(self, "num_generations"):  # GRPO's family and RLOO; online DPO samples two answers a prompt
            check_generation_batch(self)
        self.check_alignment_keys()
        super().__post_init__()


def check_generation_batch(config) -> None:
    """Each generation batch must hold whole groups of `num_generations` answers: say so by key names.

    TRL derives generation_batch_size from per_device_train_batch_size x steps_per_generation (default:
    gradient_accumulation_steps) x processes; its own error names only the derived key. A saved config
    holds both derived keys; when they agree, generation_batch_size is dropped so TRL derives it again.
    """
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = config.per_device_train_batch_size * processes
    if config.num_generations is None or config.num_generations < 2:
        raise ValueError(f"key 'num_generations' must be at least 2 (advantages compare the answers to one "
                         f"prompt), got {config.num_generations}")
    if config.generation_batch_size is not None and config.steps_per_generation is not None \
            and config.generation_batch_size == per_step * config.steps_per_generation:
        config.generation_batch_size = None
    if config.generation_batch_size is not None:
        size, how = config.generation_batch_size, f"'generation_batch_size' ({config.generation_batch_size})"
    else:
        steps = config.steps_per_generation or config.gradient_accumulation_steps
        name = "steps_per_generation" if config.steps_per_generation else "gradient_accumulation_steps"
        size = per_step * steps
        how = (f"'per_device_train_batch_size' ({config.per_device_train_batch_size}) x '{name}' ({steps})"
               + (f" x {processes} processes" if processes > 1 else "") + f" = {size}")
    if size % config.num_generations:
        raise ValueError(f"keys {how} must be a multiple of 'num_generations' ({config.num_generations}): "
                         "each generation batch holds whole groups of answers to one prompt")


# ----------------------------------------------------------------------------------------------
# Reward functions


def as_answered(completion_ids, eos_token_id: int, pad_token_id: int | None):
    """Each completion's ids as the answer was generated: up to and including its first end of turn, else without
    trailing padding. GRPO/RLOO pass them cut already; online DPO passes the padded batch."""
    if completion_ids is None:
        return None
    out = []
    for ids in completion_ids:
        ids = [int(i) for i in ids]
        if eos_token_id in ids:
            ids = ids[:ids.index(eos_token_id) + 1]
        elif pad_token_id is not None:
            while ids and ids[-1] == pad_token_id:
                ids.pop()
        out.append(ids)
    return out


def trainer_reward_funcs(functions, tokenizer):
    """The reward functions as a TRL trainer calls them: completion ids unpadded (`as_answered`); the first also
    counts the completions it scores (`.completions`) and their tokens (`.tokens_generated`), which, as the
    trainer scores each sampled completion exactly once, are what the run generated."""
    def wrap(function, count: bool):
        def reward(prompts, completions, completion_ids=None, **kwargs):
            completion_ids = as_answered(completion_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
            if count:
                reward.completions += len(completions)
                reward.tokens_generated += sum(map(len, completion_ids or []))
            return function(prompts, completions, completion_ids=completion_ids, **kwargs)

        reward.__name__ = function.__name__  # TRL names the reward's logs after it
        reward.inner = getattr(function, "inner", function)
        reward.completions = reward.tokens_generated = 0
        return reward

    return [wrap(f, i == 0) for i, f in enumerate(functions)]


# ----------------------------------------------------------------------------------------------
# Data and trainer


def load_train_prompts(config):
    prompts = load_prompts(config.dataset_name, split=config.dataset_train_split, format=config.dataset_format,
                           config=config.dataset_config)
    if len(prompts) == 0:
        raise UserError(f"key 'dataset_name': {config.dataset_name} split '{config.dataset_train_split}' "
                        "holds no prompts")
    return prompts


def check_context(config, model_dir, prompts) -> int:
    """Prompt + the answer budget (max_completion_length; online DPO's max_new_tokens) must fit the model's
    context (TRL does not cut prompts); checked from the saved config and tokenizer, before any weights load."""
    from transformers import AutoConfig

    tokenizer = load_chat_tokenizer(model_dir, "sft_model_name_or_path")
    context = AutoConfig.from_pretrained(str(model_dir)).max_position_embeddings
    longest = max(map(len, render_prompts(tokenizer, prompts["prompt"])))
    key = "max_completion_length" if hasattr(config, "max_completion_length") else "max_new_tokens"
    budget = getattr(config, key)
    if budget is None or longest + budget > context:
        raise UserError(f"key '{key}' ({budget}) plus the longest prompt ({longest} tokens) exceeds the model's "
                        f"context ({context})")
    if key == "max_new_tokens" and longest + budget > config.max_length:  # online DPO would cut prompts silently
        raise UserError(f"key 'max_length' ({config.max_length}) is shorter than the longest prompt ({longest} "
                        f"tokens) plus 'max_new_tokens' ({budget})")
    return longest


def trainer_args(config, output_dir):
    args = copy.copy(config)
    args.output_dir = str(output_dir)
    if hasattr(args, "missing_eos_penalty"):
        args.missing_eos_penalty = None  # online DPO's own; the lab's reward functions apply the rule once
    return args


def train_metrics(trainer, reward_funcs) -> dict:
    """The training's last logged numbers: TRL's summed reward and KL (GRPO/RLOO), or online DPO's scores."""
    rewards = logged(trainer, "reward") or logged(trainer, "objective/scores")
    kls = logged(trainer, "kl") or logged(trainer, "objective/kl")
    metrics = {
        "steps": trainer.state.global_step,
        "train_reward_initial": rewards[0] if rewards else None,
        "train_reward": rewards[-1] if rewards else None,
        "train_kl": kls[-1] if kls else None,
        "train_completion_length": (logged(trainer, "completions/mean_length") or [None])[-1],
    }
    for function in reward_funcs:  # each reward's own mean, where TRL logs it (GRPO/RLOO)
        values = logged(trainer, f"rewards/{function.__name__}/mean")
        if values:
            metrics[f"train_{function.__name__}"] = values[-1]
    return metrics


# ----------------------------------------------------------------------------------------------
# The stage


def run_online(config, method: str, trainer_class, *, learns_from_pairs: bool = False) -> dict:
    """`main` of an online method: SFT policy + rewards -> trainer_class -> evaluated, saved run.

    `learns_from_pairs`: online DPO, whose every two answers scored make one preference label; the group methods
    learn from rewards, not labels.
    """
    started = time.time()
    parents = resolve_parents(config, needs_reward=True)  # the proxy is evaluated whatever trains the policy
    prompts = load_train_prompts(config)
    longest_prompt = check_context(config, parents.sft_dir, prompts)
    policy, tokenizer = load_policy(parents.sft_dir, config)
    policy.config._name_or_path = str(parents.sft_dir)  # TRL rebuilds the reference (beta > 0) from here
    reward_model = load_reward_model(parents.reward_dir)
    reward_tokenizer = load_chat_tokenizer(parents.reward_dir, "reward_model_name_or_path")
    sft_model, _ = load_policy(parents.sft_dir)  # frozen: the evaluation's baseline and KL reference
    sft_model.eval().requires_grad_(False)
    device = config.device
    reward_model.to(device)
    sft_model.to(device)

    data = {"reward_funcs": list(config.reward_funcs), "reward_weights": config.weights,
            "train_prompts": len(prompts), "longest_prompt_tokens": longest_prompt}
    run = claim_run(RunDir.for_config(config, run_name(config, method)),
                    lambda: start_run(config, method, parents, data=data))
    route_trainer_events(run)
    functions = build_rewards(config, reward_model=reward_model, reward_tokenizer=reward_tokenizer, tokenizer=tokenizer,
                              batch_size=config.eval_generation_batch_size)
    reward_funcs = trainer_reward_funcs(functions, tokenizer)
    evaluator = build_evaluator(config, sft_model, tokenizer, reward_model, parents=parents)
    trainer_class = with_exact_resume(trainer_class)
    with trainer_refusals(config):
        trainer = trainer_class(model=policy, reward_funcs=reward_funcs, args=trainer_args(config, run.checkpoints_dir),
                                train_dataset=prompts, processing_class=tokenizer, peft_config=lora_config(config))
    counted = reward_funcs[0]
    trainer.resume_counters = {  # kept across a resume (recipes/core/exact_resume.py)
        "completions": (counted, "completions"), "tokens_generated": (counted, "tokens_generated"),
        **{f"queries_{i}": (f.inner, "queries") for i, f in enumerate(reward_funcs) if hasattr(f.inner, "queries")}}
    evaluation = EvaluationCallback(evaluator, eval_every=config.eval_every, fallback_tb_dir=run.tb_dir,
                                    at_start=config.eval_at_start).attach(trainer)
    attach_progress(trainer, run.stage)

    guarded_train(trainer, run.resume_checkpoint(config.resume))

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    # Each process scored its share of the answers: the run's counts are the sums over processes.
    answers_scored, tokens, queries = (int(n) for n in trainer.accelerator.reduce(torch.tensor(
        [counted.completions, counted.tokens_generated, reward_queries(reward_funcs)], device=trainer.accelerator.device),
        reduction="sum").tolist())
    metrics = {
        **(evaluation.latest or {}),
        **train_metrics(trainer, reward_funcs),
        "reward_funcs": "+".join(config.reward_funcs),
        "tokens_generated": tokens,
        "reward_queries": queries,
        "preference_labels": answers_scored // 2 if learns_from_pairs else 0,
        "trainable_parameters": trainable,
        "evaluations": len(evaluation.history),
        **{f"sft_{k}": v for k, v in evaluator.sft_metrics().items()},
    }
    if not trainer.is_world_process_zero():
        return metrics
    return finish_run(run, trainer.model, tokenizer, metrics, started, evaluator)
