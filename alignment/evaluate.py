"""One evaluation for every alignment method, so their numbers can be compared honestly.

On the same held-out prompts, with the same sampling settings, `samples_per_prompt` answers to each
prompt, for any policy, against `baseline_samples_per_prompt` answers of the SFT model to each:

    gold_reward, gold_reward_low, gold_reward_high   mean gold total and its 95% bootstrap interval
                         (prompts resampled: a prompt's answers stay together)
    gold_gain, gold_gain_low, gold_gain_high   the gain over the SFT model's answers to the same prompts:
                         the mean of per-prompt differences, with a paired bootstrap interval
    win_rate, win_rate_low, win_rate_high   share of (policy answer, SFT answer) pairs to the same prompt,
                         every such pair, where the policy's answer is better on gold (ties count half), with
                         its interval over prompts; the SFT answers are sampled once, from a stream of their
                         own, independent of every policy's (recipes/core/seeds.py)
    tie_rate, win_rate_decided   share of pairs tied on gold, and the win rate among the others
    proxy_reward         mean score of the trained reward model
    kl                   KL(policy || SFT) from the policy's own samples: mean of sum_t log p/q
    kl_k3                the same with the non-negative k3 estimator, sum_t (r - 1 - log r), r = q/p
    length               mean tokens per answer, end of turn included
    end_of_turn_rate, gold/<family>, math_accuracy, harmful_compliance, over_refusal  (recipes.core.gold_eval)

Gold exists only for the world's prompts: when any evaluation prompt is not one (prompts from a file of real
data), the gold keys are left out rather than scored as 0. A *judge* (a reward model trained apart from the
proxy being optimised, `Judge`) plays gold's part then, and may sit beside gold on world prompts: the same
statistics under judge_ names (judge_reward, judge_gain, judge_win_rate, judge_tie_rate, each with its
interval), from the judge's score of every answer. `GOLD` and `JUDGE` name each truth's keys for `compare`.

`Evaluator.evaluate(policy)` samples and scores; `Evaluator.evaluate_answers(answers, kl=...)`
scores answers chosen another way (best-of-n, whose KL is estimated from its candidates). `write` puts the
metrics into TensorBoard under `gold_eval/` and the prompt/answer/gold/proxy rows as text;
`EvaluationCallback` does both inside a transformers/TRL trainer every `eval_every` steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
from statistics import fmean

import numpy as np
import torch
from transformers import TrainerCallback

from alignment.proxy_pairs import cached_samples
from recipes.core.generation import Answer, generate_answers, render_prompts
from recipes.core.gold_eval import plain_rows, plain_summary, score_answers, summarize
from recipes.core.seeds import stream_seed
from recipes.core.statistics import bootstrap_interval, paired_difference
from recipes.core.tracking import markdown_table
from recipes.core.world import family_of
from reward import score

TB_PREFIX = "gold_eval"


@dataclasses.dataclass(frozen=True)
class Truth:
    """What an evaluation measures methods by, and the keys its numbers go under."""

    name: str  # gold | judge
    reward: str
    gain: str
    win: str
    tie: str
    decided: str
    per_prompt: str  # the per-prompt record's key for the method's mean score, the baseline's, the wins
    baseline: str
    wins: str


GOLD = Truth("gold", "gold_reward", "gold_gain", "win_rate", "tie_rate", "win_rate_decided", "gold", "sft_gold", "win")
JUDGE = Truth("judge", "judge_reward", "judge_gain", "judge_win_rate", "judge_tie_rate", "judge_win_rate_decided",
              "judge", "sft_judge", "judge_win")


def truth_of(metrics: dict) -> Truth:
    """Gold where the evaluation had it, else the judge."""
    return GOLD if metrics.get(GOLD.reward) is not None else JUDGE


def headline(metrics: dict) -> str:
    """The evaluation's numbers in one line: the truth's score, gain over SFT with its interval, win rate, KL."""
    t = truth_of(metrics)
    if metrics.get(t.reward) is None:
        return f"KL {metrics['kl']:.3f}"
    return (f"{t.name} {metrics[t.reward]:+.3f}, gain over SFT {metrics[t.gain]:+.3f} [{metrics[t.gain + '_low']:+.3f}, "
            f"{metrics[t.gain + '_high']:+.3f}]  win {metrics[t.win]:.0%}  KL {metrics['kl']:.3f}")


def with_sft(metrics: dict) -> str:
    """`headline` led by the SFT model's score (a finished run's metrics hold it as sft_<key>)."""
    sft = metrics.get(f"sft_{truth_of(metrics).reward}")
    return (f"SFT {sft:+.3f} -> " if sft is not None else "") + headline(metrics)


@dataclasses.dataclass
class Judge:
    """A sequence-classification reward model that scores answers where the gold reward cannot: any model, with
    its own tokenizer and chat template (answers are passed as text and rendered by it)."""

    model: object
    tokenizer: object

    def score(self, prompts, answers: list[Answer], batch_size: int = 32) -> list[float]:
        return score(self.model, self.tokenizer, prompts, [a.text for a in answers],
                     ended=[a.ended for a in answers], batch_size=batch_size)


def pairwise_outcomes(policy_gold, baseline_gold) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, over every pair of one policy answer and one baseline answer: (share won, a tie counting
    half; share tied). Arrays are (answers, prompts), any number of answers on each side; 1-D means one
    answer per prompt. All pairs, not answer j against answer j: the baseline may have more answers."""
    policy = np.atleast_2d(np.asarray(policy_gold, dtype=float))[:, None, :]  # (k_policy, 1, prompts)
    baseline = np.atleast_2d(np.asarray(baseline_gold, dtype=float))[None, :, :]  # (1, k_baseline, prompts)
    ties = (policy == baseline).mean(axis=(0, 1))
    return (policy > baseline).mean(axis=(0, 1)) + 0.5 * ties, ties


