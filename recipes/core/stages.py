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

    @property
    def command(self) -> str:
        return f"align --method {self.name}" if self.method else self.name

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def parse(self, argv: list[str]):
        """The stage's resolved config from `--config FILE` and flags, without running anything."""
        module = self.load()
        return parse_config(module.CONFIG, argv, self.command, description=module.__doc__.splitlines()[0])

    def run(self, argv: list[str]) -> int:
        """`rlhf-lab <command> argv`: parse, then run holding the recipe's lock."""
        run_locked(self.load().main, self.parse(argv))
        return 0


ALIGN_PARENTS = ("sft", "reward")

# In the order a recipe runs them.
STAGES = {spec.name: spec for spec in [
    StageSpec("pretrain", "base_model.pretrain", (), "pretrain the from-scratch GPT and train its tokenizer"),
    StageSpec("sft", "recipes.sft", ("pretrain",), "supervised fine-tuning on conversations, loss on assistant "
              "turns only"),
    StageSpec("reward", "reward.train", ("sft",), "train a reward model on preference pairs and check it against "
              "the gold reward"),
    StageSpec("overoptimization", "alignment.overoptimization", ("sft",),
              "reward over-optimisation (Gao et al. 2022): gold vs sqrt(KL) for weak proxies"),
]}

METHODS = {spec.name: spec for spec in [
    StageSpec("dpo", "alignment.dpo", ALIGN_PARENTS, "DPO on preference pairs (TRL's DPOTrainer)", method=True),
    StageSpec("kto", "alignment.kto", ALIGN_PARENTS, "KTO on answers marked desirable or not", method=True),
    StageSpec("grpo", "alignment.grpo", ALIGN_PARENTS, "GRPO against the proxy or the gold reward", method=True),
    StageSpec("rloo", "alignment.rloo", ALIGN_PARENTS, "RLOO against the proxy or the gold reward", method=True),
    StageSpec("ppo", "alignment.ppo", ALIGN_PARENTS, "PPO with a value head and a per-token KL penalty",
              method=True),
    StageSpec("best-of-n", "alignment.best_of_n", ALIGN_PARENTS, "best-of-n sampling against the proxy, no "
              "training", method=True),
]}
