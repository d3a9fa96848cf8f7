"""The SFT stage: `rlhf-lab sft --config recipes/<name>/sft.yaml`.

Supervised fine-tuning of the pretraining stage's model on conversations (`messages`), through
`trl.SFTTrainer`, with the loss on assistant turns only (the lab's chat template marks each assistant
answer and its `<|end|>` with `{% generation %}`; a model of another family keeps its own template, and where
TRL cannot mark it the lab does, recipes/core/chat_format.py). Full fine-tuning, or LoRA through peft
(`use_peft: true`), whose adapters are merged before saving so `model/` loads like any other model.

At every evaluation (and once before training, on the pretrained model) a fixed set of held-out
prompts is answered greedily and scored by the gold reward (`recipes.core.gold_eval`); the scores go to
TensorBoard under `gold/...` and the rows as text. See `recipes/sft_callbacks.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import trl

import base_model  # noqa: F401  (registers the architecture with the Auto classes)
from recipes.core import quantization
from recipes.core.chat_format import load_chat_tokenizer, match_model, needs_lab_masks, with_assistant_masks
from recipes.core.config import LoraArguments, RunArguments, TrainerDefaults
from recipes.core.data import fingerprint, load_conversations
from recipes.core.distributed import claim_run
from recipes.core.errors import UserError
from recipes.core.exact_resume import with_exact_resume
from recipes.core.finite_loss import guarded_train
from recipes.core.model_dirs import resolve_model
from recipes.core.progress import attach_progress
from recipes.core.rundir import RunDir, parent_entry, require_parent
from recipes.core.stage_kit import (
    data_fingerprint,
    hold_out_last,
    load_eval_prompts,
    lora_config,
    resolve_max_length,
    trainer_refusals,
)
from recipes.core.tracking import route_trainer_events
from recipes.core.training_log import logged, mean_train_loss
from recipes.sft_callbacks import SFTGoldEvalCallback

STAGE = "sft"
PARENT = "pretrain"


@dataclasses.dataclass
class SFTStageConfig(RunArguments, LoraArguments, TrainerDefaults, trl.SFTConfig):
    """trl.SFTConfig (every key of it) plus the model, data, LoRA and gold-evaluation keys it lacks."""

    # Model (names as in TRL's ModelConfig).
    model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Model to fine-tune. Default: the recipe's pretraining run, "
                  "<runs_root>/<recipe>/pretrain/model."})
    # Data (names as in TRL's ScriptArguments).
    dataset_name: str = dataclasses.field(
        default="world:sft?size=smoke",
        metadata={"help": "Conversations: a .jsonl/.json/.parquet file or folder, a Hugging Face dataset name, "
                  "or a world source such as world:sft?size=default&seed=0."})
    dataset_config: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset config name."})
    dataset_train_split: str = "train"
    dataset_test_split: str | None = dataclasses.field(
        default="validation",
        metadata={"help": "Split for the evaluation loss; null holds out the last twentieth of the training rows."})
    dataset_format: str = dataclasses.field(
        default="auto", metadata={"help": "messages, alpaca or sharegpt; auto detects it from the first row."})
    # Gold evaluation.
    eval_prompts: str | None = dataclasses.field(
        default="world:eval?size=smoke",
        metadata={"help": "Held-out prompts (split 'test') answered and scored by the gold reward at each "
                  "evaluation; empty or null turns this off."})
    eval_num_prompts: int = dataclasses.field(
        default=100, metadata={"help": "Use the first N held-out prompts (the same ones every time)."})
    eval_max_new_tokens: int = dataclasses.field(default=64, metadata={"help": "Answer length budget."})

    # trl.SFTConfig keys whose defaults change here.
    assistant_only_loss: bool = dataclasses.field(
        default=True, metadata={"help": "Compute the loss on assistant turns only."})
    max_length: int | None = dataclasses.field(
        default=None, metadata={"help": "Truncate conversations to this many tokens. Default: the model's context."})
    learning_rate: float = 3e-4
    num_train_epochs: float = 3.0
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = dataclasses.field(
        default=0.05, metadata={"help": "Warmup: a step count, or a fraction of all steps if below 1."})
    eval_strategy: str = "steps"
    eval_steps: float | None = 200
    eval_on_start: bool = True
    save_steps: float = 200
    logging_steps: float = 10

    def __post_init__(self):
        self.apply_trainer_defaults(STAGE)
        if self.packing or self.padding_free:
            raise ValueError("keys 'packing' and 'padding_free' are not supported: the GPT would attend "
                             "across the packed conversations")
        for key in ("eval_num_prompts", "eval_max_new_tokens", "lora_r", "lora_alpha"):
            if getattr(self, key) <= 0:
                raise ValueError(f"key '{key}' must be a positive integer, got {getattr(self, key)}")
        super().__post_init__()


# ----------------------------------------------------------------------------------------------
# Parent model, data, trainer


def resolve_model_path(config: SFTStageConfig) -> tuple[Path | str, RunDir | None]:
    """The model to start from, and the parent run it came from (None for a user-given path)."""
    if config.model_name_or_path:
        return resolve_model(config.model_name_or_path, "model_name_or_path", "policy"), None
    parent = require_parent(config, PARENT)
    return parent.model_dir, parent


def load_model(path, config=None):
    """The model and its tokenizer, prepared for chat (recipes/core/chat_format.py): the model's end of turn and
    padding follow the tokenizer's, so what SFT saves stops where its template ends a turn. 4-bit with
    `load_in_4bit` (recipes/core/quantization.py)."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_chat_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **quantization.load_kwargs(config))
    except (OSError, ValueError) as err:
        raise UserError(f"key 'model_name_or_path': cannot load {path} ({str(err).splitlines()[0]})") from None
    return match_model(model, tokenizer), tokenizer