def win_rate(policy_gold, baseline_gold) -> float:
    """Share of (policy answer, baseline answer) pairs to the same prompt that the policy wins on gold; a tie
    counts half."""
    return float(pairwise_outcomes(policy_gold, baseline_gold)[0].mean())


def ties_and_decided_wins(policy_gold, baseline_gold) -> tuple[float, float]:
    """(share of pairs tied on gold, share won among the rest; nan when every pair ties).

    Where the baseline already earns gold's maximum a policy can only tie, so the tie share caps the
    win rate at 1 - tie_rate / 2; the decided win rate says how the policy does where it can win.
    """
    wins, ties = pairwise_outcomes(policy_gold, baseline_gold)
    tie_rate = float(ties.mean())
    strict = float((wins - 0.5 * ties).mean())  # every prompt has as many pairs, so means of shares pool
    return tie_rate, (strict / (1 - tie_rate) if tie_rate < 1 else float("nan"))


def kl_estimates(policy_logprobs: list[torch.Tensor], reference_logprobs: list[torch.Tensor]) -> tuple[float, float]:
    """(plain, k3) estimates of KL(policy || reference) from samples of the policy.

    Each list holds one tensor per answer: the log-probability of each generated token. With
    log r = reference - policy per token, the plain estimator sums -log r; k3 sums (r - 1) - log r,
    which is never negative and has lower variance (Schulman, "Approximating KL divergence").
    """
    plain, k3 = [], []
    for p, q in zip(policy_logprobs, reference_logprobs):
        log_ratio = (q - p).double()
        plain.append(float(-log_ratio.sum()))
        k3.append(float((log_ratio.exp() - 1 - log_ratio).sum()))
    return float(np.mean(plain)), float(np.mean(k3))


