"""transformers' own `generate` on the lab's GPT uses the KV cache correctly.

The reference is the model itself without any cache: at every step a full forward pass over the whole
sequence so far, argmax of the last position. transformers' cached greedy decoding must pick the same
tokens, on plain and left-padded batches and through PEFT's LoRA layers (the path every LoRA policy,
TRL's PEFT generation and every non-plain sampling setting take, since the lab's sampler refuses them).
transformers 5.24 renamed the cache from `past_key_values` to `cache`; a model that ignored the new
name decoded every step without its past and wrote garbage, with no error.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_sampler import PAD, chat_tokenizer, left_padded, tiny_lm  # noqa: F401 (chat_tokenizer is a fixture)
from transformers import GenerationMixin

from recipes.core.generation import generate_answers

STEPS = 20


@torch.no_grad()
def greedy_without_cache(model, ids, mask, steps=STEPS):
    """Greedy continuation by full forward passes, no cache anywhere."""
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    return ids


@torch.no_grad()
def transformers_greedy(model, ids, mask, steps=STEPS):
    """transformers' GenerationMixin.generate itself (GPTForCausalLM.generate would route plain greedy calls
    to the lab's sampler); a PEFT model's generate reaches it through the wrapped model."""
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
              pad_token_id=PAD, eos_token_id=None)
    if hasattr(model, "peft_config"):
        return model.generate(**kw)
    return GenerationMixin.generate(model, **kw)


def lora(model, identity: bool):
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                        "gate_proj", "up_proj", "down_proj"]))
    if not identity:
        with torch.no_grad():  # LoRA's B starts at zero; make the adapters change the arithmetic
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return peft_model.eval()


@pytest.mark.parametrize("case", ["plain", "left-padded", "lora", "lora-left-padded"])
def test_transformers_generate_equals_forward_without_cache(case):
    model = tiny_lm()
    ids, mask = left_padded([7, 7, 7] if "padded" not in case else [3, 9, 1, 6])
    if case.startswith("lora"):
        model = lora(model, identity=False)
    ref = greedy_without_cache(model, ids, mask)
    out = transformers_greedy(model, ids, mask)
    assert out.shape == ref.shape
    new_out, new_ref = out[:, ids.shape[1]:], ref[:, ids.shape[1]:]
    agree = (new_out == new_ref).float().mean().item()
    assert agree == 1.0, f"cached generate agrees with the no-cache forward on {agree:.0%} of new tokens"


def test_identity_lora_answers_exactly_as_the_plain_model(chat_tokenizer):
    """A fresh LoRA adapter (B = 0) computes the same function: its answers, through transformers' generate,
    equal the plain model's, through the lab's sampler."""
    prompts = ["hello", "what is 12 + 7?", "the cat", "thanks!", "mat", "12", "cat sat on"]
    plain = generate_answers(tiny_lm(), chat_tokenizer, prompts, max_new_tokens=16, batch_size=3)
    wrapped = generate_answers(lora(tiny_lm(), identity=True), chat_tokenizer, prompts, max_new_tokens=16,
                               batch_size=3)
    assert [a.token_ids for a in wrapped] == [a.token_ids for a in plain]
    assert len({tuple(a.token_ids) for a in plain}) > 1  # the prompts lead to different answers
