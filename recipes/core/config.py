"""One config system for every stage: a YAML file per stage, overridden by `--key value` flags.

A stage describes its keys as one dataclass (names as in the TRL/transformers config it feeds, where
one exists). `parse_config` reads `--config FILE`, feeds the YAML values through the same argparse
parser as the command line (so both are type-checked the same way, and flags win because they come
last), and rejects unknown keys by name. `to_yaml` writes back the fully resolved config, which can
be run again with `--config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import math
import os
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml

from recipes.core.errors import UserError

T = TypeVar("T")

RUNS_ROOT_ENV = "RLHF_LAB_RUNS"


@dataclasses.dataclass
class RunArguments:
    """Keys every stage has: where its run directory lives and how to treat an existing one."""

    recipe: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Recipe name; the run goes to <runs_root>/<recipe>/<stage>. "
                  "Default: the name of the folder holding --config."},
    )
    runs_root: str | None = dataclasses.field(
        default=None,
        metadata={"help": f"Root of all run directories. Default: ${RUNS_ROOT_ENV}, else ./runs."},
    )
    resume: bool = dataclasses.field(
        default=False, metadata={"help": "Continue an interrupted run from its last checkpoint."}
    )
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "Replace a finished run instead of refusing to."}
    )

    def resolved_runs_root(self) -> Path:
        return Path(self.runs_root or os.environ.get(RUNS_ROOT_ENV) or "runs")


CHECKPOINTS_DIR = "<run>/checkpoints"  # what a trainer stage's output_dir always is


@dataclasses.dataclass
class TrainerDefaults:
    """transformers/TRL keys whose defaults change in every trainer-based stage (a CPU, the run
    directory, TensorBoard). List it before the TRL config among a stage config's bases, so these
    defaults win, and call `apply_trainer_defaults(stage)` first in the stage's __post_init__."""

    output_dir: str | None = dataclasses.field(
        default=CHECKPOINTS_DIR,
        metadata={"help": "Fixed: the run directory's checkpoints/. Choose --runs_root and --recipe instead."})
    bf16: bool | None = dataclasses.field(
        default=None,
        metadata={"help": "bf16 mixed precision. Default: on where a CUDA GPU supports it, else off; "
                  "true on a CPU-only machine autocasts on the CPU."})
    activation_checkpointing: bool | None = dataclasses.field(
        default=None,
        metadata={"help": "Recompute activations in backward: saves memory, costs 15-40%% on CPU. Default: off."})
    gradient_checkpointing: bool | None = dataclasses.field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."})
    report_to: None | str | list[str] = dataclasses.field(
        default_factory=lambda: ["tensorboard"], metadata={"help": "Trackers; the run's tb/ gets the events."})
    save_total_limit: int | None = 2
    seed: int = 0
    # transformers' default follows the logging verbosity, which would make the resolved config (and so
    # whether a --resume may continue a run) depend on it; the lab draws its own step bar and log lines.
    disable_tqdm: bool | None = dataclasses.field(
        default=True, metadata={"help": "The trainer's own progress bar and raw log dicts: off (the lab shows a "
                                "step bar and one line per logging step)."})

    def apply_trainer_defaults(self, stage: str) -> None:
        if self.output_dir not in (None, CHECKPOINTS_DIR):
            raise ValueError(f"key 'output_dir' is fixed to the run directory's checkpoints/ "
                             f"(<runs_root>/<recipe>/{stage}/checkpoints); choose --runs_root and --recipe instead")
        self.output_dir = CHECKPOINTS_DIR
        resolve_trainer_precision(self)
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = False


def resolve_trainer_precision(config) -> None:
    """Precision defaults for a TrainingArguments-based stage config, before its __post_init__.

    `bf16: null` means on where a CUDA GPU supports it, else off (TRL's own default, on, fails on a
    CPU-only machine). `bf16: true` without CUDA autocasts on the CPU, which transformers allows
    only with `use_cpu`; it pays on CPUs with AMX, elsewhere fp32 is faster.
    """
    import torch

    if config.bf16 is None:
        config.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not config.fp16
    if config.bf16 and not torch.cuda.is_available():
        config.use_cpu = True