@torch.no_grad()
def answer_logprobs(model, prompt_ids: list[list[int]], answer_ids: list[list[int]], *, temperature: float = 1.0,
                    batch_size: int = 32, pad_token_id: int = 0) -> list[torch.Tensor]:
    """Log-probability of each answer token given its prompt, under `model` at `temperature`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [p + a for p, a in zip(prompt_ids[start:start + batch_size], answer_ids[start:start + batch_size])]
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], device=device)
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]  # (B, T-1)
        for i, (p, a) in enumerate(zip(prompt_ids[start:start + batch_size], answer_ids[start:start + batch_size])):
            out.append(logprobs[i, len(p) - 1:len(p) - 1 + len(a)].cpu())
    model.train(was_training)
    return out


def by_answer(values, n_prompts: int) -> np.ndarray:
    """(answers, n_prompts) view of values laid out sample-major: answer j to prompt i at j * n_prompts + i."""
    return np.asarray(values, dtype=float).reshape(-1, n_prompts)


def per_prompt(values, n_prompts: int) -> np.ndarray:
    """(n_prompts,) means of values laid out sample-major."""
    return by_answer(values, n_prompts).mean(axis=0)


class Evaluator:
    """Evaluates policies against one SFT model on fixed prompts with fixed sampling settings.

    A policy answers every prompt `samples_per_prompt` times, the SFT baseline `baseline_samples_per_prompt`
    times (default: as many). Answers are laid out sample-major (`self.prompts` holds the prompts repeated,
    answer j to prompt i at j * num_prompts + i; `self.sft_prompts` likewise for the baseline). The baseline is
    sampled once and shared by every method of a recipe, so its answers are the cheap place to add samples: the
    variance of a per-prompt gain is var(policy)/k_policy + var(SFT)/k_baseline. The SFT baseline's answers and
    each policy's are drawn from separate streams derived from `seed`."""

    def __init__(self, sft_model, tokenizer, prompts, *, reward_model=None, judge: Judge | None = None,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32,
                 seed: int = 0, samples_per_prompt: int = 1, baseline_samples_per_prompt: int | None = None,
                 sft_weights: str | None = None):
        self.sft_model, self.tokenizer, self.reward_model, self.judge = sft_model, tokenizer, reward_model, judge
        outside = sum(family_of(p) == "unknown" for p in prompts)
        self.has_gold = outside == 0  # gold_eval.has_gold, counted: a mix is worth a line
        if 0 < outside < len(prompts):
            print(f"evaluation: {outside} of {len(prompts)} prompts are not the world's; gold is left out")
        if not self.has_gold and judge is None:
            print("evaluation: no gold for these prompts and no judge (judge_model_name_or_path): only proxy "
                  "reward, KL and length are measured")
        self.num_prompts, self.samples_per_prompt = len(prompts), samples_per_prompt
        self.baseline_samples_per_prompt = baseline_samples_per_prompt or samples_per_prompt
        self.prompts = list(prompts) * samples_per_prompt
        self.sft_prompts = list(prompts) * self.baseline_samples_per_prompt
        self.generation = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                               top_p=top_p, batch_size=batch_size, seed=stream_seed(seed, "eval/policy"))
        self.batch_size, self.seed, self.temperature = batch_size, seed, temperature
        self.prompt_ids = render_prompts(tokenizer, self.prompts)
        baseline = {**self.generation, "seed": stream_seed(seed, "eval/sft-baseline")}
        # Every method of a recipe evaluates against the same baseline: with the SFT weights' hash it is
        # sampled once and read from the cache by the other stages (the settings and seed are the key).
        self.sft_answers = cached_samples(
            lambda: [generate_answers(sft_model, tokenizer, self.sft_prompts, **baseline)],
            sft_weights, self.sft_prompts, purpose="eval/sft-baseline", **baseline)[0]
        self.sft_gold = ([row["gold"] for row in score_answers(self.sft_prompts, self.sft_answers)]
                         if self.has_gold else None)
        self.sft_judge = judge.score(self.sft_prompts, self.sft_answers, batch_size) if judge else None
        self.recorded: dict | None = None  # per-prompt numbers of the last policy evaluated (compare reads them)

    def sample(self, policy) -> list[Answer]:
        return generate_answers(policy, self.tokenizer, self.prompts, **self.generation)

    def evaluate(self, policy) -> tuple[dict[str, float], list[dict]]:
        """Sample the policy's answers and score them, KL included."""
        answers = self.sample(policy)
        ids = [a.token_ids for a in answers]
        pad = self.tokenizer.pad_token_id
        options = dict(temperature=self.temperature, batch_size=self.batch_size, pad_token_id=pad)
        kl = kl_estimates(answer_logprobs(policy, self.prompt_ids, ids, **options),
                          answer_logprobs(self.sft_model, self.prompt_ids, ids, **options))
        return self.evaluate_answers(answers, kl=kl)

    def evaluate_answers(self, answers: list[Answer], *, kl: tuple[float, float | None],
                         record: bool = True) -> tuple[dict[str, float], list[dict]]:
        """Score answers laid out as `self.prompts` (or, for the SFT model's own numbers, as `self.sft_prompts`)
        whose KL to SFT is known; `record` keeps the per-prompt numbers in `self.recorded` (the SFT model's own
        evaluation does not)."""
        n = self.num_prompts
        prompts = self.prompts if len(answers) == len(self.prompts) else self.sft_prompts
        if len(answers) != len(prompts):
            raise ValueError(f"expected {len(self.prompts)} answers (or the baseline's {len(self.sft_prompts)}), "
                             f"got {len(answers)}")
        if self.has_gold:
            rows = score_answers(prompts, answers)
            metrics = summarize(rows)
        else:
            rows = plain_rows(prompts, answers)
            metrics = plain_summary(rows)
        recorded = {"prompts": [p if isinstance(p, str) else json.dumps(p) for p in self.prompts[:n]],
                    "samples_per_prompt": self.samples_per_prompt,
                    "baseline_samples_per_prompt": self.baseline_samples_per_prompt}
        if self.has_gold:
            gold = [row["gold"] for row in rows]
            metrics.update(self._against_baseline(GOLD, gold, self.sft_gold, recorded))
        if self.judge is not None:
            judged = self.judge.score(prompts, answers, self.batch_size)
            for row, value in zip(rows, judged):
                row["judge"] = value
            metrics.update(self._against_baseline(JUDGE, judged, self.sft_judge, recorded))
        metrics["kl"] = kl[0]
        if kl[1] is not None:
            metrics["kl_k3"] = kl[1]
        if record:
            self.recorded = recorded
        if self.reward_model is not None:
            proxy = score(self.reward_model, self.tokenizer, prompts, [a.text for a in answers],
                          ended=[a.ended for a in answers], batch_size=self.batch_size)
            metrics["proxy_reward"] = float(np.mean(proxy))
            for row, value in zip(rows, proxy):
                row["proxy"] = value
        return metrics, rows

    def _against_baseline(self, truth: Truth, scores: list[float], baseline: list[float], recorded: dict) -> dict:
        """The mean score and its interval, the paired gain over the SFT baseline, the win rate (every pair of
        answers to a prompt, ties half) and the tie rates; the per-prompt numbers go into `recorded`."""
        n = self.num_prompts
        by_prompt, baseline_by_prompt = per_prompt(scores, n), per_prompt(baseline, n)
        wins, _ = pairwise_outcomes(by_answer(scores, n), by_answer(baseline, n))
        metrics = {truth.reward: fmean(scores)}  # as gold_eval.summarize computes it
        metrics[f"{truth.reward}_low"], metrics[f"{truth.reward}_high"] = bootstrap_interval(by_prompt, seed=self.seed)
        gain = paired_difference(by_prompt, baseline_by_prompt, seed=self.seed)
        metrics[truth.gain], metrics[f"{truth.gain}_low"], metrics[f"{truth.gain}_high"] = gain.mean, gain.low, gain.high
        metrics[truth.win] = float(wins.mean())
        metrics[f"{truth.win}_low"], metrics[f"{truth.win}_high"] = bootstrap_interval(wins, seed=self.seed)
        metrics[truth.tie], decided = ties_and_decided_wins(by_answer(scores, n), by_answer(baseline, n))
        if math.isfinite(decided):  # the SFT model against its own answers ties everywhere
            metrics[truth.decided] = decided
        recorded.update({truth.per_prompt: by_prompt.tolist(), truth.baseline: baseline_by_prompt.tolist(),
                         truth.wins: wins.tolist()})
        return metrics

    def sft_metrics(self) -> dict[str, float]:
        """The SFT model's own numbers on its baseline answers (gain 0, win rate 0.5 and KL 0 by definition; the
        tie rate is that of its answers against each other)."""
        metrics, _ = self.evaluate_answers(self.sft_answers, kl=(0.0, 0.0), record=False)
        return metrics


