"""Gold evaluation during SFT: a TrainerCallback that answers fixed held-out prompts and logs their gold scores.

It runs once before training (the pretrained model, prompted the same way, so the gain shows) and
at every evaluation. Scalars go to TensorBoard under `gold/...` at the global step:

    gold/reward, gold/end_of_turn_rate, gold/length, gold/family/<family>,
    gold/math_accuracy, gold/harmful_compliance, gold/over_refusal

and the prompt / answer / score rows as text under `gold/samples`. Events are written through the
trainer's own TensorBoard writer when it has one, else through a SummaryWriter on the run's tb/.
"""

from __future__ import annotations

import json

from transformers import TrainerCallback

from recipes.core.gold_eval import gold_evaluate, rows_markdown
from recipes.core.rundir import RunDir, atomic_write_text


def scalar_tag(key: str) -> str:
    """gold_eval's metric names as TensorBoard tags: gold_reward -> gold/reward, gold/math -> gold/family/math."""
    if key == "gold_reward":
        return "gold/reward"
    if key.startswith("gold/"):
        return "gold/family/" + key[len("gold/"):]
    return "gold/" + key


class SFTGoldEvalCallback(TrainerCallback):
    def __init__(self, tokenizer, prompts: list, *, run: RunDir, max_new_tokens: int, batch_size: int):
        self.tokenizer, self.prompts, self.run = tokenizer, list(prompts), run
        self.generation = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
        self.pretrained: dict | None = None  # gold metrics before any SFT step
        self.latest: dict | None = None  # gold metrics at the last evaluation
        self.trainable_parameters: int | None = None
        self._tensorboard = None  # the trainer's TensorBoardCallback, if it reports there
        self._own_writer = None
        self._done_steps: set[int] = set()

    @property
    def step0_path(self):
        return self.run.checkpoints_dir / "gold_step0.json"  # kept beside the checkpoints, so --resume reuses it

    def attach(self, trainer) -> None:
        from transformers.integrations import TensorBoardCallback

        self._tensorboard = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)),
                                 None)
        self.trainable_parameters = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    def _writer(self, args):
        if self._tensorboard is not None:
            if self._tensorboard.tb_writer is None:
                self._tensorboard._init_summary_writer(args)
            if self._tensorboard.tb_writer is not None:
                return self._tensorboard.tb_writer
        if self._own_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._own_writer = SummaryWriter(str(self.run.tb_dir))
        return self._own_writer

    def _evaluate(self, args, state, model) -> dict | None:
        if not self.prompts or not state.is_world_process_zero or state.global_step in self._done_steps:
            return None
        self._done_steps.add(state.global_step)
        metrics, rows = gold_evaluate(model, self.tokenizer, self.prompts, **self.generation)
        writer = self._writer(args)
        for key, value in metrics.items():
            writer.add_scalar(scalar_tag(key), value, state.global_step)
        writer.add_text("gold/samples", rows_markdown(rows), state.global_step)
        writer.flush()
        self.latest = metrics
        gold = f"gold reward {metrics['gold_reward']:+.3f}  " if "gold_reward" in metrics else ""
        print(f"step {state.global_step}: {gold}end of turn {metrics['end_of_turn_rate']:.0%}")
        return metrics

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.step0_path.is_file():  # a resumed run: the pretrained model was scored before the interruption
            self.pretrained = json.loads(self.step0_path.read_text())
        elif state.global_step == 0:
            self.pretrained = self._evaluate(args, state, model)
            if self.pretrained is not None:
                atomic_write_text(self.step0_path, json.dumps(self.pretrained, indent=2))

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self._evaluate(args, state, model)

    def on_train_end(self, args, state, control, **kwargs):
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None
