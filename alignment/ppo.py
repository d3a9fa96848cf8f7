"""PPO, the InstructGPT recipe: `rlhf-lab align --method ppo --config recipes/<name>/align-ppo.yaml`.

TRL removed its PPOTrainer in 1.13 (huggingface/trl PR #7020); the lab owns one, built on TRL 1.16's
trainer base and utilities (alignment/ppo_trainer.py), with the arithmetic as small tested functions
(alignment/ppo_core.py). Four models:

    policy      the SFT model, trained (all weights, or LoRA adapters with `use_peft`; model/ is merged)
    reference   a frozen copy of the SFT model: the per-token KL penalty, and the evaluation's baseline
    reward      the trained reward model, frozen; scores each answer as `reward.score` does (the training
                reward is `reward_funcs`, alignment/rewards.py: this proxy alone by default)
    value       the reward model's backbone and score head applied at every position, trained

Keys are named as TRL's old PPOConfig named them (num_ppo_epochs, num_mini_batches, cliprange,
cliprange_value, vf_coef, kl_coef, kl_estimator, gamma, lam, whiten_rewards, missing_eos_penalty,
response_length, temperature, total_episodes, local_rollout_forward_batch_size), plus `adaptive_kl`,
`target_kl` and `kl_horizon` for the adaptive KL controller of Ziegler et al. A rollout holds
per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches answers per process (under
`accelerate launch`, every process samples its share: alignment/ppo_trainer.py); `max_steps` counts rollouts,
and `eval_every` and `save_steps` too.
"""

from __future__ import annotations

import copy
import dataclasses
import time

from trl.trainer.base_config import _BaseConfig

import base_model  # noqa: F401
from alignment.common import (
    AlignArguments,
    build_evaluator,
    finish_run,
    load_policy,
    load_reward_model,
    resolve_parents,
    run_name,
    start_run,
)
from alignment.ppo_trainer import PPOTrainer
from alignment.rewards import RewardArguments, combined
from alignment.rewards import build as build_rewards
from recipes.core.config import RunArguments, TrainerDefaults
from recipes.core.data import load_prompts
from recipes.core.distributed import claim_run, process_state
from recipes.core.errors import UserError
from recipes.core.finite_loss import stops_on_non_finite
from recipes.core.generation import render_prompts
from recipes.core.progress import attach_progress
from recipes.core.rundir import RunDir, step_of
from recipes.core.stage_kit import lora_config, trainer_refusals

METHOD = "ppo"
KL_ESTIMATORS = ("k1", "k3")


