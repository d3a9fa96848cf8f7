"""What the offline methods share (DPO, KTO, SimPO, ORPO): alignment on preference data through a TRL trainer.

They train the SFT model on the recipe's preference pairs, or with `sft_sample_pairs` on pairs of its
own answers ranked by the reward model (alignment/proxy_pairs.py), against a frozen reference (the
SFT model again; SimPO and ORPO have none), with LoRA through peft as a config choice, and are
evaluated by the one evaluation (alignment/evaluate.py) every `eval_every` steps. A method module
supplies its TRL trainer class and how pairs become its training rows; `run(config, method,
trainer_class, to_rows)` does the rest.

The reference: with full fine-tuning a second, frozen copy of the SFT model is passed to the trainer
as `ref_model` (without it TRL 1.16 reloads the reference from `config._name_or_path`). With LoRA
none is passed: TRL then computes the reference log-probabilities with the adapters disabled, which
is exactly the SFT model (LoRA starts at zero), and needs no second copy in the trainer. The
evaluation always measures KL against its own frozen SFT copy.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from pathlib import Path

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
from alignment.proxy_pairs import concatenate_pairs, proxy_ranked_pairs
from recipes.core.config import TrainerDefaults
from recipes.core.data import load_preferences
from recipes.core.distributed import claim_run
from recipes.core.errors import UserError
from recipes.core.exact_resume import with_exact_resume
from recipes.core.finite_loss import guarded_train
from recipes.core.generation import distinct
from recipes.core.progress import attach_progress
from recipes.core.rundir import RunDir, weights_hash
from recipes.core.stage_kit import load_eval_prompts, lora_config, resolve_max_length, trainer_refusals
from recipes.core.tracking import route_trainer_events
from recipes.core.training_log import logged, mean_train_loss


@dataclasses.dataclass
class OfflineArguments(TrainerDefaults):
    """The lab's defaults for DPO and KTO; listed before the TRL config among a stage config's bases."""

    max_length: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Pairs whose prompt plus answer exceed this many tokens are dropped. "
                  "Default: the model's context."})
    sft_sample_pairs: int = dataclasses.field(
        default=0,
        metadata={"help": "Train on pairs of the SFT model's own answers instead of the dataset's: "
                  "sft_samples_per_prompt answers to each of the dataset's first N distinct prompts, the "
                  "reward model's best as chosen and worst as rejected (alignment/proxy_pairs.py). 0: the "
                  "dataset's pairs."})
    sft_samples_per_prompt: int = dataclasses.field(
        default=4, metadata={"help": "Answers sampled per prompt for sft_sample_pairs (at least 2)."})
    sft_sample_max_new_tokens: int = dataclasses.field(
        default=128, metadata={"help": "Token limit of each sampled answer; answers cut off are left out."})
    sft_sample_temperature: float = dataclasses.field(
        default=1.0, metadata={"help": "Sampling temperature of the SFT answers for sft_sample_pairs."})
    sft_sample_pairs_with_dataset: bool = dataclasses.field(
        default=False, metadata={"help": "With sft_sample_pairs: train on the dataset's pairs too, not only on the "
                                 "sampled ones."})
    logging_steps: float = 10
    save_steps: float = 200

    def check_offline_keys(self, stage: str) -> None:
        """Validation and CPU defaults, for the stage config's __post_init__ (before the TRL one)."""
        self.apply_trainer_defaults(stage)
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"key 'max_length' must be a positive integer, got {self.max_length}")
        if self.sft_sample_pairs < 0:
            raise ValueError(f"key 'sft_sample_pairs' must be 0 (the dataset's pairs) or a positive number of "
                             f"prompts, got {self.sft_sample_pairs}")
        if self.sft_samples_per_prompt < 2:
            raise ValueError(f"key 'sft_samples_per_prompt' must be at least 2 (a pair needs two answers), "
                             f"got {self.sft_samples_per_prompt}")
        if self.sft_sample_max_new_tokens < 1 or self.sft_sample_temperature <= 0:
            raise ValueError("keys 'sft_sample_max_new_tokens' and 'sft_sample_temperature' must be positive, got "
                             f"{self.sft_sample_max_new_tokens} and {self.sft_sample_temperature}")
        self.check_alignment_keys()


