"""Best-of-n: `rlhf-lab align --method best-of-n --config recipes/<name>/align-best-of-n.yaml`.

No training. For each evaluation prompt, sample n answers from the SFT model (the evaluator's own
sampling settings: temperature, top_p, max_new_tokens; sample k is drawn with seed `seed + k`, so
sample 0 is exactly the evaluator's SFT answer) and keep the one the proxy reward model scores
highest (the first on a tie). The chosen answers go through the one evaluation
(`alignment.evaluate`), like every trained method's samples.

The best-of-n policy's KL to the SFT model is known in closed form, log n - (n-1)/n (Stiennon et
al. 2020; Beirami et al. 2024 show it is an upper bound, exact when no two samples tie). It is
recorded as both KL estimates (`kl`, `kl_k3`) and as `kl_analytic`; the manifest says so under
`data.kl`. Besides the evaluation's metrics: `best_proxy_reward` (mean proxy of the chosen answers,
from the pass that chose them), `sft_<metric>` (the SFT baseline, sample 0), `chosen_first_rate`
(share of prompts where sample 0 won), `tokens_generated` (all n samples).

model/ holds what "the best-of-n policy" is: the SFT model (from_pretrained-loadable, with its
tokenizer), the reward model in model/reward_model/, and model/best_of_n.json naming both (with the
hashes of their weights), n and the sampling settings, so later stages (compare, chat) can rebuild
the policy from the run alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

from alignment.common import AlignArguments
from recipes.config import RunArguments, parse_config

METHOD = "best-of-n"
SPEC_FILE = "best_of_n.json"
REWARD_SUBDIR = "reward_model"


@dataclasses.dataclass
class BestOfNConfig(RunArguments, AlignArguments):
    """Best-of-n over the SFT model by the reward model. Training keys (dataset_*, lora_*, eval_every) are unused."""

    n: int = dataclasses.field(default=4, metadata={"help": "Answers sampled per prompt; the proxy's favourite is kept."})
    seed: int = dataclasses.field(
        default=0, metadata={"help": "Sample k of each prompt is drawn with seed + k (sample 0: the evaluator's own)."})

    def __post_init__(self):
        if self.n <= 0:
            raise ValueError(f"key 'n' must be a positive integer, got {self.n}")
        self.check_alignment_keys()


def analytic_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n-1)/n: 0 for n=1, log n - 1 + o(1) as n grows."""
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    return math.log(n) - (n - 1) / n


def best_of(scores: list[list[float]]) -> list[int]:
    """Index of the highest score in each row (the first on a tie)."""
    return [max(range(len(row)), key=lambda k: (row[k], -k)) for row in scores]


def sample_and_choose(evaluator, reward_model, n: int, seed: int):
    """(chosen answers, proxy scores [prompt][sample], chosen index per prompt, all samples [sample][prompt])."""
    from recipes.generation import generate_answers
    from recipes.kill_switch import kill_if_asked
    from recipes.progress import step_bar
    from reward import score

    samples = [evaluator.sft_answers]  # sample 0: exactly the evaluator's SFT answers
    bar = step_bar(n, f"{METHOD} samples", initial=1)
    for k in range(1, n):
        kill_if_asked(k)
        samples.append(generate_answers(evaluator.sft_model, evaluator.tokenizer, evaluator.prompts,
                                        **{**evaluator.generation, "seed": seed + k}))
        bar.update()
    bar.close()
    proxy = [score(reward_model, evaluator.tokenizer, evaluator.prompts, [a.text for a in answers],
                   ended=[a.ended for a in answers], batch_size=evaluator.batch_size) for answers in samples]
    per_prompt = [list(column) for column in zip(*proxy)]
    chosen = best_of(per_prompt)
    return [samples[k][i] for i, k in enumerate(chosen)], per_prompt, chosen, samples


