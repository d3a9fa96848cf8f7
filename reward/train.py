"""The reward-model stage: `rlhf-lab reward --config recipes/<name>/reward.yaml`.

Initialises a sequence-classification model (one score) from the SFT model, trains it on
preference pairs with TRL's RewardTrainer (Bradley-Terry loss), then checks it against the gold
reward (reward/evaluate.py): accuracy against the annotators' labels and against the gold order on
held-out pairs, the noise ceiling, the rank correlation of reward with gold reward on answers
sampled from the SFT model, the correlation of reward with answer length, and a histogram of
margins; and what it learnt besides gold (reward/diagnostics.py): its calibration against the gold
order (ECE, Brier; reliability.png and calibration.json, the diagram's bins, in the run directory) and
its score regressed on gold, answer length and flattery. With `ensemble_seeds`, one more reward model per
seed (ensemble/seed-<s>/) and how far the ensemble's disagreement follows its error on gold (ensemble_*).
All to TensorBoard (`reward_eval/...`, also at every trainer evaluation) and to the manifest.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import trl
from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

import base_model  # noqa: F401  registers the architecture with the Auto classes
from recipes.core import quantization
from recipes.core.chat_format import load_chat_tokenizer
from recipes.core.config import (
    LoraArguments,
    RunArguments,
    resolve_trainer_precision,
)
from recipes.core.data import read_rows
from recipes.core.data.preferences import to_preferences
from recipes.core.data.world_cache import parse_world_source
from recipes.core.distributed import claim_run
from recipes.core.errors import UserError
from recipes.core.exact_resume import with_exact_resume
from recipes.core.finite_loss import guarded_train
from recipes.core.model_dirs import resolve_model
from recipes.core.progress import attach_progress
from recipes.core.rundir import RunDir, atomic_savefig, atomic_write_text, parent_entry, require_parent
from recipes.core.seeds import stream_seed
from recipes.core.stage_kit import data_fingerprint, hold_out_last, load_eval_prompts, lora_config, trainer_refusals
from recipes.core.stages import JUDGE_STAGE
from recipes.core.tracking import route_trainer_events
from recipes.core.training_log import logged, mean_train_loss
from recipes.core.world import SIZES
from recipes.core.world.annotators import Annotators, Biases, answer_tokens
from reward.diagnostics import ensemble_diagnostics, reliability_figure
from reward.evaluate import evaluate_reward_model, sample_answers
from reward.sft_pairs import distinct_prompts, label_sft_samples, to_token_ids

STAGE = "reward"
PARENT = "sft"
# Rows sampled at once for sft_sample_pairs: sampling keeps no activations for a backward pass, and
# on a 2-core CPU 128 rows ran 1.7x faster than 32 (tinyworld SFT answers, finished rows dropped).
PAIR_SAMPLING_BATCH = 128
ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # LoRA's default targets in a reward model
ENSEMBLE_DIR = "ensemble"  # ensemble_seeds' reward models: <run dir>/ensemble/seed-<s>/


@dataclasses.dataclass
class RewardStageConfig(RunArguments, LoraArguments, trl.RewardConfig):
    disable_tqdm: bool | None = dataclasses.field(  # as TrainerDefaults: the same whatever the logging verbosity
        default=True, metadata={"help": "The trainer's own progress bar and raw log dicts: off (the lab shows a "
                                "step bar and one line per logging step)."})
    # Model (names as in TRL's ModelConfig).
    model_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "The SFT model to start from. Default: <runs_root>/<recipe>/sft/model."})
    # Data (names as in TRL's ScriptArguments).
    dataset_name: str = dataclasses.field(
        default="world:preferences?size=smoke",
        metadata={"help": "Preference pairs: a .jsonl/.json/.parquet file or folder, a Hugging Face dataset "
                  "name, or a world source such as world:preferences?size=default&seed=0."})
    dataset_config: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset config name."})
    dataset_train_split: str = "train"
    dataset_test_split: str | None = dataclasses.field(
        default="validation",
        metadata={"help": "Held-out pairs; null holds out the last twentieth of the training pairs instead."})
    dataset_format: str = dataclasses.field(
        default="auto", metadata={"help": "auto, prompt_chosen_rejected, hh_rlhf or ultrafeedback."})
    # Evaluation against the gold reward.
    eval_prompts: str = dataclasses.field(
        default="world:eval?size=smoke",
        metadata={"help": "Prompts the SFT model answers for the gold correlation check (world prompts)."})
    eval_prompts_split: str = "test"
    eval_num_prompts: int = 40
    eval_samples_per_prompt: int = dataclasses.field(
        default=4, metadata={"help": "Sampled answers per prompt, so rewards vary within a prompt too."})
    eval_max_new_tokens: int = 64
    eval_temperature: float = 1.0
    sft_sample_pairs: int = dataclasses.field(
        default=0, metadata={"help": "Also train on this many pairs of the SFT model's own answers to training "
                             "prompts, labelled by the world's simulated annotators (world data only; see "
                             "reward/sft_pairs.py). 0: the preference data alone."})
    sft_sample_cross_pairs: int = dataclasses.field(
        default=0, metadata={"help": "Also pair those sampled answers across two different prompts, this many "
                             "times, labelled alike: puts every prompt's rewards on one scale, which pairs to the "
                             "same prompt cannot (see reward/sft_pairs.py). Needs sft_sample_pairs."})
    sft_sample_max_new_tokens: int = dataclasses.field(
        default=160, metadata={"help": "Most tokens per sampled answer for sft_sample_pairs."})
    max_train_pairs: int | None = dataclasses.field(
        default=None, metadata={"help": "Train on only the first this many preference pairs (fewer labels; "
                                "recipes/overoptimization). Default: all."})
    label_flip_rate: float = dataclasses.field(
        default=0.0, metadata={"help": "Swap chosen and rejected of this share of the training pairs (seeded): "
                               "noisier labels on purpose (recipes/overoptimization). Held-out pairs stay as they are."})
    length_balanced_pairs: bool = dataclasses.field(
        default=False, metadata={"help": "Drop training pairs at random from the commoner of 'chosen is longer' and "
                                 "'chosen is shorter' until both are as many, in the preference data and in the "
                                 "sampled pairs apart: length then predicts no label (a mitigation of annotators' "
                                 "length bias; recipes/annotator-bias). Held-out pairs stay as they are."})
    run_name: str | None = dataclasses.field(
        default=None, metadata={"help": "The run's directory under <runs_root>/<recipe>/. Default: reward "
                                "(judge for `rlhf-lab judge`)."})
    annotator_bt_temperature: float | None = dataclasses.field(
        default=None, metadata={"help": "Bradley-Terry temperature of the labels, for the noise ceiling. "
                                "Default: the world's, for world data."})
    annotator_flip_rate: float | None = dataclasses.field(
        default=None, metadata={"help": "Label flip rate, for the noise ceiling. Default: the world's."})
    # TRL defaults that do not suit a CPU: bf16 only where a GPU supports it, no checkpointing.
    bf16: bool | None = dataclasses.field(
        default=None, metadata={"help": "bf16 mixed precision. Default: on with a bf16-capable GPU, else off."})
    gradient_checkpointing: bool | None = dataclasses.field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."})
    activation_checkpointing: bool | None = dataclasses.field(
        default=None, metadata={"help": "Recompute activations in backward. Default: on with a GPU, else off."})
    report_to: None | str | list[str] = dataclasses.field(
        default_factory=lambda: ["tensorboard"], metadata={"help": "Trackers; TensorBoard events go to tb/."})
    max_length: int | None = dataclasses.field(
        default=256, metadata={"help": "Pairs with a side longer than this many tokens are dropped."})
    ensemble_seeds: list[int] = dataclasses.field(
        default_factory=list, metadata={"help": "After the main model, one more reward model per seed given here, "
                                        "the same config but the seed (score head and data order), saved in "
                                        "ensemble/seed-<s>/; then how far the ensemble's disagreement follows its "
                                        "error on gold (ensemble_* metrics). Default: none."})

    def __post_init__(self):
        if self.output_dir is not None:
            raise ValueError("key 'output_dir': the reward stage keeps its checkpoints in "
                             "<runs_root>/<recipe>/reward/checkpoints; choose it with --runs_root and --recipe")
        resolve_trainer_precision(self)
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            import torch

            self.activation_checkpointing = torch.cuda.is_available()
        if self.max_train_pairs is not None and self.max_train_pairs <= 0:
            raise ValueError(f"key 'max_train_pairs' must be a positive integer or null, got {self.max_train_pairs}")
        if not 0.0 <= self.label_flip_rate <= 1.0:
            raise ValueError(f"key 'label_flip_rate' must be between 0 and 1, got {self.label_flip_rate}")
        if self.run_name is not None and (not self.run_name.startswith((STAGE, JUDGE_STAGE)) or "/" in self.run_name):
            raise ValueError(f"key 'run_name' must start with '{STAGE}' (or be a judge's) and name one directory, "
                             f"got '{self.run_name}'")
        for key in ("sft_sample_pairs", "sft_sample_cross_pairs"):
            if getattr(self, key) < 0:
                raise ValueError(f"key '{key}' must be 0 or more, got {getattr(self, key)}")
        if self.sft_sample_cross_pairs and not self.sft_sample_pairs:
            raise ValueError("key 'sft_sample_cross_pairs' pairs the answers that sft_sample_pairs samples; "
                             "set sft_sample_pairs above 0 too")
        for key in ("eval_num_prompts", "eval_samples_per_prompt", "eval_max_new_tokens", "lora_r",
                    "sft_sample_max_new_tokens"):
            if getattr(self, key) <= 0:
                raise ValueError(f"key '{key}' must be a positive integer, got {getattr(self, key)}")
        if self.eval_temperature <= 0:
            raise ValueError(f"key 'eval_temperature' must be positive, got {self.eval_temperature}")
        self.ensemble_seeds = [] if self.ensemble_seeds is None else self.ensemble_seeds  # null: no ensemble
        seeds = self.ensemble_seeds if isinstance(self.ensemble_seeds, (list, tuple)) else [None]
        if (not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds)
                or self.seed in seeds):
            raise ValueError(f"key 'ensemble_seeds' must be distinct integer seeds other than seed ({self.seed}), "
                             f"got {self.ensemble_seeds}")
        super().__post_init__()
        self.output_dir = None  # the run directory decides it (TrainingArguments made it "trainer_output")


# ----------------------------------------------------------------------------------------------
# Data


def load_pairs(config: RewardStageConfig):
    """(train, held-out) pairs as datasets in TRL's shape, and counts for the manifest; held-out ones keep gold columns
    (and, from biased annotators, p_agree_unseen: each label's probability of following the gold order) if the
    data has them."""
    import datasets

    def load(split: str) -> dict[str, list]:
        rows = read_rows(config.dataset_name, split, config.dataset_config)
        columns = to_preferences(rows, config.dataset_format)
        for side in ("gold_chosen", "gold_rejected", "p_agree_unseen"):
            values = [record.get(side) for record in rows.records]
            if values and all(isinstance(v, (int, float)) for v in values):
                columns[side] = [float(v) for v in values]
        return columns

    train = load(config.dataset_train_split)
    if config.dataset_test_split:
        test = load(config.dataset_test_split)
    else:
        train, test = hold_out_last(train)
    for split, columns in ((config.dataset_train_split, train), (config.dataset_test_split or "held-out 5%", test)):
        if not columns["prompt"]:
            raise UserError(f"{config.dataset_name}: split '{split}' holds no preference pairs")
    train = {k: v for k, v in train.items() if k in ("prompt", "chosen", "rejected")}
    if config.max_train_pairs is not None:
        train = {k: v[:config.max_train_pairs] for k, v in train.items()}
    if config.label_flip_rate:
        train = flip_labels(train, config.label_flip_rate, config.seed)
    counts = {}
    if config.length_balanced_pairs:
        train, counts = balance_lengths(train, config.seed, "pairs")
    return datasets.Dataset.from_dict(train), datasets.Dataset.from_dict(test), counts


def flip_labels(pairs: dict[str, list], rate: float, seed: int) -> dict[str, list]:
    """The pairs with chosen and rejected swapped on a seeded `rate` share of them."""
    import random

    rng = random.Random(f"label-flips-{seed}")
    flip = [rng.random() < rate for _ in pairs["prompt"]]
    chosen = [r if f else c for c, r, f in zip(pairs["chosen"], pairs["rejected"], flip)]
    rejected = [c if f else r for c, r, f in zip(pairs["chosen"], pairs["rejected"], flip)]
    return {**pairs, "chosen": chosen, "rejected": rejected}


def annotator_noise(config: RewardStageConfig) -> Annotators | None:
    """The labels' annotators (Bradley-Terry temperature, flip rate, biases): from the config, else the world's
    size and the world source's bias keys."""
    temperature, flip_rate, biases = config.annotator_bt_temperature, config.annotator_flip_rate, Biases()
    if config.dataset_name.startswith("world:"):
        world = parse_world_source(config.dataset_name)
        spec, biases = SIZES[world.size], world.biases
        temperature = spec.bt_temperature if temperature is None else temperature
        flip_rate = spec.flip_rate if flip_rate is None else flip_rate
    if temperature is None:
        return None
    return Annotators(temperature, flip_rate or 0.0, biases)


def balance_lengths(pairs: dict[str, list], seed: int, name: str) -> tuple[dict[str, list], dict[str, int]]:
    """The pairs less a seeded random share of those whose chosen answer is the longer (or the shorter, whichever
    is more common), so that length cannot predict the label: the chosen answer is the longer in exactly half the
    pairs whose answers differ in length. Length is the world's token count (words and punctuation marks)."""
    import random

    def length(answer) -> int:
        return answer_tokens(answer if isinstance(answer, str) else answer[-1]["content"])

    longer = [i for i, (c, r) in enumerate(zip(pairs["chosen"], pairs["rejected"])) if length(c) > length(r)]
    shorter = [i for i, (c, r) in enumerate(zip(pairs["chosen"], pairs["rejected"])) if length(c) < length(r)]
    more, fewer = (longer, shorter) if len(longer) > len(shorter) else (shorter, longer)
    dropped = set(random.Random(f"length-balance/{name}/{seed}").sample(more, len(more) - len(fewer)))
    kept = [i for i in range(len(pairs["chosen"])) if i not in dropped]
    counts = {f"{name}_chosen_longer": len(longer), f"{name}_chosen_shorter": len(shorter),
              f"{name}_dropped_to_balance": len(dropped)}
    return {key: [values[i] for i in kept] for key, values in pairs.items()}, counts


# ----------------------------------------------------------------------------------------------
# Model


def resolve_parent(config: RewardStageConfig) -> tuple[Path, RunDir | None]:
    """The SFT model directory, and the SFT run it came from (None for a model given by path)."""
    if config.model_name_or_path:
        return resolve_model(config.model_name_or_path, "model_name_or_path", "backbone"), None
    parent = require_parent(config, PARENT)
    return parent.model_dir, parent


def load_reward_model(model_dir: Path, seed: int, config=None):
    """The SFT backbone under a fresh one-output score head (transformers reports the head as new)."""
    from transformers import AutoModelForSequenceClassification, set_seed
    from transformers.utils import logging as hf_logging

    tokenizer = load_chat_tokenizer(model_dir)
    set_seed(seed)  # the score head's initialisation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused lm_head and the new score head are expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1,
                                                                   **quantization.load_kwargs(config))
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_policy(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir))