def load_data(config: SFTStageConfig):
    """(train, eval) conversation datasets with a `messages` column."""
    kwargs = dict(format=config.dataset_format, config=config.dataset_config)
    train = load_conversations(config.dataset_name, split=config.dataset_train_split, **kwargs)
    if config.dataset_test_split:
        test = load_conversations(config.dataset_name, split=config.dataset_test_split, **kwargs)
    else:
        train, test = hold_out_last(train)
    if len(train) == 0:
        raise UserError(f"{config.dataset_name}: split '{config.dataset_train_split}' holds no conversations")
    return train, test


def drop_too_long(dataset, tokenizer, max_length: int):
    """Conversations that fit in max_length tokens, and how many did not.

    They are dropped rather than truncated: a cut-off answer has no end of turn, and would teach the
    model to ramble on instead of ending its turn.
    """
    lengths = [len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=False)) for m in dataset["messages"]]
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    return (dataset if len(keep) == len(dataset) else dataset.select(keep)), len(dataset) - len(keep)


def trainer_args(config: SFTStageConfig, output_dir: Path, max_length: int) -> SFTStageConfig:
    """The config as the trainer sees it: output in the run's checkpoints/, max_length resolved."""
    args = copy.copy(config)
    args.output_dir = str(output_dir)
    args.max_length = max_length
    return args


def build_trainer(config: SFTStageConfig, model, tokenizer, train, test, *, output_dir: Path, callbacks=()):
    max_length = resolve_max_length(config, model)
    args = trainer_args(config, output_dir, max_length)
    if config.assistant_only_loss and needs_lab_masks(tokenizer):
        # A template TRL cannot mark: the lab marks each answer itself and TRL trains on those masks.
        train = with_assistant_masks(train, tokenizer, f"{config.dataset_name} [{config.dataset_train_split}]")
        test = with_assistant_masks(test, tokenizer, f"{config.dataset_name} [eval]") if len(test) else test
        args.assistant_only_loss = False
    with trainer_refusals(config):
        return with_exact_resume(trl.SFTTrainer)(
            model=model, args=args, train_dataset=train,
            eval_dataset=test if len(test) else None, processing_class=tokenizer,
            peft_config=lora_config(config), callbacks=list(callbacks))


