"""The pretraining stage: `rlhf-lab pretrain --config recipes/<name>/pretrain.yaml`.

Trains a byte-level BPE tokenizer on the corpus, tokenizes the corpus once into a cache on disk,
then trains the GPT from scratch with AdamW, warmup + cosine decay, gradient accumulation and
clipping, optional bf16 autocast, periodic validation, checkpoints and exact resume. Built on
accelerate, so `accelerate launch` runs the same loop data-parallel.

Batches are drawn by a generator seeded from (seed, step, micro-batch, process), not from a stateful
iterator: a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.tensorboard import SummaryWriter
from transformers import get_scheduler

from base_model import GPTConfig, GPTForCausalLM, load_tokenizer, train_tokenizer
from base_model.flops import flops_per_token, measure_matmul_peak
from recipes.core.config import RunArguments
from recipes.core.data import load_text
from recipes.core.errors import UserError
from recipes.core.finite_loss import non_finite_error
from recipes.core.kill_switch import kill_if_asked
from recipes.core.progress import step_bar
from recipes.core.rundir import RunDir, atomic_write_text, check_checkpoint, complete_checkpoints, prune_checkpoints
from recipes.core.stage_kit import data_fingerprint, hold_out_last
from recipes.core.tracking import markdown_table

STAGE = "pretrain"


@dataclasses.dataclass
class PretrainConfig(RunArguments):
    # Data (names as in TRL's ScriptArguments / SFTConfig).
    dataset_name: str = dataclasses.field(
        default="world:corpus?size=smoke",
        metadata={"help": "Corpus: a .txt/.jsonl/.json/.parquet file or folder, a Hugging Face dataset "
                  "name, or a world source such as world:corpus?size=default&seed=0."})
    dataset_config: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset config name."})
    dataset_text_field: str = dataclasses.field(default="text", metadata={"help": "Column holding the text."})
    dataset_train_split: str = "train"
    dataset_test_split: str | None = dataclasses.field(
        default="validation",
        metadata={"help": "Validation split; null holds out the last twentieth of the training documents instead."})
    # Tokenizer.
    tokenizer_name_or_path: str | None = dataclasses.field(
        default=None, metadata={"help": "Reuse this tokenizer instead of training one on the corpus."})
    vocab_size: int = 2048
    tokenizer_train_max_chars: int = dataclasses.field(
        default=20_000_000, metadata={"help": "Train the tokenizer on at most this many characters."})
    # Model (names as in transformers' LlamaConfig).
    hidden_size: int = 256
    intermediate_size: int | None = dataclasses.field(
        default=None, metadata={"help": "SwiGLU width; default 8/3 of hidden_size, rounded up to 32."})
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = dataclasses.field(
        default=None, metadata={"help": "Fewer than num_attention_heads for grouped-query attention."})
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    # Optimisation (names as in transformers' TrainingArguments).
    max_length: int | None = dataclasses.field(
        default=None, metadata={"help": "Tokens per training sequence; default max_position_embeddings."})
    max_steps: int = 1000
    per_device_train_batch_size: int = 16
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler_type: str = dataclasses.field(
        default="cosine_with_min_lr", metadata={"help": "Any transformers scheduler name."})
    min_lr_rate: float = dataclasses.field(
        default=0.1, metadata={"help": "Final learning rate as a fraction of the peak (cosine_with_min_lr)."})
    warmup_steps: int = 50
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    bf16: bool = dataclasses.field(default=False, metadata={"help": "bf16 autocast for forward and backward."})
    seed: int = 42
    # Evaluation, logging and checkpoints.
    logging_steps: int = 10
    eval_steps: int = 100
    eval_max_batches: int = dataclasses.field(
        default=20, metadata={"help": "Validation batches per evaluation (fixed windows, same every time)."})
    save_steps: int = 200
    save_total_limit: int = 2
    sample_prompts: list[str] = dataclasses.field(
        default_factory=lambda: ["Once upon a time", "Tom asked Mia:"],
        metadata={"help": "Prompts sampled at each evaluation and shown in TensorBoard."})
    sample_max_new_tokens: int = 48

    def __post_init__(self):
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_steps",
                    "max_position_embeddings", "per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps", "logging_steps", "eval_steps", "save_steps", "eval_max_batches"):
            if getattr(self, key) <= 0:
                raise ValueError(f"key '{key}' must be a positive integer, got {getattr(self, key)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"key 'hidden_size' ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        kv = self.num_key_value_heads or self.num_attention_heads
        if self.num_attention_heads % kv:
            raise ValueError(f"key 'num_key_value_heads' ({kv}) must divide num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.intermediate_size is None:
            self.intermediate_size = -(-int(8 * self.hidden_size / 3) // 32) * 32
        if self.max_length is None:
            self.max_length = self.max_position_embeddings
        if self.max_length > self.max_position_embeddings:
            raise ValueError(f"key 'max_length' ({self.max_length}) exceeds max_position_embeddings "
                             f"({self.max_position_embeddings})")


# ----------------------------------------------------------------------------------------------
# Data: documents -> tokenizer -> one token stream per split, cached on disk


def load_documents(config: PretrainConfig) -> tuple[list[str], list[str]]:
    kwargs = dict(text_field=config.dataset_text_field, config=config.dataset_config)
    train = load_text(config.dataset_name, split=config.dataset_train_split, **kwargs)["text"]
    if config.dataset_test_split:
        val = load_text(config.dataset_name, split=config.dataset_test_split, **kwargs)["text"]
    else:
        train, val = hold_out_last(train)
    train = [t for t in train if t and t.strip()]
    val = [t for t in val if t and t.strip()]
    if not train or not val:
        split = config.dataset_train_split if not train else (config.dataset_test_split or "held-out 5%")
        raise UserError(f"{config.dataset_name}: split '{split}' holds no non-empty text in "
                        f"column '{config.dataset_text_field}'")
    return train, val


def build_tokenizer(config: PretrainConfig, documents: list[str]):
    if config.tokenizer_name_or_path:
        if not Path(config.tokenizer_name_or_path).exists():
            raise UserError(f"key 'tokenizer_name_or_path': {config.tokenizer_name_or_path} does not exist")
        return load_tokenizer(config.tokenizer_name_or_path)

    def limited(docs, budget=config.tokenizer_train_max_chars):
        for doc in docs:
            if budget <= 0:
                return
            budget -= len(doc)
            yield doc

    return train_tokenizer(limited(documents), vocab_size=config.vocab_size)


def tokenize_to_cache(documents: list[str], tokenizer, path: Path) -> np.ndarray:
    """One stream of token ids, each document after a begin-of-text token; written once, then reused."""
    if not path.exists():
        dtype = np.uint16 if len(tokenizer) < 2**16 else np.int32
        ids = tokenizer([tokenizer.bos_token + doc for doc in documents], add_special_tokens=False)["input_ids"]
        stream = np.fromiter((t for row in ids for t in row), dtype=dtype)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, stream)
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def sample_batch(stream: np.ndarray, batch_size: int, length: int, seed: int) -> torch.Tensor:
    """`batch_size` random windows of `length` tokens, chosen by `seed` alone."""
    if len(stream) <= length:
        raise UserError(f"the corpus split has {len(stream)} tokens, fewer than one sequence of "
                        f"max_length={length}; use more data or a smaller max_length")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - length, (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([stream[s:s + length] for s in starts]).astype(np.int64))


def step_seed(seed: int, step: int, micro: int, process: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{step}/{micro}/{process}".encode(), digest_size=8).digest(), "little")


# ----------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(accelerator, run: RunDir, state: dict, keep: int) -> Path:
    final = run.checkpoints_dir / f"step-{state['step']}"
    tmp = run.checkpoints_dir / f".tmp-step-{state['step']}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(run.checkpoints_dir, keep)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------------------------
# The stage


def build_model(config: PretrainConfig, tokenizer):
    model_config = GPTConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads or config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
        initializer_range=config.initializer_range, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(config.seed)
    model = GPTForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@torch.no_grad()
def evaluate(model, accelerator, stream: np.ndarray, config: PretrainConfig) -> float:
    model.eval()
    losses = []
    for i in range(config.eval_max_batches):
        if i % accelerator.num_processes != accelerator.process_index:
            continue
        batch = sample_batch(stream, config.per_device_eval_batch_size, config.max_length,
                             step_seed(config.seed, -1, i, 0)).to(accelerator.device)
        with accelerator.autocast():
            losses.append(model(input_ids=batch, labels=batch).loss.float())
    local = torch.stack(losses).sum() if losses else torch.zeros((), device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum")
    model.train()
    return total.item() / config.eval_max_batches


@torch.no_grad()
def sample_texts(model, tokenizer, config: PretrainConfig) -> list[tuple[str, str]]:
    """Sample each fixed prompt (seeded, without disturbing the training RNG)."""
    model.eval()
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for prompt in config.sample_prompts:
            ids = tokenizer(tokenizer.bos_token + prompt, add_special_tokens=False, return_tensors="pt")
            ids = {k: v.to(model.device) for k, v in ids.items()}
            out = model.generate(**ids, max_new_tokens=config.sample_max_new_tokens, do_sample=True,
                                 temperature=0.8, top_k=50)
            rows.append((prompt, tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
    model.train()
    return rows


def prepare_data(config: PretrainConfig, run: RunDir, accelerator) -> tuple:
    """Claim the run, then (tokenizer, train token stream, validation token stream). The tokenizer is trained once
    per run and kept beside the checkpoints, so a resume reuses it; the token streams are cached by content."""
    train_docs, val_docs = load_documents(config)
    fingerprint = data_fingerprint(config, tail=config.dataset_text_field)
    if accelerator.is_main_process:
        run.start(config, data={"source": config.dataset_name, "fingerprint": fingerprint,
                                "train_documents": len(train_docs), "validation_documents": len(val_docs)})
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        run.follow()

    tokenizer_dir = run.checkpoints_dir / "tokenizer"
    with accelerator.main_process_first():
        if not (tokenizer_dir / "tokenizer.json").is_file():
            if accelerator.is_main_process:
                build_tokenizer(config, train_docs).save_pretrained(str(tokenizer_dir))

        tokenizer = load_tokenizer(str(tokenizer_dir))
        tokenizer_hash = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()[:12]
        cache = run.runs_root / ".cache" / "tokens" / f"{fingerprint[:16]}-{tokenizer_hash}"
        cache.mkdir(parents=True, exist_ok=True)
        train_stream = tokenize_to_cache(train_docs, tokenizer, cache / "train.npy")
        val_stream = tokenize_to_cache(val_docs, tokenizer, cache / "validation.npy")
    return tokenizer, train_stream, val_stream


def build_optimizer(config: PretrainConfig, model, accelerator) -> tuple:
    """(prepared model, prepared AdamW without decay on norms, scheduler registered for checkpointing)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    scheduler = get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps,
        num_training_steps=config.max_steps,
        scheduler_specific_kwargs={"min_lr_rate": config.min_lr_rate}
        if config.lr_scheduler_type == "cosine_with_min_lr" else None)
    # The scheduler is not prepared: accelerate would step it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler


def resume_from_checkpoint(config: PretrainConfig, run: RunDir, accelerator) -> tuple[int, float | None]:
    """(steps done, the initial evaluation loss) of the last complete checkpoint under --resume, else (0, None)."""
    if not config.resume:
        return 0, None
    checkpoints = complete_checkpoints(run.checkpoints_dir)
    if not checkpoints:
        accelerator.print(f"no checkpoint in {run.checkpoints_dir}; starting from step 0")
        return 0, None
    check_checkpoint(checkpoints[-1])
    accelerator.load_state(str(checkpoints[-1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    accelerator.print(f"resumed from {checkpoints[-1]}")
    return state["step"], state["initial_eval_loss"]


def train_step(model, optimizer, scheduler, accelerator, stream: np.ndarray, config: PretrainConfig, step: int,
               run: RunDir) -> tuple[float, float]:
    """One optimizer step over gradient_accumulation_steps micro-batches: (mean loss, gradient norm). A non-finite
    loss or gradient stops before the update, so the weights and the checkpoints stay finite."""
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro in range(config.gradient_accumulation_steps):
        batch = sample_batch(stream, config.per_device_train_batch_size, config.max_length,
                             step_seed(config.seed, step, micro, accelerator.process_index)).to(accelerator.device)
        last = micro == config.gradient_accumulation_steps - 1
        with (contextlib.nullcontext() if last else accelerator.no_sync(model)), accelerator.autocast():
            loss = model(input_ids=batch, labels=batch).loss / config.gradient_accumulation_steps
            accelerator.backward(loss)
        loss_sum += loss.detach().float()
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm))
    loss_value = accelerator.reduce(loss_sum, reduction="mean").item()
    for name, value in (("training loss", loss_value), ("gradient norm", grad_norm)):
        if not math.isfinite(value):
            raise non_finite_error(name, value, step + 1, run.checkpoints_dir)
    kill_if_asked(step + 1)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm


class ThroughputLog:
    """Mean training loss, tokens per second and MFU over each window of logging_steps steps, to TensorBoard
    and the console."""

    def __init__(self, config: PretrainConfig, accelerator, writer, n_params: int):
        self.config, self.accelerator, self.writer = config, accelerator, writer
        self.peak = measure_matmul_peak(torch.bfloat16 if config.bf16 else torch.float32, device=accelerator.device)
        self.flops_token = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, config.max_length)
        self.tokens_per_step = (config.per_device_train_batch_size * config.max_length
                                * config.gradient_accumulation_steps * accelerator.num_processes)
        self.loss, self.steps, self.start = 0.0, 0, time.perf_counter()
        self.train_loss = float("nan")

    def begin(self) -> None:
        """Start the first window now (not counting the evaluation before training)."""
        self.start = time.perf_counter()

    def add(self, step: int, loss: float, grad_norm: float, learning_rate: float) -> None:
        self.loss, self.steps = self.loss + loss, self.steps + 1
        if step % self.config.logging_steps and step != self.config.max_steps:
            return
        tokens_per_second = self.steps * self.tokens_per_step / (time.perf_counter() - self.start)
        mfu = tokens_per_second * self.flops_token / (self.peak * self.accelerator.num_processes)
        self.train_loss = self.loss / self.steps
        if self.writer:
            for key, value in (("loss", self.train_loss), ("learning_rate", learning_rate), ("grad_norm", grad_norm),
                               ("tokens_per_second", tokens_per_second), ("mfu", mfu)):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.accelerator.print(f"step {step:>6}/{self.config.max_steps}  loss {self.train_loss:.4f}  "
                               f"lr {learning_rate:.2e}  {tokens_per_second:,.0f} tok/s  mfu {mfu:.1%}")
        self.loss, self.steps, self.start = 0.0, 0, time.perf_counter()