def write(writer, metrics: dict[str, float], rows: list[dict], step: int, limit: int = 20) -> None:
    """Metrics as TensorBoard scalars under gold_eval/, rows as a text table."""
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):  # text (reward_funcs) is not a scalar
            writer.add_scalar(f"{TB_PREFIX}/{key}", value, step)
    scores = [k for k in ("gold", "judge", "proxy") if rows and k in rows[0]]
    headers = ["family", "prompt", "answer"] + scores
    table = [[r["family"], r["prompt"], r["answer"] + ("" if r["ended"] else " …")] + [f"{r[k]:+.2f}" for k in scores]
             for r in rows[:limit]]
    writer.add_text(f"{TB_PREFIX}/samples", markdown_table(headers, table), step)
    writer.flush()


class EvaluationCallback(TrainerCallback):
    """Runs the evaluation inside a trainer: before training, every `eval_every` steps, and at the end.

    Events go through the trainer's own TensorBoard writer when it has one (else `fallback_tb_dir`).
    `history` keeps (step, metrics) of every evaluation; `latest` the last metrics.
    """

    def __init__(self, evaluator: Evaluator, *, eval_every: int, fallback_tb_dir=None, at_start: bool = True):
        self.evaluator, self.eval_every, self.fallback_tb_dir = evaluator, eval_every, fallback_tb_dir
        self.at_start = at_start
        self.history: list[tuple[int, dict]] = []
        self.trainer = None
        self._own_writer = None

    @property
    def latest(self) -> dict | None:
        return self.history[-1][1] if self.history else None

    def attach(self, trainer) -> "EvaluationCallback":
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def _writer(self, args):
        from transformers.integrations import TensorBoardCallback

        callbacks = self.trainer.callback_handler.callbacks if self.trainer else []
        tensorboard = next((c for c in callbacks if isinstance(c, TensorBoardCallback)), None)
        if tensorboard is not None:
            if tensorboard.tb_writer is None:
                tensorboard._init_summary_writer(args)
            if tensorboard.tb_writer is not None:
                return tensorboard.tb_writer
        if self._own_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._own_writer = SummaryWriter(str(self.fallback_tb_dir))
        return self._own_writer

    def _run(self, args, state, model):
        if not state.is_world_process_zero or (self.history and self.history[-1][0] == state.global_step):
            return
        metrics, rows = self.evaluator.evaluate(model)  # a peft model generates through its adapters
        write(self._writer(args), metrics, rows, state.global_step)
        self.history.append((state.global_step, metrics))
        print(f"step {state.global_step}: {headline(metrics)}"
              + (f"  proxy {metrics['proxy_reward']:+.3f}" if "proxy_reward" in metrics else ""))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start:
            self._run(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.eval_every and state.global_step % self.eval_every == 0:
            self._run(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run(args, state, model)
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None
