"""What GRPO and RLOO share: online RL from sampled answers, through `trl.GRPOTrainer` / `trl.RLOOTrainer`.

For each prompt the policy samples `num_generations` answers; a reward function scores them and
each answer's advantage is its reward against the others of its group (GRPO: group mean and
standard deviation; RLOO: the mean of the other answers). The reward that trains the policy is

    proxy   the trained reward model (the default): what RLHF really optimises, and can over-optimise;
    gold    the world's gold reward as a verifiable reward (RLVR): the ceiling to compare with.

The evaluation (alignment/evaluate.py) is the same either way: gold, proxy and KL on held-out
prompts, before training, every `eval_every` steps and at the end, into the manifest and TensorBoard.

A method's config is `dataclass(RunArguments, AlignArguments, OnlineArguments, <TRL config>)`;
`OnlineArguments` holds the `reward` key, the checks, and the TRL defaults that differ here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time

import base_model
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
from recipes.core.world import make_gold_reward_func
from reward import score

REWARDS = ("proxy", "gold")


@dataclasses.dataclass
class OnlineArguments(TrainerDefaults):
    """The `reward` key, and TRL keys whose defaults change for the lab (CPU first, TensorBoard)."""

    reward: str = dataclasses.field(
        default="proxy",
        metadata={"help": "The reward that trains the policy: proxy (the trained reward model) or gold "
                  "(the world's gold reward, as a verifiable reward).", "choices": list(REWARDS)})

    # TRL keys whose defaults change here.
    logging_steps: float = 1
    save_steps: float = 50

    METHOD = "online"  # the stage is align-<METHOD>; set by each method's config class

    def __post_init__(self):
        stage = f"align-{self.METHOD}"
        self.apply_trainer_defaults(stage)
        if self.reward not in REWARDS:
            raise ValueError(f"key 'reward' must be one of {', '.join(REWARDS)}, got '{self.reward}'")
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
# Reward functions (TRL's signature: prompts, completions, completion_ids, dataset columns...)


def ended_flags(completion_ids, eos_token_id: int) -> list[bool] | None:
    """Did each completion end its turn? TRL cuts completion_ids just after the first eos, if any."""
    if completion_ids is None:
        return None
    return [bool(len(ids)) and int(ids[-1]) == eos_token_id for ids in completion_ids]


def make_proxy_reward_func(reward_model, tokenizer, *, batch_size: int = 32, missing_eos_penalty: float | None = None):
    """A TRL reward function scoring with the trained reward model, rendered as in its training
    (`reward.score`: the chat template; a cut-off answer without its end of turn, and `missing_eos_penalty`
    off its score, as PPO does)."""
    def proxy_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        ended = ended_flags(completion_ids, tokenizer.eos_token_id)
        return score(reward_model, tokenizer, list(prompts), list(completions), ended=ended, batch_size=batch_size,
                     missing_eos_penalty=missing_eos_penalty if ended is not None else None)

    return proxy_reward


def make_reward_func(config, reward_model, tokenizer):
    if config.reward == "gold":
        return counting_tokens(make_gold_reward_func(tokenizer.eos_token_id))
    return counting_tokens(make_proxy_reward_func(reward_model, tokenizer, batch_size=config.eval_generation_batch_size,
                                                  missing_eos_penalty=config.missing_eos_penalty))


def counting_tokens(reward_func):
    """`reward_func`, also adding up the tokens of every completion it scores in `.tokens_generated`:
    the trainer scores each sampled completion exactly once, so this is the tokens the run generated."""
    def counted(prompts, completions, completion_ids=None, **kwargs):
        if completion_ids is not None:
            counted.tokens_generated += sum(len(ids) for ids in completion_ids)
        return reward_func(prompts, completions, completion_ids=completion_ids, **kwargs)

    counted.__name__ = reward_func.__name__  # TRL names the reward's logs after it
    counted.tokens_generated = 0
    return counted


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
    """Prompt + max_completion_length must fit the model's context (TRL does not cut prompts); checked
    from the saved config and tokenizer, before any weights load."""
    from transformers import AutoConfig

    tokenizer = base_model.load_tokenizer(str(model_dir))
    context = AutoConfig.from_pretrained(str(model_dir)).max_position_embeddings
    longest = max(map(len, render_prompts(tokenizer, prompts["prompt"])))
    if config.max_completion_length is None or longest + config.max_completion_length > context:
        raise UserError(f"key 'max_completion_length' ({config.max_completion_length}) plus the longest prompt "
                        f"({longest} tokens) exceeds the model's context ({context})")
    return longest


def trainer_args(config, output_dir):
    args = copy.copy(config)
    args.output_dir = str(output_dir)
    return args


def train_metrics(trainer, reward_name: str) -> dict:
    rewards, kls = logged(trainer, "reward"), logged(trainer, "kl")
    return {
        "steps": trainer.state.global_step,
        "train_reward_initial": rewards[0] if rewards else None,
        "train_reward": rewards[-1] if rewards else None,
        f"train_{reward_name}": (logged(trainer, f"rewards/{reward_name}/mean") or [None])[-1],
        "train_kl": kls[-1] if kls else None,
        "train_completion_length": (logged(trainer, "completions/mean_length") or [None])[-1],
    }


# ----------------------------------------------------------------------------------------------
# The stage


def run_online(config, method: str, trainer_class) -> dict:
    """`main` of an online method: SFT policy + reward -> trainer_class -> evaluated, saved run."""
    started = time.time()
    parents = resolve_parents(config, needs_reward=True)  # the proxy is evaluated even when gold trains
    prompts = load_train_prompts(config)
    longest_prompt = check_context(config, parents.sft_dir, prompts)
    policy, tokenizer = load_policy(parents.sft_dir)
    policy.config._name_or_path = str(parents.sft_dir)  # TRL rebuilds the reference (beta > 0) from here
    reward_model = load_reward_model(parents.reward_dir)
    reward_tokenizer = base_model.load_tokenizer(str(parents.reward_dir))
    sft_model, _ = load_policy(parents.sft_dir)  # frozen: the evaluation's baseline and KL reference
    sft_model.eval().requires_grad_(False)
    device = config.device
    reward_model.to(device)
    sft_model.to(device)

    data = {"reward": config.reward, "train_prompts": len(prompts), "longest_prompt_tokens": longest_prompt}
    run = claim_run(RunDir.for_config(config, run_name(config, method)),
                    lambda: start_run(config, method, parents, data=data))
    route_trainer_events(run)
    reward_func = make_reward_func(config, reward_model, reward_tokenizer)
    evaluator = build_evaluator(config, sft_model, tokenizer, reward_model, sft_dir=parents.sft_dir)
    trainer_class = with_exact_resume(trainer_class)
    with trainer_refusals(config):
        trainer = trainer_class(model=policy, reward_funcs=[reward_func], args=trainer_args(config, run.checkpoints_dir),
                                train_dataset=prompts, processing_class=tokenizer, peft_config=lora_config(config))
    evaluation = EvaluationCallback(evaluator, eval_every=config.eval_every, fallback_tb_dir=run.tb_dir,
                                    at_start=config.eval_at_start).attach(trainer)
    attach_progress(trainer, run.stage)

    guarded_train(trainer, run.resume_checkpoint(config.resume))

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics = {
        **(evaluation.latest or {}),
        **train_metrics(trainer, reward_func.__name__),
        "reward_source": config.reward,
        "tokens_generated": reward_func.tokens_generated,
        "trainable_parameters": trainable,
        "evaluations": len(evaluation.history),
        **{f"sft_{k}": v for k, v in evaluator.sft_metrics().items()},
    }
    if not trainer.is_world_process_zero():
        return metrics
    return finish_run(run, trainer.model, tokenizer, metrics, started, evaluator)
