"""What every alignment method shares: its parents, its keys, its models and its evaluation.

Each method is a stage `align-<method>` whose run starts from the recipe's SFT model (the policy's
initialisation and the reference) and, for the methods that need one, the recipe's reward model
(the proxy). `AlignArguments` holds the keys they all have; a method's config is
`dataclass(RunArguments, AlignArguments, <its TRL config>)`, or without the TRL config where TRL
has none.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import base_model  # noqa: F401  (registers the architecture with the Auto classes)
from alignment.evaluate import Evaluator, Judge, with_sft
from recipes.core import quantization
from recipes.core.chat_format import load_chat_tokenizer, match_model
from recipes.core.config import LoraArguments
from recipes.core.data import fingerprint
from recipes.core.distributed import process_state
from recipes.core.errors import UserError
from recipes.core.model_dirs import resolve_model
from recipes.core.rundir import RunDir, atomic_write_text, parent_entry, require_parent, weights_hash
from recipes.core.stage_kit import load_eval_prompts
from recipes.core.stages import JUDGE_STAGE

MISSING_EOS_PENALTY = 1.0


@dataclasses.dataclass
class AlignArguments(LoraArguments):
    # Parents (default: the recipe's own runs).
    sft_model_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "The SFT model: policy initialisation and reference. "
                                "Default: <runs_root>/<recipe>/sft/model."})
    reward_model_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "The trained reward model (the proxy). "
                                "Default: <runs_root>/<recipe>/reward/model."})
    # Training data: preference pairs for DPO/KTO, prompts for the online methods.
    dataset_name: str = dataclasses.field(
        default="world:preferences?size=smoke",
        metadata={"help": "Training data: a local file or folder, a Hugging Face dataset name, or a world "
                  "source. Pairs for dpo/kto; prompts (any shape with prompts) for the online methods."})
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_format: str = dataclasses.field(default="auto", metadata={"help": "As in recipes.core.data."})
    # The one evaluation (alignment/evaluate.py), the same for every method.
    eval_prompts: str = dataclasses.field(
        default="world:eval?size=smoke", metadata={"help": "Held-out prompts every method is evaluated on."})
    eval_prompts_split: str = "test"
    judge_model_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "A judge: a reward model (any *ForSequenceClassification, by hub id or "
                                "folder, with its own tokenizer) trained apart from the proxy, scoring every "
                                "answer where gold cannot (prompts that are not the world's) or beside it. "
                                "`judge`: this recipe's judge stage (<runs_root>/<recipe>/judge/model). "
                                "Default: none."})
    # The one end-of-turn rule for every method that optimises or selects by the proxy (reward.evaluate.score).
    missing_eos_penalty: float | None = dataclasses.field(
        default=MISSING_EOS_PENALTY, metadata={"help": "Subtracted from the proxy's score of an answer that never "
                                               "ends its turn, in the `proxy` reward function the online methods "
                                               "train on and best-of-n chooses by (the offline methods' sampled "
                                               "pairs hold only answers that ended); null: none."})
    eval_num_prompts: int = 100
    eval_samples_per_prompt: int = dataclasses.field(
        default=1, metadata={"help": "Answers sampled from the policy per evaluation prompt: more answers narrow "
                             "the paired interval of the gain over SFT."})
    eval_sft_samples_per_prompt: int | None = dataclasses.field(
        default=None, metadata={"help": "Answers sampled from the SFT model per evaluation prompt for the baseline "
                                "(default: eval_samples_per_prompt). The baseline is sampled once per recipe and "
                                "shared by every method, so more answers here narrow every gain's interval at a "
                                "one-off cost."})
    eval_max_new_tokens: int = 64
    eval_temperature: float = 1.0
    eval_top_p: float = 1.0
    eval_generation_batch_size: int = 32
    eval_every: int = dataclasses.field(default=50, metadata={"help": "Evaluate every this many training steps."})
    eval_at_start: bool = dataclasses.field(
        default=True, metadata={"help": "Also evaluate the policy before training (the SFT model, sampled from the "
                                "policy's own stream): the training curves' first point. The final evaluation "
                                "always runs."})
    run_name: str | None = dataclasses.field(
        default=None, metadata={"help": "The run's directory under <runs_root>/<recipe>/. Default: align-<method>; "
                                "`rlhf-lab run --seeds` uses align-<method>-seed<k> for the extra seeds."})

    def check_alignment_keys(self) -> None:
        for key in ("lora_r", "eval_num_prompts", "eval_max_new_tokens", "eval_generation_batch_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"key '{key}' must be a positive integer, got {getattr(self, key)}")
        if self.eval_temperature <= 0:
            raise ValueError(f"key 'eval_temperature' must be positive, got {self.eval_temperature}")
        if self.run_name is not None and (not self.run_name.startswith("align-") or "/" in self.run_name):
            raise ValueError(f"key 'run_name' must start with 'align-' and name one directory, got '{self.run_name}'")


@dataclasses.dataclass
class Parents:
    sft_dir: Path
    sft_run: RunDir | None
    reward_dir: Path | None = None
    reward_run: RunDir | None = None
    judge_dir: Path | None = None
    judge_run: RunDir | None = None


def resolve_parents(config, *, needs_reward: bool) -> Parents:
    """The SFT (and reward) model directories, from the keys or from the recipe's finished runs."""
    quantization.check(config)
    if config.sft_model_name_or_path:
        parents = Parents(resolve_model(config.sft_model_name_or_path, "sft_model_name_or_path", "policy"), None)
    else:
        sft = require_parent(config, "sft")
        parents = Parents(sft.model_dir, sft)
    if needs_reward:
        if config.reward_model_name_or_path:
            parents.reward_dir = resolve_model(config.reward_model_name_or_path, "reward_model_name_or_path", "reward")
        else:
            parents.reward_run = require_parent(config, "reward")
            parents.reward_dir = parents.reward_run.model_dir
    judge = getattr(config, "judge_model_name_or_path", None)
    if judge == JUDGE_STAGE:
        parents.judge_run = require_parent(config, JUDGE_STAGE)
        parents.judge_dir = parents.judge_run.model_dir
    elif judge:
        parents.judge_dir = resolve_model(judge, "judge_model_name_or_path", "reward")
    if parents.reward_dir is not None:
        check_same_tokenizer(parents.reward_dir, parents.sft_dir)
    if parents.judge_dir is not None and parents.reward_dir is not None \
            and weights_hash(parents.judge_dir) == weights_hash(parents.reward_dir):
        raise UserError(f"key 'judge_model_name_or_path': {judge} is the proxy being optimised "
                        f"({parents.reward_dir}); a judge must be a reward model trained apart from it")
    return parents


