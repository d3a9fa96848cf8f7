"""Looking at models: `rlhf-lab sample` (prompts side by side) and `rlhf-lab chat`, on the smoke runs."""

from pathlib import Path

from alignment.answerers import load_answerer
from alignment.chat import fit_history
from recipes.core.cli import main as rlhf_lab
from recipes.core.generation import render_prompts

REPO = Path(__file__).resolve().parents[1]
SMOKE_EVAL = "world:eval?size=smoke&seed=0"


def test_sample_answers_a_family_side_by_side_with_gold_and_proxy_scores(smoke_sft, smoke_reward, tmp_path, capsys):
    runs = smoke_sft.parent
    out = tmp_path / "side.md"
    assert rlhf_lab(["sample", "--prompts", "math", "-n", "3", "--max_new_tokens", "16", "--eval_prompts", SMOKE_EVAL,
                     "--out", str(out), str(runs / "pretrain"), str(runs / "sft")]) == 0
    text = capsys.readouterr().out
    blocks = [b for b in text.split("## ") if b[:2].rstrip(".").isdigit()]
    assert len(blocks) == 3
    for block in blocks:
        assert any(ch.isdigit() for ch in block.splitlines()[0])  # a math prompt: it names numbers
        assert block.count("**pretrain** (gold ") == 1 and block.count("**sft** (gold ") == 1
        assert block.count("(math) | proxy ") == 2  # scored by gold as math, and by the recipe's reward model
    assert f"(proxy: {runs / 'reward' / 'model'})" in text
    assert out.read_text().strip() == text.split("\n(proxy:")[0].strip()


def test_sample_reads_a_prompts_file_and_says_when_prompts_are_not_from_the_world(smoke_sft, capsys):
    assert rlhf_lab(["sample", "--prompts", str(REPO / "tests/fixtures/data/prompts.jsonl"), "-n", "2",
                     "--max_new_tokens", "8", str(smoke_sft)]) == 0
    text = capsys.readouterr().out
    assert text.count("gold - (not a world prompt)") == 2


def test_sample_refuses_an_unknown_family_and_a_missing_run(smoke_sft, tmp_path, capsys):
    assert rlhf_lab(["sample", "--prompts", "poems", str(smoke_sft)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither a file nor a world family" in err and "math" in err
    assert rlhf_lab(["sample", "--prompts", "math", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_chat_answers_each_message_with_its_scores_and_resets(smoke_sft, smoke_reward, monkeypatch, capsys):
    lines = iter(["What is 2 + 3?", "/reset", "Hello!", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert rlhf_lab(["chat", str(smoke_sft), "--max_new_tokens", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    answers = [i for i, line in enumerate(out) if line.startswith("sft> ")]
    assert len(answers) == 2
    for i in answers:
        assert out[i + 1].strip().startswith("[gold ") and "| proxy " in out[i + 1]
    assert "(math)" in out[answers[0] + 1] and "(chat)" in out[answers[1] + 1]
    assert "(new conversation)" in out


def test_chat_drops_the_oldest_turns_when_the_conversation_outgrows_the_context(smoke_sft):
    answerer = load_answerer(smoke_sft)
    long = "Tell me a short happy story about a cat in the garden. " * 3
    messages = []
    for _ in range(8):
        messages += [{"role": "user", "content": long}, {"role": "assistant", "content": long}]
    messages.append({"role": "user", "content": "What is 2 + 3?"})
    kept = fit_history(answerer, messages, max_new_tokens=32)
    assert kept[-1]["content"] == "What is 2 + 3?" and kept[0]["role"] == "user" and len(kept) < len(messages)
    assert len(render_prompts(answerer.tokenizer, [kept])[0]) + 32 <= answerer.context
