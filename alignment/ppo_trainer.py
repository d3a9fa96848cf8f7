"""PPO's rollout/update loop on TRL 1.16's trainer base (TRL removed its PPOTrainer in 1.13).

`PPOTrainer` is a `trl.trainer.base_trainer._BaseTrainer` (so a transformers `Trainer`: its
accelerator, optimizer and linear learning-rate schedule, state and callbacks) whose `train` is
the loop of InstructGPT-style PPO. Each rollout:

1. takes `batch_size` prompts (shuffled each pass over the data) and samples one answer each with
   `recipes.core.generation.generate_answers` at `temperature`, top-k and top-p off, at most
   `response_length` tokens, cut after the first end of turn; each block of local_rollout_forward_batch_size
   answers of the rollout is drawn from a stream of its own (`recipes.core.seeds.stream_seed`);
2. computes, in one left-padded prompt + right-padded answer layout, the policy's and the frozen
   reference's log-probabilities of the answer tokens at the sampling temperature, and the value
   model's value before each answer token, with `PPOTrainer.forward_answers`: the one forward pass
   the update uses too, in the training precision (the accelerator's autocast under bf16/fp16), so
   the update's first minibatch sees a ratio of 1 (logged: `first_minibatch_ratio_deviation`; exactly 1
   on CPU, measured; on a GPU, kernels chosen per batch size may leave rounding, since the rollout runs
   in chunks of local_rollout_forward_batch_size and the update in micro-batches);
3. scores each answer with the stage's rewards (`reward_funcs`, alignment/rewards.py; by default the reward
   model exactly as `reward.score` does, minus `missing_eos_penalty` for an answer that never ended its turn);
4. rewards per token = -kl_coef * KL estimate on every answer token, + the score on the last one;
   GAE(gamma, lam) gives advantages and returns (returns from the unwhitened advantages), then the
   advantages are whitened over the real tokens of the whole rollout;
5. `num_ppo_epochs` epochs, each a fresh shuffle into `num_mini_batches` minibatches (each of
   `gradient_accumulation_steps` micro-batches of `per_device_train_batch_size`): clipped policy loss
   + vf_coef * clipped value loss, gradient clipping to `max_grad_norm`, one optimizer step per
   minibatch; then the KL controller (fixed or adaptive) and the learning rate are updated.

Logged per rollout to TensorBoard under `ppo/`; the evaluation (alignment/evaluate.py) runs before
the first rollout, every `eval_every` rollouts and after the last, under `gold_eval/`.
Checkpoints (every `save_steps` rollouts) hold the policy and value weights, the optimizer, the
schedule, the KL controller, the evaluation history and the RNG states; `resume` continues from the
last one.

Under `accelerate launch --num_processes W` a rollout is W x `batch_size` answers: process r takes the r-th
share of the rollout's prompts, samples and scores its own answers and takes their forward passes;
advantage (and reward) whitening, the logged statistics and the KL controller use the whole rollout's (sums
over the processes); a non-finite loss on any process stops every process;
the policy and value model are wrapped in DistributedDataParallel, so each optimizer step averages every
process's gradients. When `batch_size` is a multiple of local_rollout_forward_batch_size, the answers are the
ones a single process with W times the batch draws (the blocks' streams do not depend on who samples them).
The main process evaluates, logs and saves; the others wait for it.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.trainer_callback import PrinterCallback
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import disable_dropout_in_model, selective_log_softmax_and_entropy

from alignment import ppo_core as core
from alignment.evaluate import headline, write
from recipes.core.errors import UserError
from recipes.core.finite_loss import non_finite_error
from recipes.core.generation import as_messages, generate_answers, render_prompts
from recipes.core.kill_switch import kill_if_asked
from recipes.core.rundir import check_checkpoint, complete_checkpoints, load_checkpoint_state, prune_checkpoints
from recipes.core.seeds import stream_seed


def token_values(value_model, input_ids, attention_mask) -> torch.Tensor:
    """The value model's score head at every position: (B, T). Initialised from the reward model, the
    value at the last real token of a sequence is the reward model's score of it."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return value_model.score(hidden).squeeze(-1).float()