def main(config: PretrainConfig) -> dict:
    # Setup. cpu=True on a machine without CUDA lets `accelerate launch --multi_gpu` or torchrun run gloo processes.
    accelerator = Accelerator(mixed_precision="bf16" if config.bf16 else "no", cpu=not torch.cuda.is_available())
    run = RunDir.for_config(config, STAGE)
    started = time.time()
    tokenizer, train_stream, val_stream = prepare_data(config, run, accelerator)
    model = build_model(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    model, optimizer, scheduler = build_optimizer(config, model, accelerator)
    step, initial_eval_loss = resume_from_checkpoint(config, run, accelerator)
    # purge_step drops events a killed run wrote after its last checkpoint.
    writer = SummaryWriter(str(run.tb_dir), purge_step=step if step else None) if accelerator.is_main_process \
        else None
    log = ThroughputLog(config, accelerator, writer, n_params)
    unwrapped = accelerator.unwrap_model(model)

    def log_eval(at_step: int) -> float:
        loss = evaluate(model, accelerator, val_stream, config)
        if writer:
            writer.add_scalar("eval/loss", loss, at_step)
            writer.add_text("samples", markdown_table(["prompt", "sample"], sample_texts(unwrapped, tokenizer, config)),
                            at_step)
        accelerator.print(f"step {at_step:>6}/{config.max_steps}  eval loss {loss:.4f}")
        return loss

    # Train.
    if initial_eval_loss is None:
        initial_eval_loss = log_eval(0)
    eval_loss = initial_eval_loss
    model.train()
    bar = step_bar(config.max_steps, STAGE, initial=step) if accelerator.is_main_process else None
    log.begin()
    while step < config.max_steps:
        loss, grad_norm = train_step(model, optimizer, scheduler, accelerator, train_stream, config, step, run)
        step += 1
        if bar is not None:
            bar.update()
        log.add(step, loss, grad_norm, scheduler.get_last_lr()[0])
        if step % config.eval_steps == 0 or step == config.max_steps:
            eval_loss = log_eval(step)
        if step % config.save_steps == 0 and step < config.max_steps:
            path = save_checkpoint(accelerator, run, {"step": step, "initial_eval_loss": initial_eval_loss},
                                   config.save_total_limit)
            accelerator.print(f"saved checkpoint {path}")
    if bar is not None:
        bar.close()

    # Save.
    metrics = {"initial_eval_loss": initial_eval_loss, "eval_loss": eval_loss, "train_loss": log.train_loss,
               "steps": step, "tokens": step * log.tokens_per_step, "parameters": n_params,
               "wall_time_s": round(time.time() - started, 2)}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        writer.close()
        run.save_model(unwrapped, tokenizer)
        run.finish(metrics)
        accelerator.print(f"wrote {run.model_dir}  eval loss {initial_eval_loss:.3f} -> {eval_loss:.3f}")
    accelerator.end_training()
    return metrics


CONFIG = PretrainConfig  # the stage registry (recipes/core/stages.py) parses argv into this
