"""Reward functions by name (alignment/rewards.py): what each built-in returns on hand-made answers, the weighted
sum, the user's own functions imported from the working directory, and bad specs stopping with one line that
names the spec, before anything loads or, for what a function returns, the first time it is called."""

import types

import pytest

from alignment.online import as_answered
from alignment.rewards import RewardArguments, build, checked, combined, resolve
from recipes.core.cli import main as rlhf_lab
from recipes.core.errors import UserError
from recipes.core.generation import Answer
from tests.conftest import REPO

GRPO = str(REPO / "recipes/smoke/align-grpo.yaml")
MATH = [{"role": "user", "content": "What is 12 + 7?"}]
CHAT = [{"role": "user", "content": "Hello!"}]


class Tokenizer:
    eos_token_id, pad_token_id = 5, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def functions(*specs, weights=None, penalty=1.0):
    keys = types.SimpleNamespace(reward_funcs=list(specs), missing_eos_penalty=penalty)
    return build(keys, reward_model=None, reward_tokenizer=None, tokenizer=Tokenizer(), batch_size=8)


def assistant(text):
    return [{"role": "assistant", "content": text}]


def test_the_math_verifier_scores_the_exact_result_only_and_other_families_zero():
    verifier, = functions("gold:math")
    prompts = [MATH, MATH, MATH, CHAT]
    answers = ["12 + 7 = 19.", "It is 20.", "19", "Hello! How can I help you today?"]
    assert verifier(prompts, [assistant(a) for a in answers]) == [1.0, 0.0, 1.0, 0.0]
    assert verifier.__name__ == "gold_math"


def test_gold_charges_a_missing_end_of_turn_read_from_the_completion_ids():
    gold, = functions("gold")
    ended, cut = gold([MATH, MATH], [assistant("12 + 7 = 19.")] * 2, completion_ids=[[9, 9, 5], [9, 9, 9]])
    assert ended == pytest.approx(1.0) and cut < ended


def test_length_is_minus_the_tokens_of_the_answer():
    length, = functions("length")
    assert length([MATH, MATH], [assistant("a b c"), assistant("a")], completion_ids=[[1, 2, 3, 5], [1, 5]]) == [-4, -2]
    assert length([MATH], [assistant("a b c")]) == [-3.0]  # no ids: the tokenizer counts


def test_the_weighted_sum_is_what_trl_computes(tmp_path, monkeypatch):
    answers = [Answer("12 + 7 = 19.", True, 3, [9, 9, 5]), Answer("It is 20", False, 3, [9, 9, 9])]
    reward = combined(functions("gold:math", "length"), [2.0, 0.5])
    assert reward([MATH, MATH], answers) == [2.0 * 1 + 0.5 * -3, 2.0 * 0 + 0.5 * -3]


def test_a_users_function_is_imported_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(prompts, completions, **kwargs):\n"
        "    return [-len(c[0]['content']) / 10 for c in completions]\n"
        "def nan(prompts, completions, **kwargs):\n    return [float('nan')] * len(completions)\n"
        "def short(prompts, completions, **kwargs):\n    return [1.0]\n"
        "def words(prompts, completions, **kwargs):\n    return ['many'] * len(completions)\n"
        "def positional(prompts, completions):\n    return [0.0] * len(completions)\n"
        "def family_aware(completions, family, **kwargs):\n    return [float(f == 'math') for f in family]\n"
        "async def later(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    brevity, = functions("my_rewards:brevity")
    assert brevity([MATH, MATH], [assistant("12345"), assistant("1234567890")], trainer_state=None) == [-0.5, -1.0]
    for spec, message in (("my_rewards:nan", "returned nan"), ("my_rewards:short", "returned 1 values for 2"),
                          ("my_rewards:words", "one number per completion")):
        function, = functions(spec)
        with pytest.raises(UserError, match=f"'{spec}' {message}" if "returned" in message else message):
            function([MATH, MATH], [assistant("a"), assistant("b")])
    with pytest.raises(ValueError, match="expected TRL's reward-function signature"):
        resolve("my_rewards:positional")
    with pytest.raises(ValueError, match="'my_rewards:later' is an async function"):
        resolve("my_rewards:later")
    family_aware, = functions("my_rewards:family_aware")  # a dataset column by name, as TRL passes them
    assert family_aware([MATH, CHAT], [assistant("19"), assistant("hi")], family=["math", "chat"]) == [1.0, 0.0]
    with pytest.raises(UserError, match="'my_rewards:family_aware' could not be called"):
        family_aware([MATH], [assistant("19")])  # PPO and best-of-n pass no dataset columns


@pytest.mark.parametrize("spec, message", [
    ("human", "unknown reward 'human'"),
    ("gold:poetry", "'gold:poetry' names no world family"),
    ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
    ("recipes.core.seeds:no_such_function", "has no function 'no_such_function'"),
])
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve(spec)


def test_weights_must_match_the_functions():
    keys = RewardArguments(reward_funcs=["proxy", "gold:math"], reward_weights=[1.0])
    with pytest.raises(ValueError, match="1 weights for 2 reward_funcs"):
        keys.check_reward_keys()
    keys = RewardArguments(reward_funcs=["proxy", "gold:math"], reward_weights=[1.0, float("nan")])
    with pytest.raises(ValueError, match="finite"):
        keys.check_reward_keys()
    assert RewardArguments(reward_funcs=["proxy", "length"]).weights == [1.0, 1.0]


def test_checked_names_a_function_by_its_name_for_trls_logs():
    assert checked("pkg.mod:fn", lambda prompts, completions, **kw: [0.0]).__name__ == "<lambda>"


def test_online_dpos_padded_completions_are_cut_as_answered():
    assert as_answered([[7, 8, 5, 0, 0], [7, 8, 9, 0, 0], [7, 5]], eos_token_id=5, pad_token_id=0) \
        == [[7, 8, 5], [7, 8, 9], [7, 5]]
    assert as_answered([[7, 5, 5]], eos_token_id=5, pad_token_id=5) == [[7, 5]]  # pad = eos: cut at the first


@pytest.mark.parametrize("flags, named", [
    (["--reward_funcs", "proxy", "gold:poetry"], ["'reward_funcs'", "'gold:poetry'"]),
    (["--reward_funcs", "no_such_module_here:f"], ["'reward_funcs'", "cannot import 'no_such_module_here'"]),
    (["--reward_funcs", "proxy", "gold", "--reward_weights", "1.0"], ["'reward_weights'", "1 weights for 2"]),
])
def test_bad_specs_stop_the_cli_with_one_line(flags, named, tmp_path, capsys):
    assert rlhf_lab(["align", "--method", "grpo", "--config", GRPO, "--runs_root", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(name in err[0] for name in named), err
    assert not (tmp_path / "smoke").exists()


def test_a_function_returning_nan_stops_training_with_one_line(smoke_runs, smoke_reward, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_rewards.py").write_text(
        "def sometimes_nan(prompts, completions, **kwargs):\n"
        "    return [float('nan')] + [0.0] * (len(completions) - 1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert rlhf_lab(["align", "--method", "grpo", "--config", GRPO, "--runs_root", str(smoke_runs),
                     "--recipe", "smoke-nan-reward", "--sft_model_name_or_path", str(smoke_runs / "smoke/sft/model"),
                     "--reward_model_name_or_path", str(smoke_reward / "model"),
                     "--reward_funcs", "proxy", "bad_rewards:sometimes_nan"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # after the loading bars of transformers, the one error line
    assert line.startswith("rlhf-lab align: error:") and "'bad_rewards:sometimes_nan' returned nan" in line, line