# ----------------------------------------------------------------------------------------------
# Data


def load_pairs(config):
    """The recipe's preference pairs (conversational prompt/chosen/rejected)."""
    pairs = load_preferences(config.dataset_name, format=config.dataset_format, split=config.dataset_train_split,
                             config=config.dataset_config)
    if len(pairs) == 0:
        raise UserError(f"{config.dataset_name}: split '{config.dataset_train_split}' holds no preference pairs")
    return pairs


def drop_too_long(pairs, tokenizer, max_length: int):
    """Pairs whose prompt + chosen and prompt + rejected both fit in max_length tokens, and how many did not.

    Dropped rather than truncated: a cut-off answer has lost its end of turn, and the loss would
    reward or punish an answer nobody wrote.
    """
    def length(messages) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))

    keep = [i for i, row in enumerate(pairs)
            if max(length(row["prompt"] + row["chosen"]), length(row["prompt"] + row["rejected"])) <= max_length]
    return (pairs if len(keep) == len(pairs) else pairs.select(keep)), len(pairs) - len(keep)


def as_text_rows(pairs, tokenizer):
    """Pairs as the text rows TRL's older trainers (CPO for SimPO, ORPO) tokenise themselves: the prompt rendered
    up to the assistant's turn, each answer followed by its end of turn and nothing else, so the tokens are exactly
    the ones the lab's sampler produces (the chat template's newline after the end of turn would otherwise be
    followed by a second end-of-turn token those trainers append)."""
    import datasets

    def prompt_text(messages) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def answer_text(messages) -> str:
        return messages[-1]["content"] + tokenizer.eos_token

    return datasets.Dataset.from_dict({"prompt": [prompt_text(p) for p in pairs["prompt"]],
                                       "chosen": [answer_text(c) for c in pairs["chosen"]],
                                       "rejected": [answer_text(r) for r in pairs["rejected"]]})


def without_bos(tokenizer):
    """A copy of `tokenizer` with no beginning-of-sequence token: TRL's CPO and ORPO trainers put one before
    every prompt that lacks it, and the lab's chat template (and so its sampler) has none."""
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.bos_token = None
    return plain


def prompts_fingerprint(prompts) -> str:
    """16 hex digits naming the evaluated prompts, so runs can prove they were scored on the same ones."""
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# The stage


# TRL's own training logs worth keeping in the final metrics: (logged key, metrics key).
TRL_FINAL = (("rewards/margins", "train_reward_margin"), ("rewards/accuracies", "train_reward_accuracy"),
             ("rewards/chosen", "train_reward_chosen"), ("rewards/rejected", "train_reward_rejected"),
             ("kl", "train_kl"))


def training_pairs(config, reference, reward_model, tokenizer, sft_dir: Path) -> tuple:
    """(pairs that fit in max_length, how many did not, what sampling recorded): the dataset's pairs, and with
    `sft_sample_pairs` pairs of the SFT model's own answers ranked by the reward model (alignment/proxy_pairs.py),
    instead of or beside them."""
    pairs, sampled = load_pairs(config), {}
    if config.sft_sample_pairs:
        prompts = distinct(pairs["prompt"], config.sft_sample_pairs)
        print(f"sampling {config.sft_samples_per_prompt} SFT answers to each of {len(prompts)} prompts, "
              f"ranked by the reward model")
        sampled_pairs, sampled = proxy_ranked_pairs(
            reference, reward_model, tokenizer, prompts, samples_per_prompt=config.sft_samples_per_prompt,
            max_new_tokens=config.sft_sample_max_new_tokens, temperature=config.sft_sample_temperature,
            batch_size=config.eval_generation_batch_size, seed=config.seed, policy_weights=weights_hash(sft_dir))
        if len(sampled_pairs) == 0:
            raise UserError(f"key 'sft_sample_pairs': no prompt got two distinct finished SFT answers out of "
                            f"{config.sft_samples_per_prompt}; raise sft_sample_max_new_tokens or sft_samples_per_prompt")
        pairs = concatenate_pairs(pairs, sampled_pairs) if config.sft_sample_pairs_with_dataset else sampled_pairs
    pairs, dropped = drop_too_long(pairs, tokenizer, config.max_length)
    if len(pairs) == 0:
        raise UserError(f"{config.dataset_name}: no preference pair of split '{config.dataset_train_split}' fits in "
                        f"max_length={config.max_length} tokens")
    if dropped:
        print(f"dropped {dropped} preference pairs longer than max_length={config.max_length} tokens")
    return pairs, dropped, sampled