def answer_logprobs(logits, responses, P: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and entropies (B, R) of the answer tokens at `temperature`, in fp32, from the logits
    of a forward pass over `layout`'s rows (answer token t's logits at position P + t - 1). The entropy
    carries no gradient."""
    return selective_log_softmax_and_entropy(logits[:, P - 1:-1].float(), responses, entropy_requires_grad=False,
                                             temperature=temperature)


class PolicyAndValue(nn.Module):
    """The two trained models under one module, so one optimizer updates both."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model
        self.config = policy.config  # what Trainer reads of a model

    def forward(self, input_ids, attention_mask):
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits, token_values(self.value_model, input_ids, attention_mask)


def layout(prompt_ids: list[list[int]], response_ids: list[list[int]], pad: int):
    """Left-padded prompts then right-padded answers: (input_ids, attention_mask, responses, mask, P).

    The answer token t of every row sits at position P + t, its logits at P + t - 1.
    """
    P = max(map(len, prompt_ids))
    R = max(1, max(map(len, response_ids)))
    rows, masks, responses, response_mask = [], [], [], []
    for p, r in zip(prompt_ids, response_ids):
        rows.append([pad] * (P - len(p)) + p + r + [pad] * (R - len(r)))
        masks.append([0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (R - len(r)))
        responses.append(r + [pad] * (R - len(r)))
        response_mask.append([1] * len(r) + [0] * (R - len(r)))
    tensor = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return tensor(rows), tensor(masks), tensor(responses), tensor(response_mask), P


class PPOTrainer(_BaseTrainer):
    _tag_names = ["trl", "ppo"]
    _name = "PPO"

    def __init__(self, args, *, policy, ref_model, reward_model, value_model, processing_class, train_dataset,
                 reward, evaluator=None, writer=None, checkpoints_dir: Path | None = None):
        """`reward(prompts, answers) -> scores`: what the policy is trained on (alignment/rewards.py's `combined`
        of the stage's `reward_funcs`); `reward_model` is the proxy it may call, placed on the device here."""
        self.policy, self.ref_model, self.reward_model, self.value_model = policy, ref_model, reward_model, value_model
        self.reward = reward
        for model in (policy, ref_model, reward_model, value_model):
            disable_dropout_in_model(model)  # detail: no dropout, so rollout and update see the same model
        ref_model.eval().requires_grad_(False)
        reward_model.eval().requires_grad_(False)
        self.evaluator, self.writer = evaluator, writer
        self.checkpoints_dir = Path(checkpoints_dir or args.output_dir)
        self.prompts = list(train_dataset["prompt"])
        self.prompt_ids = render_prompts(processing_class, self.prompts)
        super().__init__(model=PolicyAndValue(policy, value_model), args=args, processing_class=processing_class,
                         train_dataset=train_dataset)
        self.remove_callback(PrinterCallback)  # the loop prints its own line per rollout
        self.batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches
        self.processes, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.global_batch_size = self.batch_size * self.processes  # answers per rollout, every process's
        self.num_rollouts = num_rollouts(args, len(self.prompts), self.processes)
        self.create_optimizer_and_scheduler(num_training_steps=self.num_rollouts)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        device = self.accelerator.device
        self.ref_model.to(device)
        self.reward_model.to(device)
        self.kl_ctl = (core.AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon) if args.adaptive_kl
                       else core.FixedKLController(args.kl_coef))
        self.eval_history: list[tuple[int, dict]] = []
        self.rollout_history: list[dict] = []

    # ------------------------------------------------------------------------------------------
    # Data

    def batch_indices(self, rollout: int) -> list[int]:
        """This process's prompts of rollout `rollout` (0-based): the rollout takes the next global_batch_size
        prompts of a seeded shuffle per pass over the data (so a resumed run draws the same prompts as an
        uninterrupted one), and process r the r-th share of them."""
        n, out, start = len(self.prompts), [], rollout * self.global_batch_size
        while len(out) < self.global_batch_size:
            epoch, offset = divmod(start + len(out), n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed * 1000003 + epoch))
            out += order[offset:offset + self.global_batch_size - len(out)].tolist()
        return out[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def block_seed(self, rollout: int, block: int, offset: int = 0) -> int:
        """The stream of answers block*chunk .. (block+1)*chunk - 1 of a rollout, whichever process samples them
        (`offset`: where in the block a process's share starts, when shares are not whole blocks). Block 0 keeps
        the seed a rollout has always been sampled with, so a run whose rollout fits one block (the recipes' PPO)
        draws what it drew before rollouts were shared out."""
        if block == 0 and offset == 0:
            return self.args.seed * 1000003 + rollout
        return stream_seed(self.args.seed, "ppo rollout", rollout, block, offset)

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the processes (x itself in one process)."""
        return self.accelerator.reduce(x, reduction="sum") if self.processes > 1 else x

    def finite_everywhere(self, value: float) -> bool:
        """Whether `value` is finite on every process: all stop together, none is left waiting for the others."""
        finite = math.isfinite(value)
        if self.processes == 1:
            return finite
        return bool(self.total(torch.tensor(float(not finite), device=self.accelerator.device)) == 0)

    def over_processes(self, stats: dict, largest: tuple[str, ...] = ()) -> dict:
        """Per-process means (each over as many answers or micro-batches as every other process's) made the
        whole rollout's: the mean over the processes, or the largest for the keys in `largest`."""
        if self.processes == 1:
            return stats
        keys = [k for k, v in stats.items() if v is not None]
        gathered = self.accelerator.gather(torch.tensor([[stats[k] for k in keys]], dtype=torch.float64,
                                                        device=self.accelerator.device))
        return {**stats, **{k: float(gathered[:, i].max() if k in largest else gathered[:, i].mean())
                            for i, k in enumerate(keys)}}

    # ------------------------------------------------------------------------------------------
    # The forward pass of rollout and update

    def forward_answers(self, model, input_ids, attention_mask, responses, P: int):
        """(logprobs, entropy, values) of the answer tokens: `model` is `self.model` (the policy and the value
        model, values (B, R) before each answer token) or the reference (values None).

        The rollout's old log-probabilities, values and reference log-probabilities and the update's new ones
        all come from here, under the accelerator's autocast (a no-op in fp32): accelerate's `prepare` runs
        `self.model`'s forward under it, so a rollout through the bare policy outside it would compute its
        log-probabilities in fp32 while the update computed them in bf16, and the update's first ratio would
        be off 1 by the bf16 rounding (0.01-0.02 on the smoke recipe, against a clip range of 0.2)."""
        with self.accelerator.autocast():
            if model is self.model:
                logits, values = model(input_ids, attention_mask)
                values = values[:, P - 1:-1].float()
            else:
                logits, values = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits, None
        logprobs, entropy = answer_logprobs(logits, responses, P, self.args.temperature)
        return logprobs, entropy, values

    # ------------------------------------------------------------------------------------------
    # Rollout

    @torch.no_grad()
    def _rollout_forward(self, model, input_ids, attention_mask, responses, P):
        """`forward_answers` in chunks of local_rollout_forward_batch_size: (logprobs, values or None)."""
        chunk = self.args.local_rollout_forward_batch_size
        logprobs, values = [], []
        for s in range(0, len(input_ids), chunk):
            lp, _, v = self.forward_answers(model, input_ids[s:s + chunk], attention_mask[s:s + chunk],
                                            responses[s:s + chunk], P)
            logprobs.append(lp)
            values.append(v)
        return torch.cat(logprobs), (torch.cat(values) if values[0] is not None else None)

    @torch.no_grad()
    def rollout(self, rollout: int) -> dict:
        args, tokenizer, device = self.args, self.processing_class, self.accelerator.device
        indices = self.batch_indices(rollout)
        prompts = [self.prompts[i] for i in indices]
        self.policy.eval()
        answers = []
        chunk, first = args.local_rollout_forward_batch_size, self.rank * self.batch_size  # first: its global row
        for block in range(first // chunk, -(-(first + self.batch_size) // chunk)):  # the blocks its rows lie in
            start = max(block * chunk, first)  # a share that starts inside a block draws from a stream of its own
            lo, hi = start - first, min((block + 1) * chunk, first + self.batch_size) - first
            answers += generate_answers(self.policy, tokenizer, [as_messages(p) for p in prompts[lo:hi]],
                                        max_new_tokens=args.response_length, do_sample=True,
                                        temperature=args.temperature, top_k=0, top_p=1.0, batch_size=chunk,
                                        seed=self.block_seed(rollout, block, start - block * chunk),
                                        cache_implementation=args.cache_implementation)
        input_ids, attention_mask, responses, mask, P = layout(
            [self.prompt_ids[i] for i in indices], [a.token_ids for a in answers], tokenizer.pad_token_id)
        input_ids, attention_mask, responses, mask = (t.to(device) for t in (input_ids, attention_mask, responses, mask))
        self.model.eval()
        logprobs, values = self._rollout_forward(self.model, input_ids, attention_mask, responses, P)
        ref_logprobs, _ = self._rollout_forward(self.ref_model, input_ids, attention_mask, responses, P)
        ended = torch.tensor([a.ended for a in answers], device=device)
        scores = torch.tensor(self.reward(prompts, answers), device=device, dtype=torch.float32)
        mask_f = mask.float()
        logprobs, ref_logprobs, values = logprobs * mask_f, ref_logprobs * mask_f, values * mask_f
        rewards, kl = core.per_token_rewards(scores, logprobs, ref_logprobs, mask, self.kl_ctl.value,
                                             args.kl_estimator)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, total=self.total)
        advantages, returns = core.gae(rewards, values, mask, args.gamma, args.lam)
        advantages = core.masked_whiten(advantages, mask, total=self.total)
        kl_k1 = core.kl_per_token(logprobs, ref_logprobs, "k1") * mask_f
        return dict(input_ids=input_ids, attention_mask=attention_mask, responses=responses, mask=mask, P=P,
                    logprobs=logprobs, values=values, advantages=advantages, returns=returns, stats={
                        **self.over_processes({  # means over answers: every process has as many
                            "reward": float(scores.mean()),
                            "kl": float(kl_k1.sum(1).mean()),
                            "kl_penalty": float((self.kl_ctl.value * kl).sum(1).mean()),
                            "missing_eos_rate": float((~ended).float().mean()),
                            "length": float(mask_f.sum(1).mean()),
                        }),
                        "kl_coef": self.kl_ctl.value,
                        "explained_variance": core.explained_variance(values, returns, mask, total=self.total),
                        "value_mean": float(core.masked_mean(values, mask, total=self.total)),
                    })

    # ------------------------------------------------------------------------------------------
    # Update

    def update(self, batch: dict, rollout: int) -> dict:
        args, model = self.args, self.model
        P, n = batch["P"], len(batch["input_ids"])
        minibatch = n // args.num_mini_batches
        micro = args.per_device_train_batch_size
        generator = torch.Generator().manual_seed(args.seed * 1000003 + rollout)
        model.train()
        sums: dict[str, list[float]] = {}
        first_ratio_deviation = None
        for epoch in range(args.num_ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for m in range(args.num_mini_batches):
                for start in range(m * minibatch, (m + 1) * minibatch, micro):
                    last_micro = start + micro >= (m + 1) * minibatch
                    # Processes average their gradients once per minibatch, at its last micro-batch.
                    sync = contextlib.nullcontext() if last_micro else self.accelerator.no_sync(model)
                    idx = order[start:start + micro].to(batch["input_ids"].device)
                    mask = batch["mask"][idx]
                    with sync:
                        logprobs, entropy, values = self.forward_answers(
                            model, batch["input_ids"][idx], batch["attention_mask"][idx], batch["responses"][idx], P)
                        pg_loss, pg_stats = core.policy_loss(logprobs, batch["logprobs"][idx],
                                                             batch["advantages"][idx], mask, args.cliprange)
                        vf_loss, vf_stats = core.value_loss(values, batch["values"][idx], batch["returns"][idx], mask,
                                                            args.cliprange_value)
                        loss = pg_loss + args.vf_coef * vf_loss
                        if not self.finite_everywhere(loss.item()):  # before the optimizer spreads it
                            raise non_finite_error("training loss", loss.item(), rollout + 1, self.checkpoints_dir)
                        self.accelerator.backward(loss)  # accelerate divides by gradient_accumulation_steps
                    stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                             "entropy": float(core.masked_mean(entropy, mask)),
                             **{k: float(v) for k, v in {**pg_stats, **vf_stats}.items()}}
                    if epoch == 0 and m == 0 and start == 0:
                        first_ratio_deviation = stats["ratio_max_deviation"]
                    for key, value in stats.items():
                        sums.setdefault(key, []).append(value)
                grad_norm = self.accelerator.clip_grad_norm_(
                    model.parameters(), args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else math.inf)
                if not math.isfinite(float(grad_norm)):
                    raise non_finite_error("gradient norm", float(grad_norm), rollout + 1, self.checkpoints_dir)
                if epoch == 0 and m == 0:
                    kill_if_asked(rollout + 1)  # once per rollout, at its first optimizer step
                self.optimizer.step()
                self.optimizer.zero_grad()
        out = {key: float(np.mean(values)) for key, values in sums.items() if key != "ratio_max_deviation"}
        out["ratio_max_deviation"] = max(sums["ratio_max_deviation"])
        out["first_minibatch_ratio_deviation"] = first_ratio_deviation
        return self.over_processes(out, largest=("ratio_max_deviation", "first_minibatch_ratio_deviation"))

    # ------------------------------------------------------------------------------------------
    # Evaluation, logging, checkpoints

    def evaluate_policy(self, step: int) -> dict | None:
        if self.evaluator is None or (self.eval_history and self.eval_history[-1][0] == step):
            return None
        if not self.accelerator.is_main_process:
            self.eval_history.append((step, {}))  # the main process evaluates; the history's steps stay in step
            self.accelerator.wait_for_everyone()
            return None
        metrics, rows = self.evaluator.evaluate(self.policy)
        self.accelerator.wait_for_everyone()
        if self.writer is not None:
            write(self.writer, metrics, rows, step)
        self.eval_history.append((step, metrics))
        print(f"rollout {step}: {headline(metrics)}"
              + (f"  proxy {metrics['proxy_reward']:+.3f}" if "proxy_reward" in metrics else ""), flush=True)
        return metrics

    def save_checkpoint(self, step: int) -> None:
        if self.accelerator.is_main_process:  # the processes' weights and optimizer states are the same
            self.write_checkpoint(step)
        self.accelerator.wait_for_everyone()

    def write_checkpoint(self, step: int) -> None:
        path = self.checkpoints_dir / f"checkpoint-{step}"
        tmp = self.checkpoints_dir / f".checkpoint-{step}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        torch.save({
            "step": step,
            "model": self.accelerator.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "kl_controller": self.kl_ctl.state_dict(),
            "eval_history": self.eval_history,
            "rollout_history": self.rollout_history,
            "processes": self.processes,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }, tmp / "state.pt")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        prune_checkpoints(self.checkpoints_dir, self.args.save_total_limit)

    def load_checkpoint(self) -> int:
        """Restore the last checkpoint; the number of rollouts it had done (0 when there is none)."""
        done = complete_checkpoints(self.checkpoints_dir)
        if not done:
            return 0
        check_checkpoint(done[-1])
        state = load_checkpoint_state(done[-1] / "state.pt")
        if state.get("processes", 1) != self.processes:  # each rollout's prompts are shared out by the count
            raise UserError(f"{done[-1]}: saved by a run on {state.get('processes', 1)} process(es), resumed on "
                            f"{self.processes}; resume with the same number of processes")
        self.accelerator.unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.eval_history, self.rollout_history = state["eval_history"], state["rollout_history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return state["step"]

    def log_rollout(self, stats: dict, step: int) -> None:
        if self.writer is not None:
            for key, value in stats.items():
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(f"ppo/{key}", value, step)
            self.writer.flush()
        self.log({f"ppo/{k}": v for k, v in stats.items() if v is not None})

    # ------------------------------------------------------------------------------------------
    # The loop

    def train(self, resume: bool = False) -> dict:
        args = self.args
        done = self.load_checkpoint() if resume else 0
        self.state.max_steps, self.state.global_step = self.num_rollouts, done
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if done == 0 and getattr(args, "eval_at_start", True):
            self.evaluate_policy(0)
        started = time.time()
        for rollout in range(done, self.num_rollouts):
            step = rollout + 1
            t0 = time.time()
            batch = self.rollout(rollout)
            stats = {**batch["stats"], **self.update(batch, rollout)}
            self.kl_ctl.update(stats["kl"], self.global_batch_size)
            self.lr_scheduler.step()
            stats["learning_rate"] = self.lr_scheduler.get_last_lr()[0]
            stats["seconds"] = time.time() - t0
            self.state.global_step = step
            self.state.episode = step * self.global_batch_size
            self.rollout_history.append({"step": step, **stats})
            self.log_rollout(stats, step)
            if self.accelerator.is_main_process:
                print(f"rollout {step}/{self.num_rollouts}: reward {stats['reward']:+.3f}  kl {stats['kl']:.3f}  "
                      f"clip {stats['clip_fraction']:.3f}  approx_kl {stats['approx_kl']:.4f}  "
                      f"vf {stats['value_loss']:.3f}  ev {stats['explained_variance']:.2f}  "
                      f"len {stats['length']:.1f}  ({stats['seconds']:.1f}s)", flush=True)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if args.eval_every and step % args.eval_every == 0:
                self.evaluate_policy(step)
            if args.save_steps and step % int(args.save_steps) == 0 and step < self.num_rollouts:
                self.save_checkpoint(step)
        self.evaluate_policy(self.num_rollouts)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return summary(self.rollout_history, time.time() - started)


def summary(history: list[dict], seconds: float) -> dict:
    """Training numbers for the manifest: the last rollout's, and the mean over the last quarter."""
    if not history:
        return {}
    keys = ("reward", "kl", "kl_coef", "entropy", "clip_fraction", "approx_kl", "policy_loss", "value_loss",
            "explained_variance", "missing_eos_rate", "length", "first_minibatch_ratio_deviation")
    tail = history[-max(1, len(history) // 4):]
    out = {f"train_{k}": float(np.nanmean([h[k] for h in tail])) for k in keys if k in history[-1]}
    out["train_rollouts"] = float(history[-1]["step"])
    out["train_seconds"] = round(seconds, 2)
    return out


def num_rollouts(args, dataset_size: int, processes: int = 1) -> int:
    """max_steps rollouts if set, else total_episodes (default num_train_epochs passes over the prompts)
    divided by the rollout batch size (of every process)."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.num_mini_batches * processes
    episodes = args.total_episodes or int(args.num_train_epochs * dataset_size)
    return max(1, math.ceil(episodes / batch))
