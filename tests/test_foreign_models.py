"""Bring your own model: stages start from transformers models that are not the lab's GPT, with tokenizers of
their own, and what they save stays that architecture (tests/foreign_models.py builds them offline)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recipes.core.chat_format import (
    DEFAULT_CHAT_TEMPLATE,
    assistant_masks,
    load_chat_tokenizer,
    needs_lab_masks,
    with_assistant_masks,
)
from recipes.core.cli import main as rlhf_lab
from recipes.core.data import load_conversations
from recipes.core.errors import UserError
from recipes.core.model_dirs import resolve_model
from tests.foreign_models import build_llama_base, build_qwen

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke"
CONVERSATION = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."},
                {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome!"}]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    return build_qwen(tmp_path_factory.mktemp("qwen") / "model")


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    return build_llama_base(tmp_path_factory.mktemp("llama") / "model")


def architecture(model_dir: Path) -> str:
    return json.loads((model_dir / "config.json").read_text())["architectures"][0]


def weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "model.safetensors"))


# ----------------------------------------------------------------------------------------------
# Tokenizers


def test_chatml_ends_turns_with_im_end_and_gets_the_labs_masks(qwen):
    tokenizer = load_chat_tokenizer(qwen)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert needs_lab_masks(tokenizer)  # no markers, and not a template TRL can patch
    ids, mask = assistant_masks(tokenizer, CONVERSATION)
    assert ids == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    marked = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert marked == "2 + 3 = 5.<|im_end|>You're welcome!<|im_end|>"  # answers and their end of turn, nothing else


def test_a_template_that_rewrites_earlier_turns_stops_with_the_conversation_named(qwen, tmp_path):
    # Renders the last assistant turn differently from the same turn earlier on: no prefix holds.
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
                "{% if loop.last %}{{ '<|im_end|>' }}{% else %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    model = shutil.copytree(qwen, tmp_path / "model")
    tokenizer = load_chat_tokenizer(model)
    tokenizer.chat_template = template
    import datasets

    rows = datasets.Dataset.from_dict({"messages": [CONVERSATION[:2], CONVERSATION]})
    with pytest.raises(UserError, match=r"^chats.jsonl: the conversation starting 'What is 2 \+ 3\?': the chat "
                                        r"template does not render turn 2 "):
        with_assistant_masks(rows, tokenizer, "chats.jsonl")


def test_pad_is_not_the_end_of_turn_where_another_token_can_pad(qwen, tmp_path):
    # Llama 3's shape: a template ending turns with <|eot_id|>, eos <|end_of_text|>, no pad token. A reward model
    # reads its score at the last token that is not padding: padding with <|eot_id|> would hide a turn's end.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(qwen))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot_id|>", "<|end_of_text|>"]})
    tokenizer.eos_token, tokenizer.pad_token = "<|end_of_text|>", None
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
                               "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                               "{% endif %}")
    tokenizer.save_pretrained(tmp_path / "llama3-like")
    prepared = load_chat_tokenizer(tmp_path / "llama3-like")
    assert (prepared.eos_token, prepared.pad_token) == ("<|eot_id|>", "<|end_of_text|>")


def test_a_base_model_gets_the_documented_template(llama_base):
    tokenizer = load_chat_tokenizer(llama_base)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "</s>"
    text = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False)
    assert text == "<s>### User:\nWhat is 2 + 3?\n\n### Assistant:\n2 + 3 = 5.</s>\n\n"
    assert not needs_lab_masks(tokenizer)  # its own {% generation %} markers: TRL marks the answers
    out = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(marked, skip_special_tokens=False) == "2 + 3 = 5.</s>"


# ----------------------------------------------------------------------------------------------
# Stages


@pytest.fixture(scope="module")
def qwen_runs(qwen, tmp_path_factory) -> Path:
    """SFT and a reward model from the Qwen, through the CLI, once for the module: <runs>/smoke/{sft,reward}."""
    runs = tmp_path_factory.mktemp("qwen-runs")
    assert rlhf_lab(["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", str(qwen),
                     "--runs_root", str(runs), "--num_train_epochs", "2"]) == 0
    assert rlhf_lab(["reward", "--config", str(SMOKE / "reward.yaml"), "--runs_root", str(runs)]) == 0
    return runs


def test_sft_reward_and_dpo_start_from_a_qwen_and_keep_it(qwen, qwen_runs):
    sft = qwen_runs / "smoke" / "sft"
    metrics = json.loads((sft / "manifest.json").read_text())["metrics"]
    assert metrics["train_loss"] < metrics["initial_train_loss"]
    assert architecture(sft / "model") == "Qwen2ForCausalLM"
    saved = json.loads((sft / "model" / "tokenizer_config.json").read_text())
    assert saved["eos_token"] == "<|im_end|>"
    assert json.loads((sft / "model" / "generation_config.json").read_text())["eos_token_id"] == \
        load_chat_tokenizer(sft / "model").convert_tokens_to_ids("<|im_end|>")
    before, after = weights(qwen), weights(sft / "model")
    assert set(before) == set(after) and any((before[k] - after[k]).abs().max() > 0 for k in before)
    assert architecture(qwen_runs / "smoke" / "reward" / "model") == "Qwen2ForSequenceClassification"

    assert rlhf_lab(["align", "--method", "dpo", "--config", str(SMOKE / "align-dpo.yaml"),
                     "--runs_root", str(qwen_runs)]) == 0
    dpo = qwen_runs / "smoke" / "align-dpo" / "model"
    assert architecture(dpo) == "Qwen2ForCausalLM"
    sft_weights, dpo_weights = weights(sft / "model"), weights(dpo)
    assert any((sft_weights[k] - dpo_weights[k]).abs().max() > 0 for k in sft_weights)


@pytest.mark.parametrize("method", ["kto", "simpo", "orpo", "rloo", "online-dpo", "dapo", "best-of-n"])
def test_every_other_method_runs_on_the_qwen(method, qwen_runs):
    # dpo above; grpo and ppo under QLoRA below; dr-grpo and gspo are grpo with other keys
    assert rlhf_lab(["align", "--method", method, "--config", str(SMOKE / f"align-{method}.yaml"),
                     "--runs_root", str(qwen_runs)]) == 0
    run = qwen_runs / "smoke" / f"align-{method}"
    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    assert isinstance(metrics["gold_gain"], float) and isinstance(metrics["kl"], float)
    if method != "best-of-n":  # best-of-n saves no weights: its choice is made at answer time
        assert architecture(run / "model") == "Qwen2ForCausalLM"
        sft = weights(qwen_runs / "smoke" / "sft" / "model")
        assert any((sft[k] - v).abs().max() > 0 for k, v in weights(run / "model").items())


def test_sft_from_a_base_llama_saves_the_template_it_trained_with(llama_base, tmp_path):
    runs = tmp_path / "runs"
    prompts = tmp_path / "prompts.jsonl"  # not the world's: no gold, only end of turn and length
    prompts.write_text('{"prompt": "Write a haiku about rain."}\n{"prompt": "Why is the sky blue?"}\n')
    assert rlhf_lab(["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", str(llama_base),
                     "--runs_root", str(runs), "--max_steps", "4", "--eval_steps", "4",
                     "--eval_prompts", str(prompts)]) == 0
    model = runs / "smoke" / "sft" / "model"
    assert architecture(model) == "LlamaForCausalLM"
    assert load_chat_tokenizer(model).chat_template == DEFAULT_CHAT_TEMPLATE
    metrics = json.loads((runs / "smoke" / "sft" / "manifest.json").read_text())["metrics"]
    assert not any("gold" in key for key in metrics) and 0 <= metrics["end_of_turn_rate"] <= 1


# ----------------------------------------------------------------------------------------------
# The hub, offline


def test_a_hub_id_is_read_from_the_local_cache(qwen, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0" * 40
    cache = tmp_path / "hub"
    snapshot = cache / "models--lab--tiny-qwen" / "snapshots" / commit
    shutil.copytree(qwen, snapshot)
    (cache / "models--lab--tiny-qwen" / "refs").mkdir()
    (cache / "models--lab--tiny-qwen" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert resolve_model("lab/tiny-qwen", "sft_model_name_or_path", "policy") == snapshot
    with pytest.raises(UserError, match=r"^key 'sft_model_name_or_path': 'lab/not-there' is no folder here, and as a "
                                        r"hub model it is not in the local Hugging Face cache with the hub offline"):
        resolve_model("lab/not-there", "sft_model_name_or_path", "policy")
    with pytest.raises(UserError, match=r"holds a Qwen2ForCausalLM .* expected a reward model"):
        resolve_model("lab/tiny-qwen", "judge_model_name_or_path", "reward")


def test_a_proxy_with_another_tokenizer_is_refused(qwen, smoke_sft, smoke_runs, tmp_path, capsys):
    judge_like = qwen_judge(qwen, tmp_path / "qwen-reward")
    capsys.readouterr()  # save_pretrained's progress bar
    code = rlhf_lab(["align", "--method", "dpo", "--config", str(SMOKE / "align-dpo.yaml"), "--runs_root",
                     str(smoke_runs), "--reward_model_name_or_path", str(judge_like), "--run_name", "align-dpo-x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "has another tokenizer than the SFT model" in err[0]
    assert "can be the judge" in err[0]


def test_a_missing_hub_model_or_dataset_stops_with_one_line(tmp_path, capsys):
    code = rlhf_lab(["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", "lab/not-there",
                     "--runs_root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert "'lab/not-there' is no folder here, and as a hub model it is not in the local Hugging Face cache" in err[0]
    with pytest.raises(UserError, match=r"^lab/no-such-dataset: Hugging Face dataset \(split 'train'\) is not in "
                                        r"the local cache and the hub is offline"):
        load_conversations("lab/no-such-dataset", split="train")


def test_sft_trains_on_the_answers_only_when_the_lab_marks_them(qwen, tmp_path):
    import datasets

    from recipes.core.config import parse_config
    from recipes.sft import SFTStageConfig, build_trainer, load_model

    config = parse_config(SFTStageConfig, ["--config", str(SMOKE / "sft.yaml"), "--runs_root", str(tmp_path)], "sft")
    model, tokenizer = load_model(qwen)
    rows = datasets.Dataset.from_dict({"messages": [CONVERSATION]})
    trainer = build_trainer(config, model, tokenizer, rows, rows, output_dir=tmp_path / "out")
    example = trainer.train_dataset[0]
    ids, mask = assistant_masks(tokenizer, CONVERSATION)
    assert example["input_ids"] == ids
    assert example["labels"] == [i if m else -100 for i, m in zip(ids, mask)]
    assert config.assistant_only_loss and not trainer.args.assistant_only_loss  # the masks do TRL's part


def qwen_judge(qwen: Path, out: Path) -> Path:
    """A reward model (untrained score head) of another family than the policy's, with its own tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    torch.manual_seed(1)
    Qwen2ForSequenceClassification(Qwen2Config.from_pretrained(str(qwen), num_labels=1)).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(qwen)).save_pretrained(out)
    return out