# ----------------------------------------------------------------------------------------------
# The stage


class RewardGoldCheckCallback(TrainerCallback):
    """At each trainer evaluation, the gold checks of reward/evaluate.py on the same pairs and samples."""

    def __init__(self, evaluate):
        self.evaluate, self.last = evaluate, None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self.last = self.evaluate(model, state.global_step)


def train_reward_model(config: RewardStageConfig, model, tokenizer, train_pairs, desc: str, *, callback=None,
                       eval_pairs=None, resume: str | None = None):
    """`model` trained on `train_pairs` by TRL's RewardTrainer (Bradley-Terry loss; LoRA where configured): the
    trainer."""
    lora = lora_config(config, "SEQ_CLS", ATTENTION_PROJECTIONS, modules_to_save=["score"])
    with trainer_refusals(config):
        trainer = with_exact_resume(trl.RewardTrainer)(
            model=model, args=config, train_dataset=train_pairs, eval_dataset=eval_pairs,
            processing_class=tokenizer, peft_config=lora, callbacks=[callback] if callback else None)
    attach_progress(trainer, desc)
    guarded_train(trainer, resume)
    return trainer


def train_member(config: RewardStageConfig, seed: int, model_dir: Path, train_pairs, run: RunDir, save: bool):
    """One more reward model of the ensemble: the same config and data but `seed` (its score head's initialisation
    and the data order), trained as the main one without evaluations or checkpoints, saved (where `save`) in
    ensemble/seed-<seed>/ with its tokenizer. Returns the trained model."""
    member_config = copy.copy(config)  # not dataclasses.replace: __post_init__ would refuse the output_dir set
    member_config.seed = seed
    member_config.eval_strategy, member_config.save_strategy = IntervalStrategy.NO, SaveStrategy.NO
    member_config.load_best_model_at_end = False
    member_config.output_dir = str(run.checkpoints_dir / f"ensemble-seed-{seed}")
    model, tokenizer = load_reward_model(model_dir, seed, config)
    # Its training curves beside the main model's, as a TensorBoard run of their own (read when the trainer is made).
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.tb_dir / f"ensemble-seed-{seed}")
    try:
        trainer = train_reward_model(member_config, model, tokenizer, train_pairs, f"{STAGE} seed {seed}")
    finally:
        route_trainer_events(run)
    trained = quantization.merged(trainer.model, model_dir, num_labels=1)
    trained.config.pad_token_id = tokenizer.pad_token_id
    if save:
        directory = run.path / ENSEMBLE_DIR / f"seed-{seed}"
        staged = directory.with_name(f".{directory.name}.tmp")  # renamed into place whole, as model/ is
        shutil.rmtree(staged, ignore_errors=True)
        trained.save_pretrained(str(staged))
        tokenizer.save_pretrained(str(staged))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staged, directory)
    return trained


