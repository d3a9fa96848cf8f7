"""Bad input, through the CLI a user runs: one clear line, a non-zero exit, and every earlier output untouched.

Each case runs one command on the session's smoke runs root, against a recipe of its own (`bad`) or, where
the mistake is about the finished smoke runs themselves, against those. Every case checks that:
- the command exits 2, prints no traceback, and its error is one line naming the file, row or key and what
  was expected (progress bars of model loading may come before it);
- the finished smoke runs (pretrain, sft, reward) are byte for byte as before;
- the `bad` recipe holds no finished run afterwards.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.core.cli import main as rlhf_lab

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes/smoke"
FIXTURES = REPO / "tests/fixtures/data"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(smoke_reward, smoke_runs):
    """The smoke runs root with pretrain, sft and reward finished: the outputs no bad input may touch."""
    return smoke_runs


def write(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


LONG = " ".join(["word"] * 400)

# id: (argv with {runs}, {tmp}, {pretrain}, {sft}, {reward} and {file:NAME} filled in, what the line must say)
# A {file:NAME=CONTENT} placeholder writes CONTENT (unescaped) into tmp/NAME first.
CASES = {
    # Missing and empty files
    "missing data file": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                           "--dataset_name", "{tmp}/nope.jsonl"], "nope.jsonl"),
    "empty data file": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                         "--dataset_name", "{file:empty/train.jsonl=}"], "train.jsonl: the file holds no rows (it is empty)"),
    "missing config file": (["sft", "--config", "{tmp}/nope.yaml"], "nope.yaml: config file not found"),
    "empty prompts file for sample": (["sample", "--prompts", "{file:prompts.jsonl=}", "{runs}/smoke/sft"],
                                      "prompts.jsonl"),
    # Malformed jsonl rows, wrong or missing columns for each data shape
    "malformed jsonl row": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                             "--dataset_name", "{fixture}/bad_json_line.jsonl"], "bad_json_line.jsonl"),
    "conversation with an unknown role": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                                           "--dataset_name", "{fixture}/bad_messages_role.jsonl"], "role"),
    "messages as a string": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                              "--dataset_name", "{fixture}/bad_messages_string.jsonl"], "bad_messages_string.jsonl"),
    "alpaca row without output": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                                   "--dataset_name", "{fixture}/bad_alpaca_missing_output.jsonl"], "output"),
    "sharegpt turn from nobody": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                                   "--dataset_name", "{fixture}/bad_sharegpt_from.jsonl"], "from"),
    "rows of no known shape": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}",
                                "--dataset_name", "{fixture}/unknown_shape.jsonl"], "unknown_shape.jsonl"),
    "pairs without rejected": (["reward", "--config", "{smoke}/reward.yaml", "--model_name_or_path", "{sft}",
                                "--dataset_name", "{fixture}/bad_pairs_missing_rejected.jsonl"], "rejected"),
    "pair row of the wrong type": (["reward", "--config", "{smoke}/reward.yaml", "--model_name_or_path", "{sft}",
                                    "--dataset_name", "{fixture}/bad_pairs_row.jsonl"], "bad_pairs_row.jsonl"),
    "hh transcript without turns": (["reward", "--config", "{smoke}/reward.yaml", "--model_name_or_path", "{sft}",
                                     "--dataset_name", "{fixture}/bad_hh_transcript.jsonl"], "bad_hh_transcript.jsonl"),
    "ultrafeedback bad prompt": (["reward", "--config", "{smoke}/reward.yaml", "--model_name_or_path", "{sft}",
                                  "--dataset_name", "{fixture}/bad_ultrafeedback_prompt.jsonl"], "prompt"),
    "plain text where pairs are expected": (["align", "--method", "dpo", "--config", "{smoke}/align-dpo.yaml",
                                             "--sft_model_name_or_path", "{sft}", "--reward_model_name_or_path",
                                             "{reward}", "--dataset_name", "{fixture}/text.jsonl"], "text.jsonl"),
    "conversations where pairs are expected": (["reward", "--config", "{smoke}/reward.yaml", "--model_name_or_path",
                                                "{sft}", "--dataset_name", "{fixture}/messages.jsonl"], "messages.jsonl"),
    "text column missing for pretraining": (["pretrain", "--config", "{smoke}/pretrain.yaml",
                                             "--dataset_name", "{fixture}/bad_text_column.jsonl"], "bad_text_column.jsonl"),
    "pairs where prompts are expected": (["align", "--method", "grpo", "--config", "{smoke}/align-grpo.yaml",
                                          "--sft_model_name_or_path", "{sft}", "--reward_model_name_or_path",
                                          "{reward}", "--dataset_name", "{fixture}/text.jsonl"], "text.jsonl"),
    # Non-UTF-8 text, a row longer than the context, an empty split after filtering
    "non-utf-8 text": (["pretrain", "--config", "{smoke}/pretrain.yaml", "--dataset_name",
                        "{file:latin1.txt=\xe9t\xe9 \xe0 la plage\n}"], "latin1.txt"),
    "every conversation longer than the context": (
        ["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{pretrain}", "--dataset_name",
         '{file:long/train.jsonl={"messages": [{"role": "user", "content": "%s"}, {"role": "assistant", "content": "ok"}]}}'
         % LONG], "fits in max_length"),
    "missing split": (["pretrain", "--config", "{smoke}/pretrain.yaml", "--dataset_name", "{fixture}/splits",
                       "--dataset_test_split", "nosuchsplit"], "nosuchsplit"),
    "max_length beyond the model's context": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path",
                                               "{pretrain}", "--max_length", "100000"], "max_length"),
    # Unknown and mistyped config keys, negative or zero sizes
    "unknown key in the yaml": (["sft", "--config", "{file:sft.yaml=lora_rank: 8\n}"], "unknown key 'lora_rank'"),
    "mistyped key on the command line": (["reward", "--config", "{smoke}/reward.yaml", "--learning_rat", "1e-3"],
                                         "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
    "value of the wrong type": (["align", "--method", "dpo", "--config", "{smoke}/align-dpo.yaml", "--beta", "strong"],
                                "strong"),
    "negative batch size": (["sft", "--config", "{smoke}/sft.yaml", "--per_device_train_batch_size", "-1"],
                            "per_device_train_batch_size"),
    "zero layers": (["pretrain", "--config", "{smoke}/pretrain.yaml", "--num_hidden_layers", "0"], "num_hidden_layers"),
    "zero best-of-n": (["align", "--method", "best-of-n", "--config", "{smoke}/align-best-of-n.yaml", "--n", "0"],
                       "'n'"),
    # Numbers no run could mean: not finite, absurdly large, dividing by zero when sampling, seeds numpy refuses
    "learning rate not a number": (["align", "--method", "dpo", "--config", "{smoke}/align-dpo.yaml",
                                    "--learning_rate", "nan"], "key 'learning_rate' must be a finite number, got nan"),
    "infinite beta": (["align", "--method", "kto", "--config", "{smoke}/align-kto.yaml", "--beta", "inf"],
                      "key 'beta' must be a finite number, got inf"),
    "absurd number of steps": (["sft", "--config", "{smoke}/sft.yaml", "--max_steps", "100000000000000"],
                               "key 'max_steps' is absurdly large"),
    "sampling temperature zero": (["align", "--method", "grpo", "--config", "{smoke}/align-grpo.yaml",
                                   "--temperature", "0"], "key 'temperature' must be positive, got 0.0"),
    "evaluation top_p zero": (["align", "--method", "ppo", "--config", "{smoke}/align-ppo.yaml", "--eval_top_p", "0"],
                              "key 'eval_top_p' must be in (0, 1]"),
    "no SFT baseline answers": (["align", "--method", "dpo", "--config", "{smoke}/align-dpo.yaml",
                                 "--eval_sft_samples_per_prompt", "0"], "key 'eval_sft_samples_per_prompt' must be positive"),
    "negative seed": (["pretrain", "--config", "{smoke}/pretrain.yaml", "--seed", "-1"], "key 'seed' must be in [0, 2**32)"),
    "export of a reward model": (["export", "--to", "llama", "{reward}", "{tmp}/exported"],
                                 "holds a GPTForSequenceClassification (model_type 'rlhf_lab_gpt'), expected a causal"),
    "sample from a reward model": (["sample", "{reward}", "--prompts", "math", "-n", "1"],
                                   "argument RUN_DIR: "),
    "a policy as sample's reward model": (["sample", "{sft}", "--prompts", "math", "-n", "1", "--reward_model", "{sft}"],
                                          "argument --reward_model: "),
    "unknown alignment method": (["align", "--method", "dpoo", "--config", "{smoke}/align-dpo.yaml"], "dpoo"),
    "yaml that is not a mapping": (["pretrain", "--config", "{file:pretrain.yaml=- a\n- b\n}"], "mapping"),
    # Stages out of order, parents that are not what they should be
    "sft before pretraining": (["sft", "--config", "{smoke}/sft.yaml"], "has no finished pretrain run"),
    "dpo before sft": (["align", "--method", "dpo", "--config", "{smoke}/align-dpo.yaml"], "has no finished sft run"),
    "reward before sft": (["reward", "--config", "{smoke}/reward.yaml"], "has no finished sft run"),
    "parent folder that is not a model": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path", "{tmp}"],
                                          "config.json"),
    "parent from another architecture": (["sft", "--config", "{smoke}/sft.yaml", "--model_name_or_path",
                                          "{file:gpt2/config.json={\"model_type\": \"gpt2\", \"architectures\": "
                                          "[\"GPT2ForTokenClassification\"]}}"],
                                         "holds a GPT2ForTokenClassification (model_type 'gpt2'), expected a causal"),
    "reward model as the policy": (["align", "--method", "dpo", "--config", "{smoke}/align-dpo.yaml",
                                    "--sft_model_name_or_path", "{reward}", "--reward_model_name_or_path", "{reward}"],
                                   "key 'sft_model_name_or_path'"),
    "policy as the reward model": (["align", "--method", "grpo", "--config", "{smoke}/align-grpo.yaml",
                                    "--sft_model_name_or_path", "{sft}", "--reward_model_name_or_path", "{sft}"],
                                   "expected a reward model"),
    "a finished stage run again": (["sft", "--config", "{smoke}/sft.yaml", "--recipe", "smoke"],
                                   "already holds a finished sft run"),
    "resume with nothing to resume": (["reward", "--config", "{smoke}/reward.yaml", "--recipe", "smoke", "--resume"],
                                      "nothing to resume"),
}


def fill(argv: list[str], tmp: Path, runs: Path) -> list[str]:
    values = {"runs": runs, "tmp": tmp, "smoke": SMOKE, "fixture": FIXTURES, "pretrain": runs / "smoke/pretrain/model",
              "sft": runs / "smoke/sft/model", "reward": runs / "smoke/reward/model"}
    out = []
    for arg in argv:
        if arg.startswith("{file:"):
            name, content = arg[len("{file:"):-1].split("=", 1)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            out.append(write(tmp, name, content.encode("latin-1") if name.endswith(".txt") else content))
            if name.endswith("config.json"):
                out[-1] = str((tmp / name).parent)
            if name.endswith("/train.jsonl"):  # a folder of splits: the same rows for validation
                write(tmp, name.replace("/train.jsonl", "/validation.jsonl"), content)
                out[-1] = str((tmp / name).parent)
        else:
            out.append(arg.format(**values))
    return out


def check_one_line(err: str, command: str, expected: str) -> str:
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"rlhf-lab {command}: error: ") and expected in line, line
    return line


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_with_one_line_and_touches_nothing(case, finished, tmp_path, capsys):
    argv, expected = CASES[case]
    argv = fill(argv, tmp_path, finished)
    if "--recipe" not in argv and argv[0] not in ("sample", "export"):
        argv += ["--recipe", "bad"]
    if argv[0] not in ("sample", "export"):
        argv += ["--runs_root", str(finished)]
    before = digest(finished / "smoke")
    capsys.readouterr()
    bad = finished / "bad"
    try:
        assert rlhf_lab(argv) == 2
        line = check_one_line(capsys.readouterr().err, argv[0], expected)
        print(f"{case}: {line}")
        assert digest(finished / "smoke") == before
        assert not any('"finished"' in p.read_text() for p in bad.rglob("manifest.json"))
    finally:
        shutil.rmtree(bad, ignore_errors=True)


def test_a_corrupted_checkpoint_is_named_and_the_run_kept(finished, tmp_path, capsys):
    """An interrupted run whose newest checkpoint is damaged: --resume names the file, and touches nothing."""
    runs = tmp_path / "runs"
    argv = ["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", str(finished / "smoke/pretrain/model"),
            "--max_steps", "4", "--save_steps", "2", "--eval_steps", "4", "--eval_num_prompts", "2",
            "--runs_root", str(runs)]
    assert rlhf_lab(argv) == 0
    run = runs / "smoke/sft"
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "running"  # as if killed after its last checkpoint
    (run / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(run / "model")
    weights = run / "checkpoints/checkpoint-4/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = digest(run)
    capsys.readouterr()
    assert rlhf_lab(argv + ["--resume"]) == 2
    check_one_line(capsys.readouterr().err, "sft", "checkpoint-4")
    assert digest(run) == before


def test_a_corrupted_manifest_is_named(finished, tmp_path, capsys):
    shutil.copytree(finished / "smoke/pretrain", tmp_path / "runs/smoke/pretrain")
    (tmp_path / "runs/smoke/pretrain/manifest.json").write_text('{"stage": "pretr')
    before = digest(tmp_path / "runs")
    assert rlhf_lab(["sft", "--config", str(SMOKE / "sft.yaml"), "--runs_root", str(tmp_path / "runs")]) == 2
    check_one_line(capsys.readouterr().err, "sft", "manifest.json: corrupted manifest")
    assert digest(tmp_path / "runs") == before


def test_a_full_disk_stops_with_one_line_and_keeps_the_finished_run(finished, tmp_path):
    """A write error (the file-size limit stands in for a full disk: the same failed write, and no root needed)
    while a finished stage is rerun: one line naming what could not be written, the finished run unchanged."""
    runs = tmp_path / "runs"
    shutil.copytree(finished / "smoke/pretrain", runs / "smoke/pretrain")
    shutil.copytree(finished / "smoke/sft", runs / "smoke/sft")
    before = digest(runs)

    def limit_file_size():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run(
        [sys.executable, "-m", "recipes.core.cli", "sft", "--config", str(SMOKE / "sft.yaml"), "--runs_root", str(runs),
         "--max_steps", "4", "--save_steps", "2", "--eval_num_prompts", "2", "--overwrite"],
        cwd=REPO, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    line = check_one_line(result.stderr, "sft", "cannot write")
    print(f"full disk: {line}")
    # the finished runs as they were; only the failed rerun's own folder is new
    assert {k: v for k, v in digest(runs).items() if not k.startswith("smoke/.sft.rerun")} == before