def test_a_judge_with_a_tokenizer_of_its_own_scores_the_labs_gpt(qwen, smoke_reward, smoke_runs, tmp_path):
    judge_dir = qwen_judge(qwen, tmp_path / "judge")
    assert rlhf_lab(["align", "--method", "best-of-n", "--config", str(SMOKE / "align-best-of-n.yaml"),
                     "--runs_root", str(smoke_runs), "--judge_model_name_or_path", str(judge_dir),
                     "--run_name", "align-best-of-n-judged"]) == 0
    run = smoke_runs / "smoke" / "align-best-of-n-judged"
    metrics = json.loads((run / "manifest.json").read_text())["metrics"]
    per_prompt = json.loads((run / "eval_per_prompt.json").read_text())
    assert len(per_prompt["judge"]) == len(per_prompt["sft_judge"]) == len(per_prompt["gold"]) == 10
    assert metrics["judge_reward"] == pytest.approx(sum(per_prompt["judge"]) / 10)
    assert metrics["gold_reward"] is not None and metrics["proxy_reward"] != metrics["judge_reward"]


def test_the_judges_gain_is_its_score_of_each_answer_less_the_sft_answers(qwen, smoke_sft, tmp_path):
    from alignment.common import load_judge, load_policy
    from alignment.evaluate import Evaluator
    from recipes.core.generation import Answer
    from reward import score

    judge = load_judge(qwen_judge(qwen, tmp_path / "judge"))
    policy, tokenizer = load_policy(smoke_sft / "model")
    prompts = ["What is 2 + 3?", "Write a haiku about rain.", "Hello!"]  # one is not the world's: no gold
    evaluator = Evaluator(policy, tokenizer, prompts, judge=judge, max_new_tokens=8, seed=0)
    answers = [Answer("2 + 3 = 5.", True, 7), Answer("Rain falls", False, 8), Answer("Hi there!", True, 4)]
    metrics, rows = evaluator.evaluate_answers(answers, kl=(0.0, None))
    judged = score(judge.model, judge.tokenizer, prompts, [a.text for a in answers], ended=[a.ended for a in answers])
    baseline = score(judge.model, judge.tokenizer, prompts, [a.text for a in evaluator.sft_answers],
                     ended=[a.ended for a in evaluator.sft_answers])
    gains = [a - b for a, b in zip(judged, baseline)]
    assert metrics["judge_gain"] == pytest.approx(sum(gains) / 3)
    assert metrics["judge_win_rate"] == pytest.approx(sum((g > 0) + 0.5 * (g == 0) for g in gains) / 3)
    assert [row["judge"] for row in rows] == pytest.approx(judged)
    assert "gold_reward" not in metrics and "win_rate" not in metrics and metrics["length"] == pytest.approx(19 / 3)