def final_metrics(trainer, callback, evaluator, sampled: dict, pairs: int) -> dict:
    """The last evaluation, the training's own numbers and TRL's last logged rewards, and the SFT baseline's."""
    train_losses = logged(trainer, "loss")
    metrics = {
        **(callback.latest or {}),
        "train_loss": train_losses[-1] if train_losses else None,
        "mean_train_loss": mean_train_loss(trainer),
        "steps": trainer.state.global_step,
        "tokens_generated": sampled.get("sft_sample_tokens", 0),
        "reward_queries": sampled.get("sft_sample_answers", 0),  # the proxy scored every sampled answer
        "preference_labels": pairs,
        "evaluations": len(callback.history),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        **{f"sft_{k}": v for k, v in evaluator.sft_metrics().items()},
    }
    for key, name in TRL_FINAL:
        values = logged(trainer, key)
        if values:
            metrics[name] = values[-1]
    return metrics


def run(config, method: str, trainer_class, to_rows=None, *, reference_free: bool = False) -> dict:
    """Train `method` with `trainer_class` (a TRL trainer taking peft_config, and ref_model unless
    `reference_free`: SimPO and ORPO, whose TRL trainers also get text rows and a tokenizer without BOS:
    `as_text_rows`, `without_bos`) and evaluate it.

    `to_rows(pairs, config)` turns the pairs into the trainer's training rows (default: the pairs).
    """
    # Setup: the models, the data, the run directory and the evaluation.
    started = time.time()
    parents = resolve_parents(config, needs_reward=True)
    policy, tokenizer = load_policy(parents.sft_dir, config)
    reference, _ = load_policy(parents.sft_dir)  # frozen: the trainer's reference and the evaluation's SFT model
    reference.eval().requires_grad_(False)
    reward_model = load_reward_model(parents.reward_dir)
    config = copy.copy(config)
    config.max_length = resolve_max_length(config, policy)  # config.yaml records the resolved value
    pairs, dropped, sampled = training_pairs(config, reference, reward_model, tokenizer, parents.sft_dir)
    rows = to_rows(pairs, config) if to_rows else as_text_rows(pairs, tokenizer) if reference_free else pairs
    prompts = load_eval_prompts(config)
    data = {"pairs": len(pairs), "dropped_too_long": dropped, "train_rows": len(rows), **sampled,
            "eval_num_prompts": len(prompts), "eval_prompts_fingerprint": prompts_fingerprint(prompts)}
    run_dir = claim_run(RunDir.for_config(config, run_name(config, method)),
                        lambda: start_run(config, method, parents, data=data))
    route_trainer_events(run_dir)
    evaluator = build_evaluator(config, reference, tokenizer, reward_model, parents=parents)

    # Train.
    args = copy.copy(config)
    args.output_dir = str(run_dir.checkpoints_dir)
    peft_config = lora_config(config)
    reference_kwargs = {} if reference_free else {"ref_model": None if peft_config else reference}
    with trainer_refusals(config):
        trainer = with_exact_resume(trainer_class)(model=policy, args=args, train_dataset=rows,
                                                   processing_class=without_bos(tokenizer) if reference_free
                                                   else tokenizer, peft_config=peft_config, **reference_kwargs)
    callback = EvaluationCallback(evaluator, eval_every=config.eval_every, fallback_tb_dir=run_dir.tb_dir,
                                  at_start=config.eval_at_start).attach(trainer)
    attach_progress(trainer, run_dir.stage)
    guarded_train(trainer, run_dir.resume_checkpoint(config.resume))

    # Save.
    metrics = final_metrics(trainer, callback, evaluator, sampled, len(pairs))
    return finish_run(run_dir, trainer.model, tokenizer, metrics, started, evaluator)