def ensemble_metrics(scores: list[dict], samples) -> dict[str, float]:
    """reward/diagnostics.py's ensemble diagnostics from each model's `details` of evaluate_reward_model (the main
    model first); none without gold."""
    if scores[0].get("gold_gaps") is None:
        return {}
    rewards = [s["sample_rewards"] for s in scores] if scores[0].get("sample_rewards") is not None else None
    return ensemble_diagnostics([s["margins"] for s in scores], scores[0]["gold_gaps"], rewards,
                                samples.golds if rewards is not None else None)


def save_calibration(run: RunDir, table: list[dict] | None, metrics: dict) -> None:
    """calibration.json (ECE, Brier score and the reliability diagram's bins) and reliability.png in the run
    directory, where the held-out pairs had gold."""
    if table is None:
        return
    summary = {"ece": metrics.get("ece"), "brier": metrics.get("brier"), "bins": table}
    atomic_write_text(run.path / "calibration.json", json.dumps(summary, indent=2) + "\n")
    atomic_savefig(reliability_figure(table), run.path / "reliability.png", dpi=100)


def main(config: RewardStageConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    started = time.time()
    run = RunDir.for_config(config, config.run_name or STAGE)
    quantization.check(config)
    model_dir, parent = resolve_parent(config)
    train_pairs, test_pairs, balance_counts = load_pairs(config)
    annotators = annotator_noise(config)
    noise = (annotators.temperature, annotators.flip_rate) if annotators else None  # for the noise ceiling
    eval_prompts = load_eval_prompts(config)
    if config.sft_sample_pairs:  # before any model loads: bad input fails fast
        if annotators is None:
            raise UserError("key 'sft_sample_pairs': needs the annotators' noise; set annotator_bt_temperature "
                            "and annotator_flip_rate, or train on world data")
        distinct_prompts(train_pairs["prompt"], config.sft_sample_pairs)
    data = {"source": config.dataset_name, "fingerprint": data_fingerprint(config, tail=config.dataset_format),
            "train_pairs": len(train_pairs), "test_pairs": len(test_pairs), "eval_prompts": config.eval_prompts,
            **balance_counts}
    claim_run(run, lambda: run.start(config, parents=[parent_entry(PARENT, model_dir, parent)], data=data))
    config.output_dir = str(run.checkpoints_dir)  # after start: config.yaml keeps output_dir unset

    model, tokenizer = load_reward_model(model_dir, config.seed, config)
    context = getattr(model.config, "max_position_embeddings", None)
    if config.max_length is None or (context and config.max_length > context):
        raise UserError(f"key 'max_length' ({config.max_length}) must be set and at most the model's context "
                        f"({context} tokens, {model_dir})")
    policy = load_policy(model_dir)  # the SFT model: answers for the gold checks and, if asked, for pairs
    samples = sample_answers(policy, tokenizer, eval_prompts,
                             samples_per_prompt=config.eval_samples_per_prompt,
                             max_new_tokens=config.eval_max_new_tokens, temperature=config.eval_temperature,
                             batch_size=config.per_device_eval_batch_size,
                             seed=stream_seed(config.seed, "reward/eval-samples"))
    print(f"sampled {len(samples.answers)} SFT answers to {len(eval_prompts)} prompts"
          + (f" (mean gold {sum(samples.golds) / len(samples.golds):+.3f})" if samples.golds else
             " (not the world's: no gold checks)"))
    if config.sft_sample_pairs:
        train_pairs = add_sft_sample_pairs(config, train_pairs, policy, tokenizer, annotators, run)
    del policy  # not needed in training: free its memory before the trainer starts

    route_trainer_events(run)
    writer = SummaryWriter(str(run.tb_dir), filename_suffix=".reward_eval")

    final: dict = {}  # the last evaluation's margins, sample rewards and calibration table (see evaluate_reward_model)

    def gold_eval(eval_model, step: int) -> dict:
        return evaluate_reward_model(eval_model, tokenizer, test_pairs, samples=samples, annotators=noise,
                                     batch_size=config.per_device_eval_batch_size, max_length=config.max_length,
                                     writer=writer, step=step, details=final)

    callback = RewardGoldCheckCallback(gold_eval)
    trainer = train_reward_model(config, model, tokenizer, train_pairs, STAGE, callback=callback,
                                 eval_pairs=test_pairs.select_columns(["prompt", "chosen", "rejected"]),
                                 resume=run.resume_checkpoint(config.resume))
    eval_result = trainer.evaluate()  # the callback runs the gold checks on the final model too

    trained = quantization.merged(trainer.model, model_dir, num_labels=1)
    trained.config.pad_token_id = tokenizer.pad_token_id
    main_process = trainer.is_world_process_zero()
    member_scores = []
    for seed in config.ensemble_seeds:
        member = train_member(config, seed, model_dir, train_pairs, run, main_process)
        if main_process:
            member_scores.append({})
            evaluate_reward_model(member, tokenizer, test_pairs, samples=samples,
                                  batch_size=config.per_device_eval_batch_size, max_length=config.max_length,
                                  details=member_scores[-1])
        del member  # one member in memory at a time
    ensemble = {}
    if main_process:
        save_calibration(run, final.get("calibration"), callback.last or {})
        if member_scores:
            ensemble = ensemble_metrics([final] + member_scores, samples)
        for name, value in ensemble.items():
            if math.isfinite(value):
                writer.add_scalar(f"reward_eval/{name}", value, trainer.state.global_step)
    writer.close()
    metrics = dict(callback.last or {})  # the gold checks run on the main process only
    metrics.update(ensemble)
    metrics.update({
        "train_loss": (logged(trainer, "loss") or [None])[-1],
        "mean_train_loss": mean_train_loss(trainer),
        "eval_loss": eval_result.get("eval_loss"),
        "steps": trainer.state.global_step,
        "parameters": sum(p.numel() for p in trained.parameters()),
        "wall_time_s": round(time.time() - started, 2),
    })

    if trainer.is_world_process_zero():
        run.save_model(trained, tokenizer)
        run.finish(metrics)
        print(summary_line(metrics, run))
    return metrics


def add_sft_sample_pairs(config: RewardStageConfig, train_pairs, policy, tokenizer, annotators, run: RunDir):
    """The training pairs plus labelled pairs of the SFT model's own answers (reward/sft_pairs.py)."""
    import datasets

    columns, counts = label_sft_samples(
        policy, tokenizer, train_pairs["prompt"], pairs=config.sft_sample_pairs, annotators=annotators,
        max_new_tokens=config.sft_sample_max_new_tokens, temperature=config.eval_temperature,
        batch_size=PAIR_SAMPLING_BATCH, seed=stream_seed(config.seed, "reward/pair-samples"),
        cross_pairs=config.sft_sample_cross_pairs)
    if config.length_balanced_pairs:
        columns, balance = balance_lengths(columns, config.seed, "sft_sample_pairs")
        counts.update(balance)
    run.update(data={**(run.manifest() or {}).get("data", {}), **counts})
    cross = (f", and {counts['sft_sample_cross_pairs']} pairs across prompts ({counts['sft_sample_cross_ties']} ties)"
             if config.sft_sample_cross_pairs else "")
    print(f"labelled {counts['sft_sample_pairs']} pairs of SFT answers to {counts['sft_sample_prompts']} training "
          f"prompts ({counts['sft_sample_ties']} gold ties left out){cross}")
    # As token ids, so that cut-off answers stay open (see reward/sft_pairs.py); TRL takes them as they are.
    ids = to_token_ids(tokenizer, train_pairs.to_dict())
    extra = to_token_ids(tokenizer, columns)
    both = {name: ids[name] + extra[name] for name in ids}
    return datasets.Dataset.from_dict(both).shuffle(seed=config.seed)


def summary_line(metrics: dict, run: RunDir) -> str:
    parts = [f"wrote {run.model_dir}", f"accuracy {metrics['accuracy']:.3f}"]
    if "noise_ceiling" in metrics:
        interval = (f", 95% interval {metrics['accuracy_of_ceiling_low']:.1%}-{metrics['accuracy_of_ceiling_high']:.1%}"
                    if "accuracy_of_ceiling_low" in metrics else "")
        parts.append(f"({metrics['accuracy_of_ceiling']:.1%} of the noise ceiling {metrics['noise_ceiling']:.3f}{interval})")
    if "gold_accuracy" in metrics:
        parts.append(f"gold accuracy {metrics['gold_accuracy']:.3f}")
    if "gold_rank_correlation" in metrics:
        parts.append(f"rank correlation with gold {metrics['gold_rank_correlation']:.3f}")
    if "length_correlation" in metrics:
        parts.append(f"with length {metrics['length_correlation']:.3f}")
    if math.isfinite(metrics.get("ece", math.nan)):
        parts.append(f"ECE {metrics['ece']:.3f}")
    if math.isfinite(metrics.get("length_coefficient", math.nan)):
        parts.append(f"length coefficient {metrics['length_coefficient']:+.4f} "
                     f"(SE {metrics.get('length_coefficient_se', math.nan):.4f})")
    return "  ".join(parts)


CONFIG = RewardStageConfig  # the stage registry (recipes/core/stages.py) parses argv into this