@dataclasses.dataclass
class LoraArguments:
    """LoRA keys (names as in TRL's ModelConfig), for every stage that trains weights through a trainer.

    With `use_peft` the stage trains adapters and saves the merged model, so model/ loads like any other.
    """

    use_peft: bool = dataclasses.field(
        default=False, metadata={"help": "Train LoRA adapters instead of every weight; model/ holds the merged model."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Module names to adapt. Default: the stage's choice (see its docs)."})
    load_in_4bit: bool = dataclasses.field(
        default=False, metadata={"help": "QLoRA: load the trained model's frozen weights in 4 bits (bitsandbytes) "
                                 "under the LoRA adapters; model/ is still saved merged at full precision. Needs "
                                 "use_peft."})
    bnb_4bit_quant_type: str = dataclasses.field(
        default="nf4", metadata={"help": "4-bit data type: nf4 or fp4.", "choices": ["nf4", "fp4"]})
    use_bnb_nested_quant: bool = dataclasses.field(
        default=False, metadata={"help": "Quantize the quantization constants too (double quantization)."})


# Keys that say how to run, not what to run: left out of the saved config.yaml.
INVOCATION_KEYS = ("runs_root", "resume", "overwrite")


class CommandParser(argparse.ArgumentParser):
    """argparse for the commands that are not a stage's config (run, compare, sample, chat): a mistake is one line."""

    def error(self, message: str):
        raise UserError(f"command line: {message}")


def _parser_class() -> type:
    """HfArgumentParser whose mistakes are one line; transformers is imported here, not with this module, so
    that `rlhf-lab --help` and the commands that parse no stage config start at once."""
    from transformers import HfArgumentParser

    class _Parser(HfArgumentParser):
        def error(self, message: str):  # argparse would print usage and exit; we want one line
            raise UserError(message)

    return _Parser


def _yaml_to_argv(values: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Turn YAML values into flags (type-checked by argparse) plus defaults for what flags can't say."""
    argv, defaults = [], {}
    for key, value in values.items():
        if value is None or isinstance(value, dict):
            defaults[key] = value
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)] if value else []
            if not value:
                defaults[key] = []
        else:
            argv += [f"--{key}", str(value)]
    return argv, defaults


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys to values, got {type(values).__name__}")
    return values


def _check_known(keys, known: list[str], where: str, command: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (see `rlhf-lab {command} --help`)"
            raise UserError(f"{where}: unknown key '{key}'{hint}")


def _config_path(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 == len(argv):
                raise UserError("command line: --config needs a YAML file path")
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


# Sizes that mean nothing at zero or below, in whichever stage has them (transformers and TRL check few).
POSITIVE_KEYS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "num_train_epochs", "learning_rate", "max_length", "max_prompt_length", "max_completion_length",
                 "num_generations", "steps_per_generation", "response_length", "num_mini_batches", "num_ppo_epochs",
                 "logging_steps", "eval_samples_per_prompt", "eval_sft_samples_per_prompt",
                 "eval_generation_batch_size",
                 # sampling divides the logits by the temperature: 0 is a division by zero (greedy is do_sample false)
                 "temperature", "eval_temperature", "sft_sample_temperature")
NON_NEGATIVE_KEYS = ("warmup_steps", "save_total_limit", "weight_decay", "max_grad_norm", "beta", "kl_coef", "top_k")
PROBABILITY_KEYS = ("top_p", "eval_top_p")  # nucleus mass: (0, 1], where 0 would keep no token at all
SEED_KEYS = ("seed", "data_seed")  # numpy takes seeds in [0, 2**32)
# No count, size or step number of any stage comes near this; one that does is a typo (or an overflow in
# torch's and numpy's index arithmetic), not a run anyone can wait for.
LARGEST_INTEGER = 2**31 - 1


def check_sizes(values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            for item in value:
                check_number(key, item)
        else:
            check_number(key, value)


def check_number(key: str, value: Any) -> None:
    """A ValueError naming `key` when `value` is a number no run could mean."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):
        raise ValueError(f"key '{key}' must be a finite number, got {value}")
    if key in SEED_KEYS:
        if not 0 <= value < 2**32:
            raise ValueError(f"key '{key}' must be in [0, 2**32), got {value}")
    elif isinstance(value, int) and abs(value) > LARGEST_INTEGER:
        raise ValueError(f"key '{key}' is absurdly large ({value}); expected at most {LARGEST_INTEGER}")
    if key in POSITIVE_KEYS and value <= 0:
        hint = " (for greedy decoding set do_sample false)" if "temperature" in key else ""
        raise ValueError(f"key '{key}' must be positive, got {value}{hint}")
    if key in NON_NEGATIVE_KEYS and value < 0:
        raise ValueError(f"key '{key}' must be zero or positive, got {value}")
    if key in PROBABILITY_KEYS and not 0 < value <= 1:
        raise ValueError(f"key '{key}' must be in (0, 1], got {value}")


def build_parser(config_class: type, command: str, description: str = ""):
    parser = _parser_class()(config_class, prog=f"rlhf-lab {command}", description=description, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML file of this stage's keys; flags override it.")
    return parser


def parse_config(config_class: type[T], argv: list[str], command: str, description: str = "") -> T:
    """Parse `--config FILE` plus flag overrides into one `config_class` instance."""
    parser = build_parser(config_class, command, description)
    known = [f.name for f in dataclasses.fields(config_class) if f.init]

    if "-h" in argv or "--help" in argv:
        parser.parse_args(["--help"])  # prints every key with its help, then exits 0
    config_path = _config_path(argv)
    yaml_argv: list[str] = []
    if config_path is not None:
        values = _read_yaml(config_path)
        _check_known(values, known, str(config_path), command)
        yaml_argv, defaults = _yaml_to_argv(values)
        parser.set_defaults(**defaults)

    # `--key null` on the command line means None, as `key: null` does in YAML, for keys that allow it.
    nullable = {name for name, annotation in _annotations(config_class).items() if name in known and _allows_none(annotation)}
    nulled = _null_flags(argv, nullable)
    if nulled:
        yaml_argv, argv = _drop_flags(yaml_argv, nulled), _drop_flags(argv, nulled)
        parser.set_defaults(**dict.fromkeys(nulled))
    try:
        namespace, unknown = parser.parse_known_args(yaml_argv + argv)
    except UserError as err:
        where = f"{config_path} or the command line" if config_path else "command line"
        raise UserError(f"{where}: {err}") from None
    if unknown:
        flags = [u for u in unknown if u.startswith("--")] or unknown
        _check_known([flags[0].lstrip("-").split("=")[0].replace("-", "_")], known, "command line", command)
        raise UserError(f"command line: unexpected argument '{unknown[0]}'")

    values = {k: v for k, v in vars(namespace).items() if k in known}
    try:
        check_sizes(values)
        config = config_class(**values)
    except (ValueError, TypeError) as err:
        raise UserError(f"{config_path or 'command line'}: {err}") from None
    if getattr(config, "recipe", "unset") is None:
        config.recipe = config_path.resolve().parent.name if config_path else "default"
    return config


NULL_WORDS = ("null", "Null", "NULL", "~")  # YAML's; not "none", which report_to reads as a value


def _annotations(config_class: type) -> dict[str, Any]:
    """Each field's annotation as written: HfArgumentParser rewrites `field.type` (dropping None) in place."""
    annotations: dict[str, Any] = {}
    for klass in reversed(config_class.__mro__):
        annotations.update(klass.__dict__.get("__annotations__", {}))
    return annotations


def _allows_none(annotation: Any) -> bool:
    # A string under `from __future__ import annotations`, else a type such as `float | None`.
    if isinstance(annotation, str):
        return "None" in annotation or "Optional" in annotation
    return type(None) in get_args(annotation)


def _null_flags(argv: list[str], nullable: set[str]) -> set[str]:
    """Keys given as `--key null` (or `--key=null`) on the command line that may hold None."""
    keys = set()
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if name in nullable and value in NULL_WORDS:
            keys.add(name)
    return keys


def _drop_flags(argv: list[str], keys: set[str]) -> list[str]:
    """argv without the flags of `keys` and the values that follow them."""
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg[2:].partition("=")[0] in keys
            if skipping and "=" in arg:
                continue
        if not skipping:
            out.append(arg)
    return out


def to_plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. TrainingArguments' AcceleratorConfig
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def config_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data: every key that decides what runs."""
    return {
        f.name: to_plain(getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.init and f.name not in INVOCATION_KEYS
    }


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(config_dict(config), sort_keys=False, allow_unicode=True)