# ----------------------------------------------------------------------------------------------
# The stage


def main(config: SFTStageConfig) -> dict:
    started = time.time()
    run = RunDir.for_config(config, STAGE)
    quantization.check(config)
    model_path, parent = resolve_model_path(config)
    train, test = load_data(config)
    prompts = load_eval_prompts(config, split="test") if config.eval_prompts else []
    model, tokenizer = load_model(model_path, config)
    max_length = resolve_max_length(config, model)
    config = copy.copy(config)
    config.max_length = max_length  # config.yaml records the resolved value
    train, train_dropped = drop_too_long(train, tokenizer, max_length)
    test, test_dropped = drop_too_long(test, tokenizer, max_length)
    if len(train) == 0:
        raise UserError(f"{config.dataset_name}: no conversation of split '{config.dataset_train_split}' fits in "
                        f"max_length={max_length} tokens")
    if train_dropped or test_dropped:
        print(f"dropped {train_dropped} training and {test_dropped} evaluation conversations longer than "
              f"max_length={max_length} tokens")
    eval_fingerprint = [fingerprint(config.eval_prompts, split="test")] if config.eval_prompts else []
    data = {"source": config.dataset_name,
            "fingerprint": data_fingerprint(config, *eval_fingerprint, tail=config.dataset_format),
            "train_conversations": len(train), "eval_conversations": len(test),
            "dropped_too_long": {"train": train_dropped, "eval": test_dropped},
            "eval_prompts": config.eval_prompts, "eval_num_prompts": len(prompts)}
    claim_run(run, lambda: run.start(config, parents=[parent_entry("pretrain", model_path, parent)], data=data))
    route_trainer_events(run)

    gold = SFTGoldEvalCallback(tokenizer, prompts, run=run, max_new_tokens=config.eval_max_new_tokens,
                            batch_size=config.per_device_eval_batch_size)
    trainer = build_trainer(config, model, tokenizer, train, test, output_dir=run.checkpoints_dir,
                            callbacks=[gold])
    attach_progress(trainer, STAGE)
    gold.attach(trainer)
    guarded_train(trainer, run.resume_checkpoint(config.resume))

    final = quantization.merged(trainer.model, model_path)
    n_params = sum(p.numel() for p in final.parameters())
    eval_losses, train_losses = logged(trainer, "eval_loss"), logged(trainer, "loss")
    metrics = {
        "initial_eval_loss": eval_losses[0] if eval_losses and config.eval_on_start else None,
        "eval_loss": eval_losses[-1] if eval_losses else None,
        "initial_train_loss": train_losses[0] if train_losses else None,
        "train_loss": train_losses[-1] if train_losses else None,
        "mean_train_loss": mean_train_loss(trainer),
        "steps": trainer.state.global_step,
        "parameters": n_params,
        "trainable_parameters": gold.trainable_parameters,
        **{f"pretrained_{k}": v for k, v in (gold.pretrained or {}).items()},
        **(gold.latest or {}),
        "wall_time_s": round(time.time() - started, 2),
    }
    if trainer.is_world_process_zero():
        run.save_model(final, tokenizer)
        run.finish(metrics)
        line = f"wrote {run.model_dir}"
        if metrics["initial_eval_loss"] is not None and metrics["eval_loss"] is not None:
            line += f"  eval loss {metrics['initial_eval_loss']:.3f} -> {metrics['eval_loss']:.3f}"
        if gold.latest and gold.pretrained and "gold_reward" in gold.latest:
            line += (f"  gold reward {metrics['pretrained_gold_reward']:+.3f} -> {metrics['gold_reward']:+.3f}"
                     f"  end of turn {metrics['pretrained_end_of_turn_rate']:.0%} -> {metrics['end_of_turn_rate']:.0%}")
        print(line)
    return metrics


CONFIG = SFTStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