@dataclasses.dataclass
class PPOConfig(TrainerDefaults, _BaseConfig):
    """TRL's old PPOConfig keys (trl <= 1.12) on TRL 1.16's TrainingArguments base, CPU-first defaults."""

    num_ppo_epochs: int = dataclasses.field(default=4, metadata={"help": "Epochs over each rollout batch."})
    num_mini_batches: int = dataclasses.field(default=2, metadata={"help": "Minibatches (optimizer steps) per epoch."})
    cliprange: float = dataclasses.field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = dataclasses.field(default=0.2, metadata={"help": "Value clip range around the old values."})
    vf_coef: float = dataclasses.field(default=0.1, metadata={"help": "Weight of the value loss."})
    kl_coef: float = dataclasses.field(default=0.05, metadata={"help": "KL penalty coefficient (the start, if adaptive)."})
    kl_estimator: str = dataclasses.field(
        default="k1", metadata={"help": "Per-token KL in the reward: k1 (log p - log q) or k3.",
                                "choices": list(KL_ESTIMATORS)})
    adaptive_kl: bool = dataclasses.field(
        default=False, metadata={"help": "Adapt kl_coef so the KL tracks target_kl (Ziegler et al. 2019)."})
    target_kl: float = dataclasses.field(default=6.0, metadata={"help": "Adaptive KL: target KL per answer (nats)."})
    kl_horizon: float = dataclasses.field(default=10000, metadata={"help": "Adaptive KL: horizon in answers."})
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "Discount."})
    lam: float = dataclasses.field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_rewards: bool = dataclasses.field(default=False, metadata={"help": "Scale rewards to unit variance."})
    missing_eos_penalty: float | None = dataclasses.field(
        default=1.0, metadata={"help": "Subtracted from the score of an answer that never ends its turn; null: none."})
    response_length: int = dataclasses.field(default=64, metadata={"help": "Most tokens per sampled answer."})
    temperature: float = dataclasses.field(
        default=1.0, metadata={"help": "Sampling temperature; log-probabilities use the same one."})
    total_episodes: int | None = dataclasses.field(
        default=None, metadata={"help": "Answers to train on, if max_steps is not set. Default: "
                                "num_train_epochs passes over the prompts."})
    local_rollout_forward_batch_size: int = dataclasses.field(
        default=64, metadata={"help": "Batch size of generation and of the no-grad forward passes."})
    cache_implementation: str | None = dataclasses.field(
        default=None, metadata={"help": "Rollout sampling's cache, transformers' key: 'static' compiles the lab's "
                                "decode step once per shape for its GPT (without LoRA; others get transformers' "
                                "static cache); docs/performance.md says when it pays. null: eager."})

    # TrainingArguments keys whose defaults change here.
    report_to: None | str | list[str] = dataclasses.field(
        default="none", metadata={"help": "Extra trackers for the trainer's logs; the run's tb/ gets the ppo/ "
                                  "and gold_eval/ events either way."})
    per_device_train_batch_size: int = 8
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "linear"
    num_train_epochs: float = 1.0
    logging_steps: float = 1
    save_steps: float = 50
    save_total_limit: int | None = 1
    seed: int = 0


@dataclasses.dataclass
class PPOStageConfig(RunArguments, AlignArguments, RewardArguments, PPOConfig):
    """PPO's keys, the alignment keys every method has, and the run keys every stage has."""

    eval_every: int = dataclasses.field(default=10, metadata={"help": "Evaluate every this many rollouts."})

    def __post_init__(self):
        if self.activation_checkpointing or self.gradient_checkpointing:
            raise ValueError("key 'activation_checkpointing' is not supported by the PPO loop")
        self.apply_trainer_defaults(f"align-{METHOD}")
        for key in ("num_ppo_epochs", "num_mini_batches", "response_length", "local_rollout_forward_batch_size",
                    "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"key '{key}' must be a positive integer, got {getattr(self, key)}")
        for key in ("cliprange", "cliprange_value", "temperature"):
            if getattr(self, key) <= 0:
                raise ValueError(f"key '{key}' must be positive, got {getattr(self, key)}")
        if self.kl_coef < 0 or self.vf_coef < 0:
            raise ValueError("keys 'kl_coef' and 'vf_coef' must not be negative")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"key 'kl_estimator' must be one of {', '.join(KL_ESTIMATORS)}, got '{self.kl_estimator}'")
        if self.adaptive_kl and (self.target_kl <= 0 or self.kl_horizon <= 0):
            raise ValueError("keys 'target_kl' and 'kl_horizon' must be positive with adaptive_kl")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError("keys 'gamma' and 'lam' must lie in [0, 1]")
        if self.eval_every < 0:
            raise ValueError(f"key 'eval_every' must not be negative, got {self.eval_every}")
        self.check_reward_keys()
        self.check_alignment_keys()
        super().__post_init__()

    @property
    def rollout_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches


def check_context(config, policy, tokenizer, prompts) -> int:
    context = policy.config.max_position_embeddings
    longest = max(map(len, render_prompts(tokenizer, prompts)))
    if longest + config.response_length > context:
        raise UserError(f"key 'response_length' ({config.response_length}) plus the longest prompt ({longest} "
                        f"tokens) exceeds the model's context ({context})")
    return longest