def check_same_tokenizer(reward_dir: Path, sft_dir: Path) -> None:
    """The proxy reads the policy's token ids (PPO's value model, the online methods' rewards): a reward model
    with a tokenizer of its own can judge, not be the proxy."""
    from transformers import AutoTokenizer

    reward_vocab, sft_vocab = (AutoTokenizer.from_pretrained(str(d)).get_vocab() for d in (reward_dir, sft_dir))
    if reward_vocab != sft_vocab:
        raise UserError(f"key 'reward_model_name_or_path': {reward_dir} has another tokenizer than the SFT model "
                        f"({sft_dir}); the proxy must share it (train one with `rlhf-lab reward` from the SFT model), "
                        "a reward model of its own can be the judge (judge_model_name_or_path)")


def load_policy(path: Path, config=None):
    """A causal LM and its tokenizer from a saved directory; with a `config`, the policy a method trains (4-bit
    under `load_in_4bit`, recipes/core/quantization.py)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), **quantization.load_kwargs(config))
    tokenizer = load_chat_tokenizer(path, "sft_model_name_or_path")
    return match_model(model, tokenizer), tokenizer


def load_reward_model(path: Path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    model.eval().requires_grad_(False)
    return model


def load_judge(path: Path) -> Judge:
    """The judge on this process's device (it scores wherever the policy samples), with its own tokenizer."""
    from accelerate import PartialState

    tokenizer = load_chat_tokenizer(path, "judge_model_name_or_path")
    model = load_reward_model(path).to(PartialState().device)
    model.config.pad_token_id = tokenizer.pad_token_id
    return Judge(model, tokenizer)


def build_evaluator(config, sft_model, tokenizer, reward_model=None, parents: Parents | None = None):
    """The one evaluation; with `parents` (where the SFT weights came from) the SFT baseline's answers are
    sampled once per recipe and cached for every method, and the judge, if any, is loaded."""
    judge = load_judge(parents.judge_dir) if parents and parents.judge_dir else None
    return Evaluator(sft_model, tokenizer, load_eval_prompts(config), reward_model=reward_model, judge=judge,
                     sft_weights=weights_hash(parents.sft_dir) if parents is not None else None,
                     max_new_tokens=config.eval_max_new_tokens, temperature=config.eval_temperature,
                     top_p=config.eval_top_p, batch_size=config.eval_generation_batch_size, seed=config.seed,
                     samples_per_prompt=config.eval_samples_per_prompt,
                     baseline_samples_per_prompt=config.eval_sft_samples_per_prompt)


def run_name(config, method: str) -> str:
    return config.run_name or f"align-{method}"


def start_run(config, method: str, parents: Parents, data: dict | None = None) -> RunDir:
    """Claim runs/<recipe>/align-<method>/ (or run_name), recording the SFT parent and the reward model used."""
    run = RunDir.for_config(config, run_name(config, method))
    data = {"method": method, "source": config.dataset_name,
            "fingerprint": fingerprint(config.dataset_name, split=config.dataset_train_split,
                                       config=config.dataset_config),
            "eval_prompts": config.eval_prompts, **(data or {})}
    recorded = [parent_entry("sft", parents.sft_dir, parents.sft_run)]
    if parents.reward_dir is not None:
        recorded.append(parent_entry("reward", parents.reward_dir, parents.reward_run))
    if parents.judge_dir is not None:
        recorded.append(parent_entry(JUDGE_STAGE, parents.judge_dir, parents.judge_run))
    run.start(config, parents=recorded, data=data)
    return run


PER_PROMPT_FILE = "eval_per_prompt.json"


def record_per_prompt(run: RunDir, evaluator) -> None:
    """The final evaluation prompt by prompt (gold, the SFT baseline's gold, win score), which `compare` pairs
    across methods."""
    if evaluator.recorded is not None:
        atomic_write_text(run.path / PER_PROMPT_FILE, json.dumps(evaluator.recorded) + "\n")


def finish_run(run: RunDir, model, tokenizer, metrics: dict, started: float, evaluator) -> dict:
    """Save the aligned model (merged if LoRA), the final evaluation per prompt and the final metrics, and
    print the headline numbers (on the main process only, under `accelerate launch`)."""
    metrics = {**metrics, "wall_time_s": round(time.time() - started, 2)}
    if not process_state().is_main_process:
        return metrics
    run.save_model(quantization.merged(model), tokenizer)
    record_per_prompt(run, evaluator)
    run.finish(metrics)
    print(f"wrote {run.model_dir}  {with_sft(metrics)}")
    return metrics
