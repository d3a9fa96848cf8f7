"""One real optimizer step of TRL's SFTTrainer and RewardTrainer on our model and tokenizer."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from base_model import GPTConfig, GPTForCausalLM, GPTForSequenceClassification, train_tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

QA = [("What is 2 + 3?", "It is 5."), ("Say hi.", "Hi there!"), ("Name a pet.", "A cat."), ("Thanks!", "You are welcome.")]


@pytest.fixture(scope="module")
def tok():
    texts = [f"{q} {a}" for q, a in QA] * 50 + ["the cat sat in the garden on a happy day"] * 50
    return train_tokenizer(texts, 320)


def tiny(tok, **kw):
    return GPTConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, **kw,
    )


def common_args(tmp_path):
    return dict(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-2,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", activation_checkpointing=False,
        logging_steps=1, seed=0, dataloader_num_workers=0,
    )


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before):
    return [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]


@pytest.mark.parametrize("checkpointing", [False, True])  # TRL turns checkpointing on by default
def test_sft_trainer_assistant_only_loss(tok, tmp_path, checkpointing):
    torch.manual_seed(0)
    model = GPTForCausalLM(tiny(tok))
    data = datasets.Dataset.from_list(
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    )
    args = trl.SFTConfig(
        **{**common_args(tmp_path), "activation_checkpointing": checkpointing}, assistant_only_loss=True, max_length=64
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)

    # the loss is really restricted to the assistant turn: its content and <|end|>
    row = trainer.train_dataset[0]
    kept = [i for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tok.decode(kept) == QA[0][1] + "<|end|>"

    before = snapshot(model)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert "model.embed_tokens.weight" in changed(model, before)
    assert len(changed(model, before)) == len(before)
    assert model.model.gradient_checkpointing is checkpointing


def test_reward_trainer(tok, tmp_path):
    torch.manual_seed(0)
    model = GPTForSequenceClassification(tiny(tok, num_labels=1))
    data = datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": "No."}],
            }
            for q, a in QA
        ]
    )
    args = trl.RewardConfig(**common_args(tmp_path), max_length=64)
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    before = snapshot(model)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert "score.weight" in changed(model, before)
    assert "model.layers.0.self_attn.q_proj.weight" in changed(model, before)
