"""Best-of-n: `rlhf-lab align --method best-of-n --config recipes/<name>/align-best-of-n.yaml`.

No training. For each evaluation prompt (and each of its `eval_samples_per_prompt` answer slots), sample
n candidates from the SFT model (the evaluator's own sampling settings: temperature, top_p,
max_new_tokens; candidate k from a stream of its own, `recipes.core.seeds.stream_seed(seed,
"best-of-n/candidate", k)`, independent of the evaluator's SFT baseline answers) and keep the one the
reward scores highest (the first on a tie): `reward_funcs` (alignment/rewards.py), by default the proxy
reward model alone. The chosen answers go through the one
evaluation (`alignment.evaluate`), like every trained method's samples.

KL to the SFT model: log n - (n-1)/n is an upper bound (Beirami et al. 2024, "Theoretical guarantees on
the best-of-n alignment policy"), reached only when no answer carries noticeable probability; short
answers repeat, and then the true KL is lower. Recorded: `kl_bound` (the bound) and `kl`, an estimate
from the candidates and the SFT model's log-probabilities (`estimated_kl`): the exact KL of best-of-n on
a distribution that puts on every answer drawn twice or more its exact SFT probability and spreads the
rest of the mass evenly over the draws seen once. It equals the exact KL when the draws cover a small
categorical distribution, the bound when no two draws coincide, and never exceeds the bound. No k3 estimate is
written (there are no policy log-probabilities to take it from). Besides the evaluation's metrics:
`best_proxy_reward` (mean proxy of the chosen answers, from the pass that scored the candidates; the choice
itself maximised the weighted `reward_funcs`, the proxy less `missing_eos_penalty` for an answer cut off before
its end of turn by default), `sft_<metric>` (the SFT baseline), `tokens_generated` (all n candidates),
`reward_queries` (the candidates the reward model scored to choose).

Under `accelerate launch --num_processes W` the n candidates are shared out: process r samples candidates
r, r + W, r + 2W, ... (each from its own stream, so which process draws it changes nothing), the candidates
are gathered, and the main process scores, chooses, evaluates and writes: the same result as one process,
about W times faster to sample.

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

from alignment.common import (
    AlignArguments,
    build_evaluator,
    load_policy,
    load_reward_model,
    record_per_prompt,
    resolve_parents,
    run_name,
    start_run,
)
from alignment.evaluate import answer_logprobs, with_sft, write
from alignment.rewards import RewardArguments, combined
from alignment.rewards import build as build_rewards
from recipes.core.config import RunArguments
from recipes.core.data import fingerprint
from recipes.core.distributed import claim_run, process_state
from recipes.core.generation import generate_answers
from recipes.core.kill_switch import kill_if_asked
from recipes.core.progress import step_bar
from recipes.core.rundir import RunDir, atomic_write_text, weights_hash
from recipes.core.seeds import stream_seed
from reward import score

METHOD = "best-of-n"
SPEC_FILE = "best_of_n.json"
REWARD_SUBDIR = "reward_model"


@dataclasses.dataclass
class BestOfNConfig(RunArguments, AlignArguments, RewardArguments):
    """Best-of-n over the SFT model by the rewards. Training keys (dataset_*, lora_*, eval_every) are unused."""

    n: int = dataclasses.field(default=4, metadata={"help": "Answers sampled per prompt; the one the rewards score "
                                                    "highest is kept."})
    seed: int = dataclasses.field(
        default=0, metadata={"help": "Seeds the candidates' streams and the evaluation's (recipes/core/seeds.py)."})

    def __post_init__(self):
        if self.n <= 0:
            raise ValueError(f"key 'n' must be a positive integer, got {self.n}")
        self.check_reward_keys()
        self.check_alignment_keys()


def kl_bound(n: int) -> float:
    """log n - (n-1)/n: KL(best-of-n || base) never exceeds it, and equals it when no outcome has mass."""
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_kl(levels: list[tuple[float, float, bool]], n: int) -> float:
    """Exact KL(best-of-n || base) for a base distribution given as (reward, mass, is_atom) pieces: an atom is
    one answer with that probability; a non-atom piece is mass spread over answers none of which has mass of
    its own. Best-of-n picks the highest reward (an atom's ties go to the first drawn, so within a group of
    equal reward it keeps the base's proportions). With F the base's reward CDF, best-of-n gives an atom
    F(t)^n - F(t-)^n and has density n F^(n-1) on the rest, whence the two terms below."""

    def spread(u: float) -> float:  # integral of n u^(n-1) log(n u^(n-1)) du from 0
        return 0.0 if u <= 0 else u ** n * (math.log(n) + (n - 1) * math.log(u) - (n - 1) / n)

    kl, below = 0.0, 0.0
    pieces = sorted(levels, key=lambda piece: (piece[0], piece[2]))  # at equal reward, spread mass first
    i = 0
    while i < len(pieces):
        reward, mass, atom = pieces[i]
        if not atom:
            kl += spread(below + mass) - spread(below)
            below += mass
            i += 1
            continue
        group = mass  # atoms of equal reward share best-of-n's mass in proportion
        while i + 1 < len(pieces) and pieces[i + 1][2] and pieces[i + 1][0] == reward:
            i += 1
            group += pieces[i][1]
        chosen = (below + group) ** n - below ** n
        if group > 0 and chosen > 0:
            kl += chosen * math.log(chosen / group)
        below += group
        i += 1
    return kl


def estimated_kl(candidates: list[tuple], log_probs: list[float | None], rewards: list[float]) -> float:
    """KL(best-of-n || SFT) for one prompt from its n candidates: each answer's token ids, its SFT log-probability
    (only read for answers drawn twice or more; None elsewhere is fine) and the reward it was chosen by. An
    answer drawn twice or more is an atom with its exact SFT probability; the mass left is spread evenly over
    the draws seen once, at their rewards (`best_of_n_kl`)."""
    n = len(candidates)
    counts: dict[tuple, int] = {}
    first: dict[tuple, int] = {}
    for k, ids in enumerate(candidates):
        counts[ids] = counts.get(ids, 0) + 1
        first.setdefault(ids, k)
    atoms = {ids: math.exp(log_probs[first[ids]]) for ids in first if counts[ids] > 1}
    rest = max(0.0, 1.0 - sum(atoms.values()))
    # The rest of the mass is what the draws seen once stand for (all draws, if every answer repeated)
    spread = [k for k, ids in enumerate(candidates) if counts[ids] == 1] or list(range(n))
    levels = [(rewards[first[ids]], mass, True) for ids, mass in atoms.items()]
    levels += [(rewards[k], rest / len(spread), False) for k in spread]
    return best_of_n_kl(levels, n)


def best_of(scores: list[list[float]]) -> list[int]:
    """Index of the highest score in each row (the first on a tie)."""
    return [max(range(len(row)), key=lambda k: (row[k], -k)) for row in scores]


def sample_candidates(evaluator, n: int, seed: int, process=None) -> list[list]:
    """All n candidates [candidate][slot]: this process samples its share (candidate k on process k mod W), and
    the shares are gathered on every process, in candidate order."""
    world, rank = (process.num_processes, process.process_index) if process else (1, 0)
    mine = range(rank, n, world)
    if world > 1:
        print(f"{METHOD}: process {rank + 1} of {world} samples candidates {', '.join(str(k) for k in mine)}",
              flush=True)
    drawn = []
    bar = step_bar(len(mine), f"{METHOD} samples")
    for k in mine:
        kill_if_asked(k + 1)
        settings = {**evaluator.generation, "seed": stream_seed(seed, "best-of-n/candidate", k)}
        drawn.append((k, generate_answers(evaluator.sft_model, evaluator.tokenizer, evaluator.prompts, **settings)))
        bar.update()
    bar.close()
    if world > 1:
        from accelerate.utils import gather_object

        drawn = gather_object(drawn)
    return [answers for _, answers in sorted(drawn, key=lambda pair: pair[0])]


def sample_and_choose(evaluator, reward_model, n: int, seed: int, reward, process=None):
    """(chosen answers, proxy scores [slot][candidate], the rewards the choice maximised [slot][candidate], chosen
    index per slot, all candidates [candidate][slot]). `reward(prompts, answers, proxy)`: what chooses, given the
    proxy's scores of the answers (`reward_of`)."""
    samples = sample_candidates(evaluator, n, seed, process)
    proxy = [score(reward_model, evaluator.tokenizer, evaluator.prompts, [a.text for a in answers],
                   ended=[a.ended for a in answers], batch_size=evaluator.batch_size) for answers in samples]
    chooser = [reward(evaluator.prompts, answers, scores) for answers, scores in zip(samples, proxy)]
    per_prompt = [list(column) for column in zip(*proxy)]
    chosen_by = [list(column) for column in zip(*chooser)]
    chosen = best_of(chosen_by)
    return [samples[k][i] for i, k in enumerate(chosen)], per_prompt, chosen_by, chosen, samples


def reward_of(config, functions):
    """What best-of-n maximises: the weighted `reward_funcs`, the proxy's from the scores already computed for the
    record (less `missing_eos_penalty` for an answer cut off before its end, as the proxy reward function does)."""
    def reward(prompts, answers, proxy) -> list[float]:
        total = [0.0] * len(answers)
        for spec, function, weight in zip(config.reward_funcs, functions, config.weights):
            if spec == "proxy":
                values = [s - (config.missing_eos_penalty or 0.0) * (not a.ended) for s, a in zip(proxy, answers)]
            else:
                values = combined([function], [1.0])(prompts, answers)
            total = [t + weight * v for t, v in zip(total, values)]
        return total

    return reward


def save_policy(run, sft_model, tokenizer, reward_model, spec: dict) -> None:
    """model/: the SFT model and tokenizer, the reward model under reward_model/, and best_of_n.json."""
    run.save_model(sft_model, tokenizer)
    reward_dir = run.model_dir / REWARD_SUBDIR
    reward_model.save_pretrained(str(reward_dir))
    tokenizer.save_pretrained(str(reward_dir))
    atomic_write_text(run.model_dir / SPEC_FILE, json.dumps(spec, indent=2) + "\n")


def main(config: BestOfNConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    started = time.time()
    process = process_state()
    parents = resolve_parents(config, needs_reward=True)
    bound = kl_bound(config.n)
    run = claim_run(RunDir.for_config(config, run_name(config, METHOD)), lambda: start_run(config, METHOD, parents, data={
        "source": None, "fingerprint": fingerprint(config.eval_prompts, split=config.eval_prompts_split),
        "training": "none: best-of-n samples the SFT model and keeps the reward model's favourite",
        "n": config.n, "kl": f"estimated from the candidates and the SFT model's log-probabilities (estimated_kl); "
                             f"kl_bound = log n - (n-1)/n = {bound:.6f} is an upper bound"}), process)
    sft_model, tokenizer = load_policy(parents.sft_dir)
    reward_model = load_reward_model(parents.reward_dir)
    evaluator = build_evaluator(config, sft_model, tokenizer, reward_model, parents=parents)  # the baseline: cached
    if not process.is_main_process:
        sample_candidates(evaluator, config.n, config.seed, process)  # its share; the main process does the rest
        return {}
    reward_funcs = build_rewards(config, reward_model=reward_model, reward_tokenizer=tokenizer, tokenizer=tokenizer,
                                 batch_size=evaluator.batch_size)
    answers, proxy, chosen_by, chosen, samples = sample_and_choose(evaluator, reward_model, config.n, config.seed,
                                                                   reward_of(config, reward_funcs), process)
    kl = candidates_kl(sft_model, evaluator.prompt_ids, samples, chosen_by, config.n,
                       temperature=evaluator.temperature, batch_size=evaluator.batch_size,
                       pad_token_id=tokenizer.pad_token_id)

    metrics, rows = evaluator.evaluate_answers(answers, kl=(kl, None))
    for row, scores, k in zip(rows, proxy, chosen):
        row["proxy_samples"], row["chosen"] = scores, k
    metrics.update({
        "kl_bound": bound,
        "n": config.n,
        "best_proxy_reward": sum(s[k] for s, k in zip(proxy, chosen)) / len(proxy),  # the scoring pass that chose
        **{f"sft_{k}": v for k, v in evaluator.sft_metrics().items()},
        "tokens_generated": sum(a.num_tokens for answers_k in samples for a in answers_k),
        "reward_funcs": "+".join(config.reward_funcs),
        "reward_queries": len(evaluator.prompts) * config.n if config.uses_proxy else 0,
        "preference_labels": 0,
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
        "kl": kl, "kl_bound": bound, "missing_eos_penalty": config.missing_eos_penalty,
        "reward_funcs": list(config.reward_funcs), "reward_weights": config.weights,
    })
    metrics["wall_time_s"] = round(time.time() - started, 2)
    record_per_prompt(run, evaluator)
    run.finish(metrics)
    print(f"wrote {run.path}  best-of-{config.n}: {with_sft(metrics)}  proxy {metrics['sft_proxy_reward']:+.3f} "
          f"-> {metrics['best_proxy_reward']:+.3f} (KL an estimate; bound {bound:.3f})")
    return metrics


def candidates_kl(sft_model, prompt_ids, samples, rewards, n: int, *, temperature: float = 1.0,
                  batch_size: int = 32, pad_token_id: int = 0) -> float:
    """Mean over answer slots of `estimated_kl` from the slot's first n candidates (`samples[k][slot]`, chosen by
    `rewards[slot][k]`). Only answers drawn twice or more in a slot need their SFT log-probability: those are
    the ones scored."""
    slots = range(len(prompt_ids))
    ids = [[tuple(samples[k][i].token_ids) for k in range(n)] for i in slots]
    repeated = [(i, k) for i in slots for k in range(n) if ids[i].count(ids[i][k]) > 1 and ids[i].index(ids[i][k]) == k]
    scored = answer_logprobs(sft_model, [prompt_ids[i] for i, _ in repeated], [list(ids[i][k]) for i, k in repeated],
                             temperature=temperature, batch_size=batch_size, pad_token_id=pad_token_id)
    log_probs = {(i, k): float(lp.double().sum()) for (i, k), lp in zip(repeated, scored)}
    return sum(estimated_kl(ids[i], [log_probs.get((i, k)) for k in range(n)], rewards[i][:n]) for i in slots) / len(slots)


CONFIG = BestOfNConfig  # the stage registry (recipes/core/stages.py) parses argv into this