# ----------------------------------------------------------------------------------------------
# QLoRA: 4-bit bases under LoRA (bitsandbytes runs it on CPU), saved merged at full precision


def assert_low_rank_update(before: dict, after: dict, rank: int) -> None:
    """Every weight either unchanged bit for bit, or changed by a matrix of rank <= `rank` (a merged LoRA update:
    a quantized copy would differ everywhere, at full rank); and some did change."""
    changed = 0
    for key, old in before.items():
        delta = (after[key].float() - old.float())
        if delta.abs().max() == 0:
            continue
        assert delta.dim() == 2 and torch.linalg.matrix_rank(delta) <= rank, key
        changed += 1
    assert changed > 0


def test_qlora_trains_4bit_bases_and_saves_them_merged_at_full_precision(qwen, tmp_path):
    runs = tmp_path / "runs"
    qlora = ["--use_peft", "true", "--load_in_4bit", "true", "--lora_r", "4"]
    assert rlhf_lab(["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", str(qwen),
                     "--runs_root", str(runs), "--num_train_epochs", "1", *qlora]) == 0
    sft = runs / "smoke" / "sft" / "model"
    config = json.loads((sft / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and "quantization_config" not in config
    assert config["eos_token_id"] == load_chat_tokenizer(sft).convert_tokens_to_ids("<|im_end|>")
    assert_low_rank_update(weights(qwen), weights(sft), rank=4)

    assert rlhf_lab(["reward", "--config", str(SMOKE / "reward.yaml"), "--runs_root", str(runs), *qlora]) == 0
    reward = runs / "smoke" / "reward" / "model"
    assert "quantization_config" not in json.loads((reward / "config.json").read_text())
    assert architecture(reward) == "Qwen2ForSequenceClassification"
    backbone, scored = weights(sft), weights(reward)
    assert_low_rank_update({k: v for k, v in backbone.items() if k in scored}, scored, rank=4)

    for method in ("dpo", "ppo"):  # a TRL trainer (GRPO and RLOO cast the same way) and the lab's own PPO loop
        assert rlhf_lab(["align", "--method", method, "--config", str(SMOKE / f"align-{method}.yaml"),
                         "--runs_root", str(runs), *qlora]) == 0
        aligned = runs / "smoke" / f"align-{method}" / "model"
        assert "quantization_config" not in json.loads((aligned / "config.json").read_text())
        assert_low_rank_update(weights(sft), weights(aligned), rank=4)


def test_qlora_without_lora_stops_with_one_line(qwen, tmp_path, capsys):
    code = rlhf_lab(["sft", "--config", str(SMOKE / "sft.yaml"), "--model_name_or_path", str(qwen),
                     "--runs_root", str(tmp_path), "--load_in_4bit", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "key 'load_in_4bit'" in err[0] and "use_peft: true" in err[0]


def test_merging_a_4bit_model_reads_the_base_again_and_keeps_what_trained(qwen):
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForSequenceClassification

    from recipes.core import quantization

    config = SimpleNamespace(load_in_4bit=True, use_peft=True, bnb_4bit_quant_type="nf4", use_bnb_nested_quant=False)
    model = Qwen2ForSequenceClassification.from_pretrained(str(qwen), num_labels=1, **quantization.load_kwargs(config))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["score"],
                                            task_type="SEQ_CLS"))
    assert quantization.is_quantized(peft)
    torch.manual_seed(0)
    with torch.no_grad():  # stand-ins for trained adapters and a trained head
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
        peft.base_model.model.score.modules_to_save["default"].weight.fill_(0.5)
    q_proj = peft.base_model.model.model.layers[0].self_attn.q_proj
    update = (q_proj.lora_B["default"].weight.float() @ q_proj.lora_A["default"].weight.float()) * 2.0  # alpha / r

    merged = quantization.merged(peft, qwen, num_labels=1)
    base = weights(qwen)
    assert not quantization.is_quantized(merged) and merged.dtype == torch.float32
    assert torch.equal(merged.score.weight, torch.full_like(merged.score.weight, 0.5))
    saved = merged.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(saved, base["model.layers.0.self_attn.q_proj.weight"] + update, rtol=0, atol=1e-6)
    assert torch.equal(merged.model.layers[0].self_attn.k_proj.weight, base["model.layers.0.self_attn.k_proj.weight"])