def save_policy(run, sft_model, tokenizer, reward_model, spec: dict) -> None:
    """model/: the SFT model and tokenizer, the reward model under reward_model/, and best_of_n.json."""
    from recipes.rundir import atomic_write_text

    run.save_model(sft_model, tokenizer)
    reward_dir = run.model_dir / REWARD_SUBDIR
    reward_model.save_pretrained(str(reward_dir))
    tokenizer.save_pretrained(str(reward_dir))
    atomic_write_text(run.model_dir / SPEC_FILE, json.dumps(spec, indent=2) + "\n")


def main(config: BestOfNConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    from recipes.distributed import require_one_process

    require_one_process("align --method best-of-n")

    from alignment.common import build_evaluator, load_policy, load_reward_model, resolve_parents, start_run
    from alignment.evaluate import write
    from recipes.data import fingerprint
    from recipes.rundir import weights_hash

    started = time.time()
    parents = resolve_parents(config, needs_reward=True)
    kl = analytic_kl(config.n)
    run = start_run(config, METHOD, parents, data={
        "source": None, "fingerprint": fingerprint(config.eval_prompts, split=config.eval_prompts_split),
        "training": "none: best-of-n samples the SFT model and keeps the reward model's favourite",
        "n": config.n, "kl": f"analytic, log n - (n-1)/n = {kl:.6f}, recorded as kl and kl_k3"})
    sft_model, tokenizer = load_policy(parents.sft_dir)
    reward_model = load_reward_model(parents.reward_dir)
    evaluator = build_evaluator(config, sft_model, tokenizer, reward_model)
    answers, proxy, chosen, samples = sample_and_choose(evaluator, reward_model, config.n, config.seed)

    metrics, rows = evaluator.evaluate_answers(answers, kl=(kl, kl))
    for row, scores, k in zip(rows, proxy, chosen):
        row["proxy_samples"], row["chosen"] = scores, k
    metrics.update({
        "kl_analytic": kl,
        "n": config.n,
        "best_proxy_reward": sum(max(s) for s in proxy) / len(proxy),  # same scoring pass as the choice
        **{f"sft_{k}": v for k, v in evaluator.sft_metrics().items()},  # sample 0: the evaluator's SFT answers
        "chosen_first_rate": sum(k == 0 for k in chosen) / len(chosen),
        "tokens_generated": sum(a.num_tokens for answers_k in samples for a in answers_k),
    })
    writer = SummaryWriter(str(run.tb_dir))
    write(writer, metrics, rows, step=0)
    writer.close()

    save_policy(run, sft_model, tokenizer, reward_model, {
        "method": METHOD, "n": config.n, "seed": config.seed,
        "policy": "for each prompt, sample n answers from this model and keep the one reward_model/ scores highest",
        "sft_model": str(parents.sft_dir), "sft_weights_sha256": weights_hash(parents.sft_dir),
        "reward_model": REWARD_SUBDIR, "reward_model_source": str(parents.reward_dir),
        "reward_weights_sha256": weights_hash(parents.reward_dir),
        "sampling": {k: v for k, v in evaluator.generation.items() if k not in ("batch_size", "seed")},
        "kl_analytic": kl,
    })
    metrics["wall_time_s"] = round(time.time() - started, 2)
    run.finish(metrics)
    print(f"wrote {run.path}  best-of-{config.n}: gold {metrics['gold_reward']:+.3f} "
          f"[{metrics['gold_reward_low']:+.3f}, {metrics['gold_reward_high']:+.3f}] "
          f"(SFT {metrics['sft_gold_reward']:+.3f})  win {metrics['win_rate']:.0%}  "
          f"proxy {metrics['sft_proxy_reward']:+.3f} -> {metrics['best_proxy_reward']:+.3f}  KL {kl:.3f} (analytic)")
    return metrics


def parse(argv: list[str]):
    """The stage's resolved config from `--config FILE` and flags, without running anything."""
    return parse_config(BestOfNConfig, argv, f"align --method {METHOD}", description=__doc__.splitlines()[0])


def cli(argv: list[str]) -> int:
    from recipes.lock import run_locked

    run_locked(main, parse(argv))
    return 0