def main(config: PPOStageConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter
    from transformers import set_seed

    started = time.time()
    process = process_state()
    parents = resolve_parents(config, needs_reward=True)
    set_seed(config.seed)
    policy, tokenizer = load_policy(parents.sft_dir, config)
    ref_model, _ = load_policy(parents.sft_dir)  # frozen: KL reference and the evaluation's baseline
    ref_model.eval().requires_grad_(False)
    reward_model = load_reward_model(parents.reward_dir)
    value_model = load_reward_model(parents.reward_dir)  # detail: the value model starts as the reward model
    value_model.requires_grad_(True)

    prompts = load_prompts(config.dataset_name, split=config.dataset_train_split, format=config.dataset_format,
                           config=config.dataset_config)
    if len(prompts) < config.rollout_batch_size * process.num_processes:
        raise UserError(f"key 'dataset_name': {len(prompts)} prompts, fewer than one rollout "
                        f"({config.rollout_batch_size * process.num_processes} = per_device_train_batch_size x "
                        f"gradient_accumulation_steps x num_mini_batches x {process.num_processes} processes)")
    longest = check_context(config, policy, tokenizer, prompts["prompt"])
    peft_config = lora_config(config)
    if peft_config is not None:
        from peft import get_peft_model

        with trainer_refusals(config):
            policy = get_peft_model(policy, peft_config)

    run = claim_run(RunDir.for_config(config, run_name(config, METHOD)), lambda: start_run(
        config, METHOD, parents, data={"train_prompts": len(prompts), "longest_prompt_tokens": longest}), process)
    latest = run.latest_checkpoint() if config.resume else None
    resume_from = step_of(latest) if latest is not None else 0
    if config.resume and not resume_from and process.is_main_process:
        print(f"no checkpoint in {run.checkpoints_dir}; starting from rollout 0")
    writer = (SummaryWriter(str(run.tb_dir), purge_step=resume_from + 1 if resume_from else None)
              if process.is_main_process else None)
    evaluator = build_evaluator(config, ref_model, tokenizer, reward_model, parents=parents)
    args = copy.copy(config)
    args.output_dir = str(run.checkpoints_dir)
    reward_funcs = build_rewards(config, reward_model=reward_model, reward_tokenizer=tokenizer, tokenizer=tokenizer,
                                 batch_size=config.local_rollout_forward_batch_size)
    trainer = PPOTrainer(args, policy=policy, ref_model=ref_model, reward_model=reward_model, value_model=value_model,
                         processing_class=tokenizer, train_dataset=prompts,
                         reward=combined(reward_funcs, config.weights), evaluator=evaluator, writer=writer,
                         checkpoints_dir=run.checkpoints_dir)
    attach_progress(trainer, run.stage)
    try:
        with stops_on_non_finite(lambda: trainer.state.global_step, run.checkpoints_dir):
            training = trainer.train(resume=bool(resume_from))
    finally:
        if writer is not None:
            writer.close()
    if not process.is_main_process:
        return {}  # the main process evaluated and writes the run
    final = trainer.eval_history[-1][1] if trainer.eval_history else {}
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    metrics = {
        **final,
        **training,
        "rollout_batch_size": trainer.global_batch_size,
        "processes": process.num_processes,
        "tokens_generated": round(sum(h["length"] for h in trainer.rollout_history) * trainer.global_batch_size),
        "reward_funcs": "+".join(config.reward_funcs),
        "reward_queries": len(trainer.rollout_history) * trainer.global_batch_size if config.uses_proxy else 0,
        "preference_labels": 0,
        "trainable_parameters": trainable,
        "evaluations": len(trainer.eval_history),
        **{f"sft_{k}": v for k, v in evaluator.sft_metrics().items()},
    }
    return finish_run(run, trainer.policy, tokenizer, metrics, started, evaluator)  # the policy only, merged if LoRA


CONFIG = PPOStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
