"""The stage registry: every stage of the lab, where its code lives and which stages it builds on.

The CLI, the runner and the tests read this one table. A stage is a module exposing `CONFIG` (its config
dataclass, keys named as in TRL/transformers) and `main(config) -> metrics`, which reads setup -> train ->
save; `rlhf-lab <command>` parses `--config FILE` and flags into a CONFIG, then runs `main` holding the
recipe's lock. Modules are named, not imported, so the core depends on no stage and `rlhf-lab --help`
stays instant.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from recipes.core.config import parse_config
from recipes.core.lock import run_locked


@dataclasses.dataclass(frozen=True)
class StageSpec:
    name: str  # the stage's run directory under <runs_root>/<recipe>/ and its recipe file <name>.yaml
    module: str  # exposes CONFIG and main(config) -> metrics
    parents: tuple[str, ...]  # the stages whose models it starts from or scores with
    summary: str
    method: bool = False  # an alignment method: `rlhf-lab align --method <name>`, recipe file align-<name>.yaml
    family: str | None = None  # methods that share one module and differ by their config (GRPO's): its name there
    defaults: tuple[str, ...] = ()  # flags given before the user's (a stage that runs another's module as itself)

    @property
    def command(self) -> str:
        return f"align --method {self.name}" if self.method else self.name

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def config_class(self, module: ModuleType) -> type:
        return module.CONFIGS[self.family] if self.family else module.CONFIG

    def parse(self, argv: list[str]):
        """The stage's resolved config from `--config FILE` and flags, without running anything."""
        module = self.load()
        return parse_config(self.config_class(module), [*self.defaults, *argv], self.command,
                            description=module.__doc__.splitlines()[0])

    def run(self, argv: list[str]) -> int:
        """`rlhf-lab <command> argv`: parse, then run holding the recipe's lock."""
        run_locked(self.load().main, self.parse(argv))
        return 0


def method_of(name: str) -> str | None:
    """The method an alignment run or recipe file `align-<name>` runs: <name> itself when it is a method, else
    the longest method <name> starts with, then a dash (a variant: align-grpo-rlvr.yaml runs grpo with keys of its
    own, into runs/<recipe>/align-grpo-rlvr/); None when there is none."""
    if name in METHODS:
        return name
    prefixes = [m for m in METHODS if name.startswith(f"{m}-")]
    return max(prefixes, key=len) if prefixes else None


ALIGN_PARENTS = ("sft", "reward")
JUDGE_STAGE = "judge"  # the reward stage under this name trains a recipe's judge; `judge_model_name_or_path: judge` reads it

# In the order a recipe runs them.
STAGES = {spec.name: spec for spec in [
    StageSpec("pretrain", "base_model.pretrain", (), "pretrain the from-scratch GPT and train its tokenizer"),
    StageSpec("sft", "recipes.sft", ("pretrain",), "supervised fine-tuning on conversations, loss on assistant "
              "turns only"),
    StageSpec("reward", "reward.train", ("sft",), "train a reward model on preference pairs and check it against "
              "the gold reward"),
    StageSpec(JUDGE_STAGE, "reward.train", ("sft",), "train a judge: a reward model apart from the proxy, that scores "
              "answers where there is no gold (judge_model_name_or_path: judge)", defaults=("--run_name", JUDGE_STAGE)),
    StageSpec("overoptimization", "alignment.overoptimization", ("sft",),
              "reward over-optimisation (Gao et al. 2022): gold vs sqrt(KL) for weak proxies"),
    StageSpec("annotator-bias", "alignment.annotator_bias", ("sft",),
              "annotators' length bias: reward models on biased labels, methods optimised against them, a mitigation"),
]}

METHODS = {spec.name: spec for spec in [
    StageSpec("dpo", "alignment.dpo", ALIGN_PARENTS, "DPO on preference pairs (TRL's DPOTrainer)", method=True),
    StageSpec("kto", "alignment.kto", ALIGN_PARENTS, "KTO on answers marked desirable or not", method=True),
    StageSpec("simpo", "alignment.simpo", ALIGN_PARENTS, "SimPO: reference-free, length-normalised margin loss "
              "(TRL's CPO trainer)", method=True),
    StageSpec("orpo", "alignment.orpo", ALIGN_PARENTS, "ORPO: SFT loss plus an odds-ratio preference term, no "
              "reference", method=True),
    StageSpec("grpo", "alignment.grpo", ALIGN_PARENTS, "GRPO, the original sequence-normalised loss",
              method=True, family="grpo"),
    StageSpec("dr-grpo", "alignment.grpo", ALIGN_PARENTS, "Dr. GRPO: a constant normaliser, no std scaling",
              method=True, family="dr-grpo"),
    StageSpec("dapo", "alignment.grpo", ALIGN_PARENTS, "DAPO: token-level loss, clip-higher, overlong masking",
              method=True, family="dapo"),
    StageSpec("gspo", "alignment.grpo", ALIGN_PARENTS, "GSPO: sequence-level importance ratios",
              method=True, family="gspo"),
    StageSpec("rloo", "alignment.rloo", ALIGN_PARENTS, "RLOO: REINFORCE with a leave-one-out baseline", method=True),
    StageSpec("online-dpo", "alignment.online_dpo", ALIGN_PARENTS, "online DPO: pairs of the policy's own answers "
              "ranked by the rewards", method=True),
    StageSpec("ppo", "alignment.ppo", ALIGN_PARENTS, "PPO with a value head and a per-token KL penalty",
              method=True),
    StageSpec("best-of-n", "alignment.best_of_n", ALIGN_PARENTS, "best-of-n sampling against the proxy, no "
              "training", method=True),
]}
